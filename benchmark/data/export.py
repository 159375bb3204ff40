"""Publish a dataset's canonical search log as a Hugging Face ``datasets`` DatasetDict, and read it back.

    python -m benchmark.data.export --dataset synthetic --mode coarse --out exports/synthetic-coarse
    python -m benchmark.data.export --suite full --data-dir ../shared/data \\
        --dataset unisrec/Scientific@1020users --mode coarse --out exports/scientific-1020-coarse

The folder holds the DatasetDict (``DatasetDict.save_to_disk``: Arrow files) with one split per part of
the log: ``catalog`` (one row per item, ``item`` = row), ``users`` (index -> source id) and the
impressions of ``train``, ``valid`` and ``test`` (history and exposures as item indices, and ``row``: the
impression's position in the suite's own table); ``README.md``, the family's dataset card; and
``manifest.json``: the suite and its version, the mode, the data fingerprint the suite's records carry,
a digest of the log's content, and the sha256 of every file. Anyone can load it with
``datasets.load_from_disk``; ``load`` here also checks every checksum and gives back the same
``SearchLog`` (same fingerprint, same content digest) that the suite trains and evaluates on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.download import sha256_file
from benchmark.data.report import DataError
from benchmark.data.schema import SPLITS, SearchLog

MANIFEST = "manifest.json"
FORMAT = 1  # bump when the layout changes
CARDS = Path(__file__).resolve().parents[2] / "datasets"
_ARRAY_COLUMNS = ("history", "exposures")


def content_digest(log_: SearchLog) -> str:
    """sha256 over the log's catalog, impressions, user ids and flags, value by value (independent of
    the dtypes and container types a storage format round-trips them through)."""
    digest = hashlib.sha256()

    def canonical(value):
        if isinstance(value, (np.ndarray, list, tuple)):
            return [canonical(v) for v in value]
        if isinstance(value, (np.integer, bool, np.bool_)):
            return int(value)
        if isinstance(value, np.floating):
            return float(value)
        return value

    for part, frame in (("catalog", log_.catalog), ("impressions", log_.impressions)):
        for column in sorted(frame.columns):
            digest.update(f"{part}.{column}\n".encode())
            for value in frame[column]:
                digest.update(json.dumps(canonical(value)).encode() + b"\n")
    digest.update(json.dumps([log_.name, int(log_.n_users), bool(log_.has_text), list(log_.user_ids)]).encode())
    return digest.hexdigest()


def card_path(dataset: str) -> Path:
    """The dataset card of ``dataset``'s family (``datasets/<card>``)."""
    from benchmark.data.registry import FAMILY, parse

    return CARDS / FAMILY[parse(dataset).family].card


def export(log_: SearchLog, out: str | Path, *, suite: str, suite_version: str, mode: str,
           card: Path | None = None) -> Path:
    """Write ``log_`` under ``out`` (which must not exist yet) and return the manifest's path."""
    from datasets import Dataset, DatasetDict

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; exports are never overwritten (choose a new folder)")
    imp = log_.impressions.reset_index(drop=True)
    parts = {"catalog": Dataset.from_pandas(log_.catalog.reset_index(drop=True), preserve_index=False),
             "users": Dataset.from_dict({"user": list(range(len(log_.user_ids))), "user_id": list(log_.user_ids)})}
    for split in SPLITS:
        rows = imp[imp["split"] == split]
        frame = rows.drop(columns="split")
        for column in _ARRAY_COLUMNS:
            frame[column] = frame[column].map(lambda a: np.asarray(a, dtype=np.int64).tolist())
        frame.insert(0, "row", rows.index.to_numpy(dtype=np.int64))
        parts[split] = Dataset.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():  # a half-written export of an interrupted call
        import shutil

        shutil.rmtree(tmp)
    DatasetDict(parts).save_to_disk(str(tmp))
    if card is not None and card.exists():
        (tmp / "README.md").write_text(card.read_text())
    columns = {"catalog": list(log_.catalog.columns), "impressions": list(imp.columns)}
    files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {"format": FORMAT, "dataset": log_.name, "suite": suite, "suite_version": str(suite_version),
                "mode": mode, "fingerprint": log_.fingerprint, "content_sha256": content_digest(log_),
                "n_items": int(log_.n_items), "n_users": int(log_.n_users), "has_text": bool(log_.has_text),
                "impressions": {s: parts[s].num_rows for s in SPLITS}, "adaptation": log_.adaptation,
                "columns": columns, "card": card.name if card is not None and card.exists() else None, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    tmp.rename(out)
    return out / MANIFEST


def load(folder: str | Path) -> SearchLog:
    """The ``SearchLog`` of an export, after checking every file against the manifest; a missing,
    truncated or altered file, or content that does not match the digest, is a ``DataError``."""
    from datasets import load_from_disk

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{folder}: no {MANIFEST}; not an export of benchmark.data.export")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise DataError(f"{manifest_path}: format {manifest.get('format')!r}, this code reads {FORMAT}")
    for name, want in manifest["files"].items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != want:
            raise DataError(f"{path}: missing or altered (sha256 does not match {manifest_path})")
    parts = load_from_disk(str(folder))
    catalog = parts["catalog"].to_pandas()
    catalog["category"] = catalog["category"].map(list)
    catalog = catalog[manifest["columns"]["catalog"]]
    frames = []
    for split in SPLITS:
        frame = parts[split].to_pandas()
        frame["split"] = split
        frames.append(frame)
    imp = pd.concat(frames).sort_values("row").set_index("row").rename_axis(None)
    for column in _ARRAY_COLUMNS:
        imp[column] = imp[column].map(lambda a: np.asarray(a, dtype=np.int64))
    imp = imp[manifest["columns"]["impressions"]]
    users = parts["users"].to_pandas().sort_values("user")
    log_ = SearchLog(name=manifest["dataset"], catalog=catalog, impressions=imp, n_users=manifest["n_users"],
                     has_text=manifest["has_text"], fingerprint=manifest["fingerprint"],
                     adaptation=manifest["adaptation"], user_ids=users["user_id"].tolist())
    if content_digest(log_) != manifest["content_sha256"]:
        raise DataError(f"{folder}: the loaded log does not match the manifest's content digest")
    return log_


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.data.export", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic", help="e.g. synthetic, unisrec/Scientific@1020users")
    parser.add_argument("--mode", default="coarse", help="the query mode: coarse, hem or none")
    parser.add_argument("--suite", default="full", help="the suite whose adaptation settings to use")
    parser.add_argument("--data-dir", help="data root (default: $KARMA_BENCH_DATA or the user cache dir)")
    parser.add_argument("--out", required=True, help="a new folder")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for benchmark.run")
    args = parser.parse_args(argv)

    from benchmark.data.download import data_root
    from benchmark.run import compose_config
    from benchmark.runner import load_log
    from benchmark.runner.spec import mode_config

    cfg = compose_config(args.suite, [*args.overrides, *([f"data_dir={args.data_dir}"] if args.data_dir else [])])
    try:
        cfg = mode_config(cfg, args.mode)
        log_ = load_log(args.dataset, cfg, data_root(cfg.data_dir))
        manifest = export(log_, args.out, suite=cfg.suite, suite_version=cfg.suite_version, mode=args.mode,
                          card=card_path(args.dataset))
    except (DataError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.dataset} [{args.mode}] -> {manifest.parent} (fingerprint {log_.fingerprint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
