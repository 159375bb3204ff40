"""The funnel pass: the three funnel stages for every run whose embeddings are stored, written as
funnel results of their own (``results/funnel/``), so that a change of the funnel's protocol
re-evaluates every model from its committed embeddings without retraining any of them.

A run stores its embeddings (item, validation users, test users) beside its record
(``results/embeddings/`` mirrors ``results/records/``). A query-blind model runs once, in mode
``none``; its embeddings do not depend on the query, and the impressions are the same in every
mode, so its funnel is evaluated in each search mode of the suite, like the query-aware models in
theirs. A funnel result names the record it came from (file and creation time) and the funnel
settings; it is recomputed when either changes.

    python -m benchmark.funnel.runs --suite full --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from benchmark import allocator
from benchmark import records as R
from benchmark.data import adapt as A
from benchmark.data import registry
from benchmark.data.download import data_root
from benchmark.data.schema import SearchLog, train_popularity
from benchmark.funnel.prerank import prerank_funnel
from benchmark.funnel.ranking import (
    LEXICAL_FEATURES,
    compare_ctr_cross_fitted,
    ctr_examples,
    ctr_feature_similarity,
)
from benchmark.funnel.recall import recall_funnel
from benchmark.lexical import BM25Scorer

FUNNEL_VERSION = 2  # 2: cross-fitted CTR feature, query_pop-based pre-ranker, unsaturated recall depth
# the CTR comparison's feature sets: with the lexical score (the exposures are BM25's own top results,
# so it is anti-correlated with the click by construction) and without it
FEATURE_SETS = {"lexical_popularity": LEXICAL_FEATURES, "popularity": ("log_popularity",)}
PASS_FIELDS = ("ctr_folds", "ctr_epochs", "n_boot", "recall_max_lexical_hr")  # FunnelConfig fields it reads


def embeddings_path(record_file: str | Path, results_dir: str | Path) -> Path:
    """``<results>/embeddings/`` mirrors ``records/``: one npz per run (committed, a few MB)."""
    return R.beside_record(record_file, results_dir, "embeddings", ".npz")


MAX_STORED_DIM = 1024  # wider embeddings (BM25's vocabulary-sized vectors) are not committed


def keeps_embeddings(item_emb) -> bool:
    """Whether a run's embeddings are stored for the funnel pass (dense and at most ``MAX_STORED_DIM`` wide)."""
    return item_emb is not None and item_emb.ndim == 2 and item_emb.shape[1] <= MAX_STORED_DIM


def embeddings_from_artifacts(results_dir: str | Path) -> list[Path]:
    """Stored embeddings for the runs that kept only a full artifact (``results/artifacts/``, not
    committed: the trained state too), e.g. runs of a suite started before embeddings were stored."""
    results_dir, written = Path(results_dir), []
    for artifact in sorted((results_dir / "artifacts").rglob("*.pt")):
        target = results_dir / "embeddings" / artifact.relative_to(results_dir / "artifacts").with_suffix(".npz")
        if target.exists():
            continue
        blob = torch.load(artifact, map_location="cpu", weights_only=False)
        if keeps_embeddings(np.asarray(blob["item_embeddings"])):
            written.append(save_embeddings(target, blob["item_embeddings"], blob["user_embeddings_valid"],
                                           blob["user_embeddings_test"]))
    return written


def save_embeddings(path: Path, item: np.ndarray, user_valid: np.ndarray, user_test: np.ndarray) -> Path:
    arrays = {"item": item, "user_valid": user_valid, "user_test": user_test}
    return R._atomic_write(path, lambda fh: np.savez_compressed(
        fh, **{k: np.asarray(v.float() if isinstance(v, torch.Tensor) else v, dtype=np.float32)
               for k, v in arrays.items()}), binary=True)


def funnel_path(results_dir: str | Path, suite: str, dataset: str, mode: str, model: str, variant: str,
                seed: int) -> Path:
    return (Path(results_dir) / "funnel" / suite / R.dataset_dirname(dataset) / mode
            / f"{model}__{variant}__seed{seed}.json")


def pass_settings(funnel_cfg) -> dict:
    return {"version": FUNNEL_VERSION, **{k: getattr(funnel_cfg, k) for k in PASS_FIELDS}}


def _summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("per_impression", "users")}


