"""Run records: one JSON file per (suite, dataset, model, variant, seed), written atomically.

Like mteb's result files, a record carries everything needed to trace a number back to its
origin: the resolved config and its hash, the data fingerprint, the code revision, package
versions, the device, timings and the metrics. ``python -m benchmark.run`` only fills the
records that are missing, and the reporter (``benchmark.leaderboard``) rebuilds
``leaderboard.md`` from the records alone.

Layout on disk::

    results/records/<suite>/<dataset, "/" -> "__">/<query mode>/<model>__<variant>__seed<seed>.json
    results/records/<suite>/<dataset>/<mode>/<model>__<variant>__seed<seed>.npz   # per-impression arrays

Record layout (the caller builds it; ``write_record`` checks the required keys)::

    {"schema": 1,                       # bump when the layout changes
     "suite": str, "suite_version": str,
     "dataset": str, "mode": str, "model": str, "variant": str, "seed": int,
     "config": {...},                   # the resolved config of this run
     "config_hash": str,                # config_hash(config)
     "data_fingerprint": str,           # checksum of the processed canonical log
     "adaptation": {...},               # how public review data became search logs
     "environment": {...},              # benchmark.machine.environment()
     "timing": {"train_s": float, "eval_s": float, "peak_memory_mb": float,
                "train_impressions_per_s": float | None, "eval_users_per_s": float | None},
     "selection": {"metric": str, "best_epoch": int | None, "epochs_run": int | None,
                   "valid_value": float | None},
     "metrics": {"valid": {...}, "test": {...}, "test_tail": {...}},  # name -> float; NaN stored as null
     "per_impression": str | None,      # npz file name relative to the record's folder
     "created": str,                    # ISO-8601 UTC
     "data_stats": {...}}               # optional: users / items / impressions, shown by the reporter

NaN and infinities are written as JSON ``null`` (strict JSON); numpy scalars and arrays are
converted to plain Python values.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 2  # 2: the query mode (a part of the run's key and of its path)

REQUIRED_KEYS: tuple[str, ...] = (
    "schema", "suite", "suite_version", "dataset", "mode", "model", "variant", "seed",
    "config", "config_hash", "data_fingerprint", "adaptation", "environment",
    "timing", "selection", "metrics", "per_impression", "created",
)
REQUIRED_NESTED: dict[str, tuple[str, ...]] = {
    "timing": ("train_s", "eval_s", "peak_memory_mb", "train_impressions_per_s", "eval_users_per_s"),
    "selection": ("metric", "best_epoch", "epochs_run", "valid_value"),
    "metrics": ("valid", "test", "test_tail"),
}



# --------------------------------------------------------------------------- paths


def dataset_dirname(dataset: str) -> str:
    """Dataset name as a folder name ("amazon/beauty" -> "amazon__beauty")."""
    return dataset.replace("/", "__")


def record_path(results_dir: str | Path, suite: str, dataset: str, mode: str, model: str, variant: str,
                seed: int) -> Path:
    """``results_dir/records/<suite>/<dataset__>/<mode>/<model>__<variant>__seed<seed>.json``."""
    return (Path(results_dir) / "records" / suite / dataset_dirname(dataset) / mode
            / f"{model}__{variant}__seed{int(seed)}.json")


def beside_record(record_file: str | Path, results_dir: str | Path, folder: str, suffix: str) -> Path:
    """A file that mirrors a record's place under ``records/`` in ``<results>/<folder>/`` (e.g. a run's
    embeddings or its trained state), with ``suffix``."""
    record_file, results_dir = Path(record_file), Path(results_dir)
    try:
        relative = record_file.relative_to(results_dir / "records")
    except ValueError:
        relative = Path(record_file.name)
    return results_dir / folder / relative.with_suffix(suffix)


def per_impression_path(record_file: str | Path) -> Path:
    """The npz file that sits beside a record (same stem)."""
    return Path(record_file).with_suffix(".npz")


# --------------------------------------------------------------------------- atomic writes


def _tmp_path(path: Path) -> Path:
    # one temporary name per process and thread: two writers of one file never share it
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | Path, write_fn, *, binary: bool = False) -> Path:
    """Write through ``write_fn(fh)`` into ``path.tmp``, fsync, then ``os.replace`` onto ``path``.

    On any exception the temporary file is removed and ``path`` (an older version, if any) is
    left untouched, so a crash never leaves half a file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write_fn(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Atomically write a text file (used for leaderboard.md as well)."""
    return _atomic_write(path, lambda fh: fh.write(text))


# --------------------------------------------------------------------------- records


def _to_jsonable(obj: Any) -> Any:
    """Plain JSON values: NaN/inf -> None, numpy -> Python, Path -> str, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return obj.as_posix()
    return obj


def validate_record(record: dict) -> None:
    """Raise ValueError listing every missing required key (nested ones as ``timing.train_s``)."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a dict, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    for parent, children in REQUIRED_NESTED.items():
        sub = record.get(parent)
        if isinstance(sub, dict):
            missing += [f"{parent}.{c}" for c in children if c not in sub]
        elif parent in record:
            missing.append(f"{parent} (must be a dict)")
    if missing:
        raise ValueError(f"record is missing required keys: {', '.join(missing)}")


def write_record(path: str | Path, record: dict) -> Path:
    """Validate and atomically write one record (JSON, sorted keys, indent 1, NaN -> null)."""
    validate_record(record)
    clean = _to_jsonable(record)

    def _dump(fh):
        json.dump(clean, fh, sort_keys=True, indent=1, allow_nan=False)
        fh.write("\n")

    return _atomic_write(path, _dump)


def read_record(path: str | Path) -> dict:
    """Read and validate one record; raises (OSError / ValueError) when it is unusable."""
    with open(path, encoding="utf-8") as fh:
        record = json.load(fh)
    validate_record(record)
    return record


def read_records(results_dir: str | Path, suite: str) -> list[dict]:
    """All readable records of a suite, in path order; unreadable or invalid files are skipped with a warning."""
    return [r.data for r in read_run_records(results_dir, suite)]


# --------------------------------------------------------------------------- per-impression arrays


def write_per_impression(path_npz: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Atomically write per-impression arrays (e.g. user ids, rank of the click, per-metric values).

    Written through an open file handle so numpy does not append a second ``.npz`` to the temp name.
    """
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise ValueError(f"per-impression array {k!r} has dtype object; use numeric or fixed-width string arrays")
    return _atomic_write(path_npz, lambda fh: np.savez_compressed(fh, **arrays), binary=True)


def read_per_impression(path_npz: str | Path) -> dict[str, np.ndarray]:
    with np.load(path_npz, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# --------------------------------------------------------------------------- provenance


def config_hash(cfg: dict) -> str:
    """First 16 hex chars of sha256 over canonical JSON (sorted keys, no whitespace); key order does not matter."""
    canonical = json.dumps(_to_jsonable(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- typed view


HISTORY_NON_LOSS = frozenset({"stage", "epoch", "valid", "probe", "lr"})  # history fields that are not losses


class Record:
    """One run record, read through named accessors instead of chains of ``.get(...) or {}``."""

    def __init__(self, data: dict, path: Path | None = None):
        self.data, self.path = data, path

    dataset = property(lambda self: str(self.data["dataset"]))
    mode = property(lambda self: str(self.data.get("mode", "none")))
    model = property(lambda self: str(self.data["model"]))
    variant = property(lambda self: str(self.data["variant"]))
    seed = property(lambda self: int(self.data["seed"]))
    suite = property(lambda self: str(self.data["suite"]))
    suite_version = property(lambda self: str(self.data["suite_version"]))
    created = property(lambda self: str(self.data.get("created", "")))

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.dataset, self.mode, self.model, self.variant

    def metric(self, name: str) -> float | None:
        """``"HR@10"`` (test split) or ``"valid/HR@10"``, ``"test_tail/HR@10"``; None when undefined."""
        split, _, metric = name.rpartition("/")
        value = self.data["metrics"].get(split or "test", {}).get(metric)
        return value if isinstance(value, int | float) and math.isfinite(value) else None

    def timing(self, name: str) -> float | None:
        value = self.data["timing"].get(name)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    @property
    def converged(self) -> bool | None:
        """False when the run selected its last allowed epoch (None: nothing trained, or an old record)."""
        return self.data["selection"].get("converged")

    @property
    def diverged(self) -> bool:
        """True when the training loss (the sum of the main stage's loss terms) ended above its value after
        the first epoch: the run went unstable and did not recover, whatever its stopping rule said. A rise
        that training then undoes (HLLM's InfoNCE on synthetic@300users: 4.67, 5.36 at epoch 3, then down
        to 2.56) is the optimiser's early transient, not a failed run."""
        totals = [loss for _, loss in self.loss_curve()]
        return len(totals) > 1 and totals[-1] > totals[0]

    def loss_curve(self, term: str | None = None) -> list[tuple[int, float]]:
        """(epoch, training loss) after each joint-training ("main") epoch: the sum of the loss terms, or
        the one ``term`` (e.g. ``"action"``) where given; epochs that lack the term are left out."""
        main = [h for h in self.history if h.get("stage", "main") == "main"]
        if term is not None:
            return [(int(h.get("epoch", i + 1)), float(h[term])) for i, h in enumerate(main)
                    if isinstance(h.get(term), int | float)]
        return [(int(h.get("epoch", i + 1)), sum(v for k, v in h.items()
                                                 if k not in HISTORY_NON_LOSS and isinstance(v, int | float)))
                for i, h in enumerate(main)]

    def loss_spikes(self, rise: float = 0.3) -> list[int]:
        """The main-stage epochs whose action loss (the retrieval objective; the sum where a run has no
        ``action`` term) rose more than ``rise`` above its lowest value so far. At a constant lr such spikes
        are the optimiser's, not overfitting's (training loss, not validation): Scientific Task 2 seed 1 went
        0.071 -> 0.387 at its last epoch. One inside a run's patience window is part of what stopped it."""
        curve = self.loss_curve("action") or self.loss_curve()
        spikes, low = [], math.inf
        for epoch, loss in curve:
            if loss > (1 + rise) * low:
                spikes.append(epoch)
            low = min(low, loss)
        return spikes

    @property
    def never_improved(self) -> bool:
        """True when a run that trained more than one epoch selected its first: validation never beat what one
        epoch gave (Scientific's warm-up seed 1 under the 8-epoch floor: 0.030 after epoch 1, at most 0.016
        over the next 7, its training loss up from 0.355 to 0.66 by epoch 3 and back to 0.18). The loss can
        recover while the model does not, so ``diverged`` misses it; the selected model saw one epoch."""
        values = self.valid_curve
        return len(values) > 1 and max(range(len(values)), key=values.__getitem__) == 0

    def stopped_within_noise(self, patience: int = 3) -> bool | None:
        """True when the run's patience stop came on a drop no larger than its own validation noise: the
        best value minus the mean of the last ``patience`` values is below the standard deviation of the
        curve's epoch-to-epoch changes, so the stopping rule could not tell the stop from noise (a plateau
        and a still-rising noisy curve both qualify; a clear decline does not). None without a patience
        stop or with fewer than ``patience + 3`` epochs."""
        values = self.valid_curve
        if self.data["selection"].get("stopped_by") != "patience" or len(values) < patience + 3:
            return None
        drop = max(values) - float(np.mean(values[-patience:]))
        return bool(drop < float(np.std(np.diff(values), ddof=1)))

    @property
    def data_stats(self) -> dict:
        return self.data.get("data_stats") or {}

    @property
    def history(self) -> list[dict]:
        """The trainer's per-epoch log (stages, losses, validation values)."""
        return self.data["selection"].get("history") or []

    @property
    def valid_curve(self) -> list[float]:
        """The validation value after each joint-training ("main") epoch, from the per-epoch log."""
        return [h["valid"] for h in self.history
                if h.get("stage", "main") == "main" and isinstance(h.get("valid"), int | float)]

    def get(self, path: str, default=None):
        """The value at a dotted path (``"table2.flow.HR@10"``), ``default`` where any step is missing
        (a record made before a section existed, or a model without it)."""
        node = self.data
        for key in path.split("."):
            if not isinstance(node, dict) or node.get(key) is None:
                return default
            node = node[key]
        return node

    def number(self, path: str) -> float | None:
        """``get`` for a finite number (None otherwise)."""
        value = self.get(path)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    def per_impression(self) -> dict[str, np.ndarray]:
        if self.path is None or not self.data.get("per_impression"):
            raise FileNotFoundError(f"record {self.key} seed {self.seed} has no per-impression arrays")
        return read_per_impression(Path(self.path).parent / self.data["per_impression"])


def read_run_records(results_dir: str | Path, suite: str) -> list[Record]:
    """``read_records`` as typed ``Record`` objects that know their file (for the per-impression arrays)."""
    root = Path(results_dir) / "records" / suite
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob("*.json")):
        try:
            out.append(Record(read_record(path), path))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            warnings.warn(f"skipping unreadable run record {path}: {exc}", RuntimeWarning, stacklevel=2)
    return out


# --------------------------------------------------------------------------- inter-process locks


def file_lock(path: str | Path, timeout: float = -1):
    """An inter-process lock on ``<path>.lock`` (``filelock``; ``with file_lock(p): ...``).

    Guards one record or one search file while a run or a search computes and writes it, so that
    concurrent suite processes (``--jobs N``, or separate processes over one results dir) never do the
    same work twice. The lock file stays on disk after release (on Unix a lock is the open file's
    flock, not the file's existence); ``timeout=-1`` waits for as long as it takes.
    """
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(path.name + ".lock")), timeout=timeout)
