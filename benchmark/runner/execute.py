"""One run: load and adapt the data view, build and train the model (selection on validation only),
evaluate it once on test, and write its record."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
from pathlib import Path

import torch

from benchmark import distributed as D
from benchmark import machine
from benchmark import records as R
from benchmark.collapse_eval import attention_before_training, collapse_diagnostics, epoch_probe
from benchmark.data import adapt as A
from benchmark.data import registry
from benchmark.data.download import cache_root
from benchmark.data.images import resolve_images
from benchmark.data.report import DataReport
from benchmark.data.schema import SearchLog
from benchmark.data.text import terms
from benchmark.device import module_device, place
from benchmark.evaluate import evaluate, summarize
from benchmark.funnel.runs import embeddings_path, keeps_embeddings, save_embeddings
from benchmark.generators_eval import objective_analysis, table2_metrics
from benchmark.model import Describes
from benchmark.models import build, model_spec
from benchmark.runner.settings import train_config
from benchmark.runner.spec import RunSpec
from benchmark.runner.staleness import ADDED_FIELDS_BEFORE
from benchmark.seed import seed_everything
from benchmark.trainer import TrainConfig, discard_checkpoint, train, trainable_state


def load_log(name: str, cfg, root: Path) -> SearchLog:
    """Load, adapt (in ``cfg.adapt.query``'s mode) and cache one dataset; a cache hit skips the
    adaptation (BM25 exposures) entirely."""
    report = DataReport(name, strict=cfg.strict)
    adapt_cfg = cfg.adapt
    spec = registry.parse(name)
    module = registry.loader(spec.family)
    if registry.FAMILY[spec.family].generated:  # built from the suite's section of its name; images go to the cache
        gen_cfg = getattr(cfg, spec.family)
        raw = module.load(cache_root(), gen_cfg, report)
        source_config = dataclasses.asdict(gen_cfg)
    else:
        raw = module.load(root, spec.category, report, allow_download=cfg.allow_download)
        # a loader that changed how it reads the same files declares PARSER_VERSION: it enters the data
        # fingerprint (and so the cache key), which the raw files' checksums alone would not change
        source_config = {"parser_version": module.PARSER_VERSION} if hasattr(module, "PARSER_VERSION") else {}
    if spec.users:  # a fixed user subsample: a view of its own (it enters the fingerprint)
        raw = dataclasses.replace(A.sample_users(raw, spec.users), name=spec.name)
        source_config = {**source_config, "users": spec.users}
    fp = A.fingerprint(raw, adapt_cfg, source_config)
    folder = cache_root() / "processed" / name.replace("/", "__") / fp
    cached = A.load_cached(folder)
    if cached is not None:
        return cached
    search_log = A.adapt(raw, adapt_cfg, report)
    search_log.fingerprint = fp
    search_log.adaptation["source_config"] = source_config
    A.save(search_log, folder)
    report.save(folder / "data_report.json")
    print(report.format())
    return search_log


def attach_images(search_log: SearchLog, cfg, root: Path) -> None:
    """Resolve every item's image to a local file (``catalog["image_file"]``, None when there is none)
    and record the counts in the log's adaptation (so every run record states them)."""
    spec = registry.parse(search_log.name)
    local = registry.FAMILY[spec.family].image_folder(root, spec.category)
    files, stats = resolve_images(search_log.catalog["item_id"].astype(str).tolist(),
                                  search_log.catalog["image"].tolist(), local,
                                  cache_root() / "images" / search_log.name.replace("/", "__"),
                                  fetch=cfg.images.fetch, timeout=cfg.images.timeout_s)
    search_log.catalog["image_file"] = files
    search_log.adaptation["images"] = stats.summary()
    print(f"    images: {stats.with_image}/{stats.items} items have one ({stats.summary()})", flush=True)


def embed(model, search_log: SearchLog, split: str):
    imp = search_log.split(split)
    with torch.no_grad():
        return (model.item_embeddings(search_log).float().cpu().numpy(),
                model.user_embeddings(search_log, imp).float().cpu().numpy())


def evaluate_split(model, search_log: SearchLog, split: str, cfg, item_terms, with_lists: bool, embedded=None):
    imp = search_log.split(split)
    items, users = embedded if embedded is not None else embed(model, search_log, split)
    return evaluate(items, users, imp, ks=list(cfg.eval.ks), js_k=cfg.eval.js_k,
                    item_terms=item_terms if with_lists else None, topk_lists=with_lists), imp


def checkpoint_dir(cfg) -> Path:
    """Where interrupted runs keep their per-epoch state: ``checkpoint_dir`` when set (a folder carried to
    another machine resumes there), else in the cache, outside the checkout (a fresh checkout of the same
    results dir on a machine that kept its cache resumes mid-run), one folder per results dir (its
    absolute path's hash), so suites on different results dirs never share a file."""
    if cfg.checkpoint_dir:
        return Path(cfg.checkpoint_dir).expanduser()
    key = hashlib.sha256(str(Path(cfg.results_dir).resolve()).encode()).hexdigest()[:12]
    return cache_root() / "checkpoints" / key


def fit(run: RunSpec, search_log: SearchLog, cfg, item_terms):
    """Build, prepare and train one (model, variant, seed); selection on the validation split only."""
    torch.set_num_threads(cfg.threads)
    generator = seed_everything(run.seed)
    model = build(run.model, run.variant, search_log, cfg.model, run.tuned, cache_dir=cache_root() / "models")
    place(model, cfg.device)  # built on the CPU, where the weights load; then computes on the device
    metric = cfg.eval.selection_metric

    def validate(m) -> float:
        result, _ = evaluate_split(m, search_log, "valid", cfg, item_terms, with_lists=False)
        return result.metrics[metric]

    desc = f"{run.dataset} [{run.mode}] {run.model}:{run.variant} s{run.seed}"
    train_cfg = train_config(cfg, getattr(model, "config", None))
    with torch.no_grad():  # for the representation-collapse diagnostic: the catalog before training
        model.initial_item_embeddings = model.item_embeddings(search_log).float().cpu().numpy()
    model.initial_attention = attention_before_training(model, search_log, cfg.funnel)
    model_cfg = getattr(model, "config", None)
    identity = checkpoint_identity(run, train_cfg, model_cfg, search_log.fingerprint)
    folder = checkpoint_dir(cfg) / cfg.suite / R.dataset_dirname(run.dataset) / run.mode
    stem = f"{run.model}__{run.variant}__seed{run.seed}__"
    checkpoint = folder / f"{stem}{identity[:12]}.pt"
    earlier = sorted(p for p in folder.glob(f"{stem}*.pt") if p != checkpoint)  # a missing folder globs empty
    trained = train(model, search_log, train_cfg, generator, validate, lr=getattr(model_cfg, "lr", 1e-3), desc=desc,
                    checkpoint=checkpoint, identity=identity,
                    lineage=checkpoint_identity(run, without_stopping_rule(train_cfg), model_cfg, search_log.fingerprint),
                    earlier=earlier, probe=epoch_probe(search_log, cfg.funnel))
    return model, trained, train_cfg


def checkpoint_identity(run: RunSpec, train_cfg: TrainConfig, model_cfg, data_fingerprint: str) -> str:
    """The settings an epoch checkpoint must share with the run that resumes it. Whether bars are drawn
    changes nothing a run computes, so it is left out (as ``False``, the value every checkpoint so far was
    stamped with under the suite's runs): a run started without bars resumes with them, and back. A trainer
    field added later is left out while it has the value that keeps the old behaviour (``ADDED_FIELDS_BEFORE``),
    so checkpoints written before it was added still resume."""
    train = dataclasses.asdict(dataclasses.replace(train_cfg, progress=False))
    train = {k: v for k, v in train.items() if ("train", k) not in ADDED_FIELDS_BEFORE
             or v != ADDED_FIELDS_BEFORE[("train", k)]}
    settings = {"run": run.label, "tuned": run.tuned, "train": train,
                "model_config": dataclasses.asdict(model_cfg) if model_cfg is not None else {},
                "data": data_fingerprint}
    return R.config_hash(json.loads(json.dumps(settings, default=str)))


def without_stopping_rule(train_cfg: TrainConfig) -> TrainConfig:
    """``train_cfg`` with the fields that only decide when a run stops set to fixed values: the settings
    a kept checkpoint must share with a run that extends it under another rule (``trainer.reaches``).
    The cap stays when a rate schedule spans it."""
    rule = {"patience": 1, "min_epochs": 0} | ({"max_epochs": 1} if train_cfg.lr_schedule == "constant" else {})
    return dataclasses.replace(train_cfg, **rule)


def settle_checkpoint(trained, cfg) -> None:
    """After the record is written: delete the finished run's checkpoint, or keep it (``keep_checkpoints``)
    so that a later, looser stopping rule extends the run from its last epoch."""
    if not cfg.keep_checkpoints:
        discard_checkpoint(trained)


def catalog_terms(search_log: SearchLog):
    """Each item's text terms (for JS@K); None on an ID-only log."""
    return [set(terms(t)) for t in search_log.catalog["text"]] if search_log.has_text else None


def run_one(run: RunSpec, search_log: SearchLog, cfg, environment: dict, search_summary: dict | None = None,
            trial: tuple | None = None, source: dict | None = None) -> dict | None:
    """Train (or take the search's identical trial: ``(fit, peak memory)``), evaluate, write the record.
    ``environment``: ``machine.environment()`` read once when the suite started (the code that runs is
    the code imported then, whatever happens to the checkout during a long suite)."""
    item_terms = catalog_terms(search_log)
    with machine.PeakMemory() as memory:
        model, trained, train_cfg = fit(run, search_log, cfg, item_terms) if trial is None else trial[0]
        if not D.is_main():  # under DDP, rank 0 evaluates and writes; the other processes only trained
            return None
        valid_emb = embed(model, search_log, "valid")
        valid, _ = evaluate_split(model, search_log, "valid", cfg, item_terms, with_lists=False, embedded=valid_emb)
        start = time.perf_counter()
        test_emb = embed(model, search_log, "test")
        test, test_imp = evaluate_split(model, search_log, "test", cfg, item_terms, with_lists=True, embedded=test_emb)
        eval_s = time.perf_counter() - start
        diagnostics = collapse_diagnostics(model, search_log, test_emb[0], cfg.funnel, run,
                                           Path(cfg.results_dir) / "figures")
        table2 = table2_metrics(model, search_log, test_imp, test_emb[0], item_terms, cfg, run,
                                Path(cfg.results_dir) / "figures")
        sampled = objective_analysis(model, search_log, test_imp, test_emb[0], cfg, run,
                                     Path(cfg.results_dir) / "figures")
    tail = search_log.catalog["train_count"].to_numpy()[test_imp["target"].to_numpy()] <= cfg.eval.tail_max_train
    users = test_imp["user"].to_numpy()
    tail_metrics = summarize({k: v[tail] for k, v in test.per_impression.items()}, users[tail],
                             ks=list(cfg.eval.ks), js_k=cfg.eval.js_k)
    resolved = dataclasses.asdict(cfg)
    run_cfg = {"model": run.model, "variant": run.variant, "mode": run.mode,
               "model_config": dataclasses.asdict(model.config) if hasattr(model, "config") else {},
               "train": dataclasses.asdict(train_cfg),
               "eval": resolved["eval"], "adapt": resolved["adapt"], "funnel": resolved["funnel"], "seed": run.seed}
    npz = R.per_impression_path(run.record)
    R.write_per_impression(npz, {**test.per_impression, "user": users, "target": test_imp["target"].to_numpy(),
                                 "tail": tail})
    record = {
        "schema": R.SCHEMA_VERSION, "suite": cfg.suite, "suite_version": str(cfg.suite_version),
        "dataset": run.dataset, "mode": run.mode, "model": run.model, "variant": run.variant,
        "seed": run.seed,
        "config": run_cfg, "config_hash": R.config_hash(run_cfg), "data_fingerprint": search_log.fingerprint,
        "adaptation": search_log.adaptation,
        "environment": {**environment, "compute_device": str(module_device(model) if isinstance(model, torch.nn.Module)
                                                             else "cpu")},
        "timing": {"train_s": trained.train_seconds, "eval_s": eval_s,
                   "peak_memory_mb": max(memory.peak_mb, trial[1] if trial else 0.0),
                   "reused_search_trial": trial is not None, "processes": D.world_size(),
                   "train_impressions_per_s": trained.examples_per_second,
                   "train_tokens_per_s": (trained.tokens_seen / trained.step_seconds
                                          if trained.tokens_seen and trained.step_seconds else None),
                   "eval_users_per_s": len(test_imp) / eval_s if eval_s > 0 else None},
        "selection": {"metric": cfg.eval.selection_metric, "best_epoch": trained.best_epoch, "epochs_run": trained.epochs_run,
                      "valid_value": trained.valid_value, "stopped_by": trained.stopped_by,
                      "converged": trained.converged, "max_epochs": train_cfg.max_epochs,
                      "history": trained.history},
        "metrics": {"valid": valid.metrics, "test": test.metrics, "test_tail": tail_metrics},
        "per_impression": npz.name, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data_stats": A.data_stats(search_log),
        "search": search_summary,
        "diagnostics": diagnostics,
    }
    if table2 is not None:
        record["table2"] = table2
    if sampled is not None:
        record["objective_analysis"] = sampled
    spec = model_spec(run.model) if source is None else None
    if source is not None or spec.external:  # bring your own model: where its code came from
        from benchmark.byo import model_source

        record["model_source"] = source or model_source(spec.cls)
    if isinstance(model, Describes):
        record["model_info"] = model.describe()  # weights' source, dtype, init LM loss, target text
    if getattr(model, "visual_info", None):
        record["visual_features"] = model.visual_info  # which frozen encoder produced the features
    save_artifacts(run, cfg, model, valid_emb, test_emb)
    if keeps_embeddings(test_emb[0]):  # the funnel pass reads these (benchmark.funnel.runs), not the model
        save_embeddings(embeddings_path(run.record, cfg.results_dir), test_emb[0], valid_emb[1], test_emb[1])
    R.write_record(run.record, record)
    settle_checkpoint(trained, cfg)  # kept by the trainer until now: a kill while evaluating lost no training
    return record


def artifact_path(record_file: str | Path, results_dir: str | Path) -> Path:
    """Where a run's trained state and embeddings go: ``<results>/artifacts/`` mirrors ``records/``
    (not committed: about 25 MB per LLM run)."""
    return R.beside_record(record_file, results_dir, "artifacts", ".pt")


def save_artifacts(run: RunSpec, cfg, model, valid_emb, test_emb) -> Path:
    """Keep what a later evaluation needs without retraining (the funnel, collapse and Table 2
    readouts change with their protocols): the trained state (what training changed, as the trainer
    selects it) and the embeddings the record's metrics came from."""
    path = artifact_path(run.record, cfg.results_dir)
    blob = {"record": Path(run.record).name, "state": trainable_state(model) if isinstance(model, torch.nn.Module) else None,
            "item_embeddings": test_emb[0], "user_embeddings_valid": valid_emb[1], "user_embeddings_test": test_emb[1],
            "initial_item_embeddings": getattr(model, "initial_item_embeddings", None)}
    return R._atomic_write(path, lambda fh: torch.save(blob, fh), binary=True)