def funnel_metrics(log: SearchLog, item_emb: np.ndarray, user_valid: np.ndarray, user_test: np.ndarray,
                   funnel_cfg, seed: int) -> dict:
    """The paper's three funnel stages for one model's embeddings (DESIGN.md §4), in ``log``'s mode."""
    bm25 = BM25Scorer(log.catalog["text"].fillna("").astype(str).tolist())
    popularity = train_popularity(log)
    examples = {}
    for split in ("valid", "test"):  # the embedding model trained on neither (cross-fitting needs no train rows)
        ex = ctr_examples(log, split, bm25=bm25, popularity=popularity)
        examples[split] = ex.assign(sim=ctr_feature_similarity(item_emb, ex["history"].tolist(), ex["item"].to_numpy()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the small CTR model is faster on one thread
    try:
        ctr = compare_ctr_cross_fitted(examples["valid"], examples["test"], extra_feature="sim", seed=seed,
                                       feature_sets=FEATURE_SETS, folds=funnel_cfg.ctr_folds,
                                       n_boot=funnel_cfg.n_boot, epochs=funnel_cfg.ctr_epochs, n_items=log.n_items)
    finally:
        torch.set_num_threads(threads)
    prerank = prerank_funnel(log, item_emb, user_valid, user_test, bm25=bm25, n_boot=funnel_cfg.n_boot, seed=seed)
    recall = recall_funnel(log, item_emb, user_test, bm25=bm25, max_lexical_hr=funnel_cfg.recall_max_lexical_hr,
                           n_boot=funnel_cfg.n_boot, seed=seed)
    return {"ctr": ctr, "prerank": _summary(prerank), "recall": _summary(recall)}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_funnel_pass(cfg) -> list[Path]:
    """Funnel results for every current record of ``cfg.suite`` with stored embeddings, in each
    search mode of the suite that its dataset has; up-to-date results are kept. Returns the paths written."""
    from benchmark.runner.execute import load_log  # the runner's one loader (and cache) of a dataset view
    from benchmark.runner.spec import mode_config
    from benchmark.runner.staleness import record_is_current

    results = Path(cfg.results_dir)
    settings = pass_settings(cfg.funnel)
    root = data_root(cfg.data_dir)
    search_modes = [m for m in cfg.modes if m != "none"]
    written, logs, memo = [], {}, {}
    for record in R.read_run_records(results, cfg.suite):
        data = record.data
        if data.get("suite_version") != str(cfg.suite_version) or data.get("mode") not in A.QUERY_MODES:
            continue
        if not record_is_current(data, mode_config(cfg, data["mode"]), memo):
            continue
        emb_file = embeddings_path(record.path, results)
        if not emb_file.exists():
            continue
        source = {"record": str(record.path.relative_to(results)), "record_created": data.get("created"),
                  "embeddings_sha256": _file_digest(emb_file)}
        for mode in ([data["mode"]] if data["mode"] != "none" else search_modes):
            if mode == "none":
                continue
            out = funnel_path(results, cfg.suite, data["dataset"], mode, data["model"], data["variant"], data["seed"])
            if out.exists():
                old = json.loads(out.read_text())
                if old.get("settings") == settings and old.get("source") == source:
                    continue
            view = (data["dataset"], mode)
            if view not in logs:
                logs.clear()  # one dataset view in memory at a time
                if mode not in registry.query_modes(root, data["dataset"]):
                    logs[view] = None  # no category paths (e.g. ID-only): adapting it in a search mode is an error
                else:
                    log = load_log(data["dataset"], mode_config(cfg, mode), root)
                    logs[view] = log if log.has_text and mode in A.search_modes(log.catalog, log.has_text) else None
            log = logs[view]
            if log is None:
                continue
            emb = np.load(emb_file)
            if len(emb["user_valid"]) != len(log.split("valid")) or len(emb["user_test"]) != len(log.split("test")):
                raise ValueError(f"{emb_file}: embeddings do not match the impressions of {data['dataset']} [{mode}]")
            print(f"funnel: {data['dataset']} [{mode}] {data['model']}:{data['variant']} seed {data['seed']}", flush=True)
            metrics = funnel_metrics(log, emb["item"], emb["user_valid"], emb["user_test"], cfg.funnel, data["seed"])
            result = {"suite": cfg.suite, "suite_version": str(cfg.suite_version), "dataset": data["dataset"],
                      "mode": mode, "model": data["model"], "variant": data["variant"], "seed": data["seed"],
                      "settings": settings, "source": source, "data_fingerprint": log.fingerprint, **metrics}
            text = json.dumps(R._to_jsonable(result), indent=1, sort_keys=True, allow_nan=False, default=str)
            written.append(R._atomic_write(out, lambda fh, text=text: fh.write(text)))
    return written


def read_funnel_results(results_dir: str | Path, suite: str, records: list | None = None) -> list[dict]:
    """The funnel pass's results of ``suite``; with ``records`` (the current run records), only those
    computed from one of them: a result whose run was re-trained since (a new selection, a new floor)
    describes a model the leaderboard no longer shows, until the pass runs again."""
    root = Path(results_dir) / "funnel" / suite
    results = [json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))] if root.is_dir() else []
    if records is None:
        return results
    current = {(str(record.path.relative_to(results_dir)), record.data.get("created")) for record in records}
    return [result for result in results
            if (result.get("source", {}).get("record"), result.get("source", {}).get("record_created")) in current]


def main(argv: list[str] | None = None) -> int:
    from benchmark.run import compose_config

    parser = argparse.ArgumentParser(prog="python -m benchmark.funnel.runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="full")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for benchmark.run")
    args = parser.parse_args(argv)
    extra = [f"data_dir={args.data_dir}"] * bool(args.data_dir) + [f"results_dir={args.results_dir}"] * bool(args.results_dir)
    cfg = compose_config(args.suite, [*extra, *args.overrides])
    torch.set_num_threads(max(1, cfg.threads))
    converted = embeddings_from_artifacts(cfg.results_dir)
    if converted:
        print(f"embeddings stored from {len(converted)} artifacts")
    written = run_funnel_pass(cfg)
    print(f"funnel pass: {len(written)} results written under {Path(cfg.results_dir) / 'funnel' / cfg.suite}")
    return 0


if __name__ == "__main__":
    allocator.preload()  # first: re-executes this command once with mimalloc preloaded
    sys.exit(main())
