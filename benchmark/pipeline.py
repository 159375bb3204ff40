"""The suite runner: data -> model -> trainer -> evaluator -> records -> leaderboard.

``plan`` lists (dataset, model, variant, seed) runs; ``run_suite`` executes the missing ones,
writing one record per run as soon as it finishes (an interrupted suite loses nothing that
completed) and regenerates the leaderboard from the records alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmark import records as R
from benchmark.data import adapt as A
from benchmark.data import registry, synthetic
from benchmark.data.download import cache_root, data_root
from benchmark.data.images import resolve_images
from benchmark.data.report import DataError, DataReport
from benchmark.data.schema import SearchLog
from benchmark.data.text import terms
from benchmark.evaluate import evaluate, summarize
from benchmark.funnel_eval import collapse_diagnostics, funnel_metrics
from benchmark.generators_eval import table2_metrics
from benchmark.leaderboard import render_leaderboard, render_table1_paired, write_leaderboard
from benchmark.models import MODELS, build, expand, model_config
from benchmark.seed import seed_everything
from benchmark.tables import render_attention_comparison, render_funnel, render_table1, render_table2
from benchmark.trainer import TrainConfig, train
from karma.visual import VisualEncoderError

log = logging.getLogger(__name__)
LEADERBOARD_METRICS = ["NDCG@10", "HR@10", "HR@50", "MRR", "gAUC", "JS@50", "test_tail/NDCG@10", "test_tail/HR@50"]
SUITE_ORDER = ["full", "smoke"]
_ENVIRONMENT: dict | None = None  # environment() captured when the running suite started  # sections of leaderboard.md, in this order; others follow


# --------------------------------------------------------------------------- data

def mode_config(cfg, mode: str):
    """The suite's config with the adaptation's query mode set to ``mode`` (every run is in one mode)."""
    if mode not in A.QUERY_MODES:
        raise ValueError(f"unknown query mode {mode!r}; valid: {', '.join(A.QUERY_MODES)}")
    return OmegaConf.merge(cfg, {"adapt": {"query": mode}})


def load_log(name: str, cfg, root: Path) -> SearchLog:
    """Load, adapt (in ``cfg.adapt.query``'s mode) and cache one dataset; a cache hit skips the
    adaptation (BM25 exposures) entirely."""
    report = DataReport(name, strict=cfg.strict)
    adapt_cfg = A.AdaptConfig(**OmegaConf.to_container(cfg.adapt))
    spec = registry.parse(name)
    if spec.family == registry.EMBEDDED:
        syn_cfg = synthetic.SyntheticConfig(**OmegaConf.to_container(cfg.synthetic))
        raw = synthetic.load(cache_root(), syn_cfg, report)  # generated: images go to the cache
        source_config = dataclasses.asdict(syn_cfg)
    else:
        module = registry.loader(spec.family)
        raw = module.load(root, spec.category, report, allow_download=cfg.allow_download)
        # a loader that changed how it reads the same files declares PARSER_VERSION: it enters the data
        # fingerprint (and so the cache key), which the raw files' checksums alone would not change
        source_config = {"parser_version": module.PARSER_VERSION} if hasattr(module, "PARSER_VERSION") else {}
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
    local = None if spec.family == registry.EMBEDDED else root / spec.family / spec.category / "images"
    files, stats = resolve_images(search_log.catalog["item_id"].astype(str).tolist(),
                                  search_log.catalog["image"].tolist(), local,
                                  cache_root() / "images" / search_log.name.replace("/", "__"),
                                  fetch=cfg.images.fetch, timeout=cfg.images.timeout_s)
    search_log.catalog["image_file"] = files
    search_log.adaptation["images"] = stats.summary()
    print(f"    images: {stats.with_image}/{stats.items} items have one ({stats.summary()})", flush=True)


# --------------------------------------------------------------------------- plan

def plan(cfg) -> tuple[list[dict], dict[str, str]]:
    """The runs of a suite and, per dataset, why it cannot run (empty when it can)."""
    root = data_root(cfg.data_dir)
    datasets = registry.expand(list(cfg.datasets), root)
    problems = {}
    for name in datasets:
        spec = registry.parse(name)
        if spec.family != registry.EMBEDDED and not registry._present(root, spec.family, spec.category):
            problems[name] = f"no files under {root / spec.family / spec.category}"
    runs, memo = [], {}
    for name in datasets:
        text = name in problems or registry.has_text(root, name)
        images = name in problems or registry.has_images(root, name, fetch=cfg.images.fetch)
        available = ["none", *A.SEARCH_MODES] if name in problems else registry.query_modes(root, name)
        for model, variant in expand(list(cfg.models)):
            if MODELS[model].needs_text and not text:
                continue  # an LLM over item text has nothing to read on an ID-only dataset
            if MODELS[model].needs_images and not images:
                continue  # no image to reconstruct
            for mode in model_modes(MODELS[model].query_use, list(cfg.modes), available):
                for seed in cfg.seeds:
                    path = R.record_path(cfg.results_dir, cfg.suite, name, mode, model, variant, seed)
                    exists = path.exists()
                    current = exists and record_is_current(R.read_record(path), mode_config(cfg, mode), memo)
                    runs.append({"dataset": name, "mode": mode, "model": model, "variant": variant,
                                 "seed": int(seed), "record": path, "done": current, "stale": exists and not current})
    return runs, problems


def model_modes(query_use: str, suite_modes: list[str], available: list[str]) -> list[str]:
    """The modes one model runs in on one dataset (see ``ModelSpec.query_use``)."""
    if query_use == "ignored":
        return ["none"]  # one query-blind run stands for every mode: only the query differs between them
    wanted = [m for m in suite_modes if m in available]
    return [m for m in wanted if m != "none"] if query_use == "required" else wanted


def _train_config(cfg, model_cfg) -> TrainConfig:
    """The trainer's settings for one model: the suite's, with the model's own epoch cap."""
    train_cfg = TrainConfig(**OmegaConf.to_container(cfg.train))
    if getattr(model_cfg, "max_epochs", 0):  # a model family's own epoch cap
        train_cfg = dataclasses.replace(train_cfg, max_epochs=min(model_cfg.max_epochs, train_cfg.max_epochs))
    return train_cfg


# Settings that never change a result: where caches live, and whether bars are drawn.
_NOT_RESULT_SETTINGS = {"cache_dir", "progress"}


def _untuned_settings(cfg, model: str, variant: str) -> dict:
    """A run's settings as the suite defines them, less those its tuning search chooses."""
    source = MODELS[model].tuned_like or (model, variant)
    skip = _NOT_RESULT_SETTINGS | {key.rsplit(".", 1)[-1] for trial in _grid_for(cfg, *source) for key in trial}
    model_cfg = model_config(model, variant, cfg.model)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    settings = {"model_config": dataclasses.asdict(model_cfg),
                "train": dataclasses.asdict(_train_config(cfg, model_cfg)),
                "eval": resolved["eval"], "adapt": resolved["adapt"], "funnel": resolved["funnel"]}
    return json.loads(json.dumps({part: {k: v for k, v in values.items() if k not in skip}
                                  for part, values in settings.items()}, default=str))  # tuples -> lists


def record_is_current(record: dict, cfg, memo: dict | None = None) -> bool:
    """Whether a record still answers the suite as it is defined now.

    Its recorded settings must agree with the suite's on every field the tuning search does not
    choose (model config, trainer, evaluation, data adaptation, funnel and Table 2). Editing the
    suite file (an epoch cap, a loss weight, a split) thus makes the affected records stale: they
    are re-run and, until then, left out of the leaderboard. ``memo`` (a dict, one per ``cfg``)
    keeps the suite's settings per model/variant across calls.
    """
    model, variant = record.get("model"), record.get("variant")
    if model not in MODELS or variant not in MODELS[model].variants:
        return False
    if record.get("mode") != cfg.adapt.query:
        return False
    memo = {} if memo is None else memo
    key = (model, variant, cfg.adapt.query)
    if key not in memo:
        memo[key] = _untuned_settings(cfg, model, variant)
    got = json.loads(json.dumps(record.get("config") or {}, default=str))
    return _settings_agree(memo[key], got)


def _settings_agree(want: dict, got: dict) -> bool:
    """``part -> {field: value}`` settings; only the parts and fields both have are compared, so a
    field added to the code later (with a default that keeps the old behaviour) leaves older
    records and trials valid."""
    return all(value == got[part][key] for part, values in want.items() if isinstance(got.get(part), dict)
               for key, value in values.items() if key in got[part])


def format_plan(cfg) -> str:
    runs, problems = plan(cfg)
    lines = [f"suite {cfg.suite} v{cfg.suite_version}: {cfg.description}",
             f"data root: {data_root(cfg.data_dir)}   results: {cfg.results_dir}",
             f"{len({r['dataset'] for r in runs})} datasets x {len(expand(list(cfg.models)))} models/variants x "
             f"{len(cfg.seeds)} seeds"]
    for r in runs:
        state = ("done" if r["done"] and not cfg.overwrite else "missing data" if r["dataset"] in problems
                 else "stale: the suite changed since it ran; to re-run" if r["stale"] else "to run")
        lines.append(f"  {r['dataset']:<30} {r['mode']:<7} {r['model']:<12} {r['variant']:<8} seed {r['seed']}  [{state}]")
    lines += [f"  ! {name}: {why}" for name, why in problems.items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- one run

def _embed(model, search_log: SearchLog, split: str):
    imp = search_log.split(split)
    with torch.no_grad():
        return model.item_embeddings(search_log).float().numpy(), model.user_embeddings(search_log, imp).float().numpy()


def _eval(model, search_log: SearchLog, split: str, cfg, item_terms, with_lists: bool, embedded=None):
    imp = search_log.split(split)
    items, users = embedded if embedded is not None else _embed(model, search_log, split)
    return evaluate(items, users, imp, ks=list(cfg.eval.ks), js_k=cfg.eval.js_k,
                    item_terms=item_terms if with_lists else None, topk_lists=with_lists), imp


def _fit(run: dict, search_log: SearchLog, cfg, item_terms):
    """Build, prepare and train one (model, variant, seed); selection on the validation split only."""
    torch.set_num_threads(cfg.threads)
    generator = seed_everything(run["seed"])
    model = build(run["model"], run["variant"], search_log.n_items, cfg.model, run.get("tuned"))
    if hasattr(model, "prepare"):  # backbones and per-catalog caches
        model.prepare(search_log, cache_root() / "models")
    metric = cfg.eval.selection_metric

    def validate(m) -> float:
        result, _ = _eval(m, search_log, "valid", cfg, item_terms, with_lists=False)
        return result.metrics[metric]

    desc = f"{run['dataset']} [{run['mode']}] {run['model']}:{run['variant']} s{run['seed']}"
    train_cfg = _train_config(cfg, getattr(model, "config", None))
    with torch.no_grad():  # for the representation-collapse diagnostic: the catalog before training
        model.initial_item_embeddings = model.item_embeddings(search_log).float().numpy()
    trained = train(model, search_log, train_cfg, generator, validate,
                    lr=getattr(getattr(model, "config", None), "lr", 1e-3), desc=desc)
    return model, trained, train_cfg


def _item_terms(search_log: SearchLog):
    return [set(terms(t)) for t in search_log.catalog["text"]] if search_log.has_text else None


def search(run: dict, search_log: SearchLog, cfg) -> tuple[object, dict | None]:
    """The tuning search of DESIGN's fair comparison: every model/variant gets the same grid size.

    Trials train on the search seed and are scored on the validation split only; each finished
    trial is saved at once (an interrupted search resumes), and the best trial's overrides are
    applied to the config of every seed's final run. Returns ((config, tuned fields), search
    summary or None, the selected trial's fit or None). The selected trial trained exactly the
    search seed's final run (same settings, same seed), so that run reuses it instead of training
    it again; a trial from an earlier, interrupted process is not kept, and its run trains anew.
    """
    source = MODELS[run["model"]].tuned_like
    if source is not None:  # the same settings as another variant, selected by that variant's search
        (run_cfg, tuned), summary, _ = search({**run, "model": source[0], "variant": source[1]}, search_log, cfg)
        return (run_cfg, tuned), (None if summary is None else {**summary, "tuned_like": ":".join(source)}), None
    grid = _grid_for(cfg, run["model"], run["variant"])
    if not grid:
        return (cfg, {}), None, None
    path = (Path(cfg.results_dir) / "search" / cfg.suite / R.dataset_dirname(run["dataset"]) / run["mode"]
            / f"{run['model']}__{run['variant']}.json")
    # Trials are kept only if they ran with the suite's current settings (a suite edit re-runs the
    # search; the funnel's settings do not enter a trial's validation score, so they are not stamped).
    # Trials saved without a settings stamp count while the search seed's record is current.
    memo = {(run["model"], run["variant"], run["mode"]): _untuned_settings(cfg, run["model"], run["variant"])}
    settings = {k: v for k, v in memo[run["model"], run["variant"], run["mode"]].items() if k != "funnel"}
    seed_record = R.record_path(cfg.results_dir, cfg.suite, run["dataset"], run["mode"], run["model"],
                                run["variant"], cfg.search.seed)
    unstamped_ok = seed_record.exists() and record_is_current(R.read_record(seed_record), cfg, memo)
    done = [t for t in (json.loads(path.read_text())["trials"] if path.exists() else [])
            if (_settings_agree(settings, t["settings"]) if isinstance(t.get("settings"), dict) else unstamped_ok)]
    item_terms = _item_terms(search_log)
    kept = None  # (overrides, fit, peak memory) of the best trial trained in this process
    for overrides in grid:
        if any(t["overrides"] == overrides for t in done):
            continue
        trial_cfg, tuned = _with_overrides(cfg, run["model"], overrides)
        with R.PeakMemory() as memory:
            start = time.perf_counter()
            fit = _fit({**run, "seed": cfg.search.seed, "tuned": tuned}, search_log, trial_cfg, item_terms)
        trained = fit[1]
        done.append({"overrides": overrides, "settings": settings, "valid": trained.valid_value,
                     "best_epoch": trained.best_epoch,
                     "train_s": time.perf_counter() - start, "peak_memory_mb": memory.peak_mb})
        print(f"    search {run['model']}:{run['variant']} {overrides} -> valid "
              f"{cfg.eval.selection_metric}={trained.valid_value:.4f}", flush=True)
        R.write_text_atomic(path, json.dumps({"metric": cfg.eval.selection_metric, "seed": cfg.search.seed,
                                              "trials": done}, indent=1, default=str))
        if _best_trial(done)["overrides"] == overrides:
            kept = (overrides, fit, memory.peak_mb)
        del fit
    best = _best_trial(done)
    reusable = kept[1:] if kept is not None and kept[0] == best["overrides"] else None
    return (_with_overrides(cfg, run["model"], best["overrides"]),
            {"metric": cfg.eval.selection_metric, "seed": cfg.search.seed, "trials": done,
             "selected": best["overrides"]}, reusable)


def _best_trial(trials: list[dict]) -> dict:
    return max(trials, key=lambda t: -math.inf if t["valid"] is None else t["valid"])


def _grid_for(cfg, model: str, variant: str) -> list[dict]:
    """The trials of one model/variant: its grid cut to ``search.trials`` points, as dotted overrides."""
    if not cfg.search.enabled:
        return []
    grids = OmegaConf.to_container(cfg.search.grids)
    grid = grids.get(f"{model}:{variant}", grids.get(model))
    return [] if grid is None else grid_trials(grid, int(cfg.search.trials))


def grid_trials(grid: dict[str, list], trials: int) -> list[dict]:
    """The product of a grid's values, or, when it has more points than ``trials``, the balanced
    fraction of it: for two-level axes, the points whose level indices sum to an even number (the
    2^(k-1) half fraction, defining relation C = A x B for three axes: every level of every axis
    appears in half the trials, and every pair of axes is crossed in full). So a family whose members
    add an axis (a decodability weight) keeps the same number of trials and the same levels of the
    shared axes. Any other size mismatch is an error: the tuning budget must be equal."""
    keys = sorted(grid)
    levels = [range(len(grid[k])) for k in keys]
    points = list(itertools.product(*levels))
    if len(points) > trials and all(len(grid[k]) == 2 for k in keys) and len(points) == 2 * trials:
        points = [p for p in points if sum(p) % 2 == 0]
    if len(points) != trials:
        raise ValueError(f"search grid {grid} gives {len(points)} trials, not search.trials={trials}: every "
                         "model gets the same tuning budget (a two-level grid of twice the size is halved)")
    return [{k: grid[k][i] for k, i in zip(keys, p, strict=True)} for p in points]


def _with_overrides(cfg, model: str, overrides: dict):
    """Split a trial's dotted overrides: ``model.<node>.<field>`` ones are applied after the variant's
    own settings (so a search can tune a variant's loss weight); the rest go into the config."""
    prefix = f"model.{MODELS[model].config}."
    tuned = {k[len(prefix):]: v for k, v in overrides.items() if k.startswith(prefix)}
    rest = [f"{k}={v}" for k, v in overrides.items() if not k.startswith(prefix)]
    return (OmegaConf.merge(cfg, OmegaConf.from_dotlist(rest)) if rest else cfg), tuned


def run_one(run: dict, search_log: SearchLog, cfg, search_summary: dict | None = None,
            trial: tuple | None = None) -> dict:
    """Train (or take the search's identical trial: ``(fit, peak memory)``), evaluate, write the record."""
    item_terms = _item_terms(search_log)
    with R.PeakMemory() as memory:
        model, trained, train_cfg = _fit(run, search_log, cfg, item_terms) if trial is None else trial[0]
        valid_emb = _embed(model, search_log, "valid")
        valid, _ = _eval(model, search_log, "valid", cfg, item_terms, with_lists=False, embedded=valid_emb)
        start = time.perf_counter()
        test_emb = _embed(model, search_log, "test")
        test, test_imp = _eval(model, search_log, "test", cfg, item_terms, with_lists=True, embedded=test_emb)
        eval_s = time.perf_counter() - start
        funnel = (funnel_metrics(search_log, test_emb[0], valid_emb[1], test_emb[1], cfg.funnel, run["seed"])
                  if cfg.funnel.enabled and search_log.has_text else None)
        diagnostics = collapse_diagnostics(model, search_log, test_emb[0], cfg.funnel, run,
                                           Path(cfg.results_dir) / "figures")
        table2 = table2_metrics(model, search_log, test_imp, test_emb[0], item_terms, cfg, run,
                                Path(cfg.results_dir) / "figures")
    tail = search_log.catalog["train_count"].to_numpy()[test_imp["target"].to_numpy()] <= cfg.eval.tail_max_train
    users = test_imp["user"].to_numpy()
    tail_metrics = summarize({k: v[tail] for k, v in test.per_impression.items()}, users[tail],
                             ks=list(cfg.eval.ks), js_k=cfg.eval.js_k)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_cfg = {"model": run["model"], "variant": run["variant"], "mode": run["mode"],
               "model_config": dataclasses.asdict(model.config) if hasattr(model, "config") else {},
               "train": dataclasses.asdict(train_cfg),
               "eval": resolved["eval"], "adapt": resolved["adapt"], "funnel": resolved["funnel"], "seed": run["seed"]}
    npz = R.per_impression_path(run["record"])
    R.write_per_impression(npz, {**test.per_impression, "user": users, "target": test_imp["target"].to_numpy(),
                                 "tail": tail})
    environment = _ENVIRONMENT or R.environment()
    record = {
        "schema": R.SCHEMA_VERSION, "suite": cfg.suite, "suite_version": str(cfg.suite_version),
        "dataset": run["dataset"], "mode": run["mode"], "model": run["model"], "variant": run["variant"],
        "seed": run["seed"],
        "config": run_cfg, "config_hash": R.config_hash(run_cfg), "data_fingerprint": search_log.fingerprint,
        "adaptation": search_log.adaptation, "environment": environment,
        "timing": {"train_s": trained.train_seconds, "eval_s": eval_s,
                   "peak_memory_mb": max(memory.peak_mb, trial[1] if trial else 0.0),
                   "reused_search_trial": trial is not None,
                   "train_impressions_per_s": trained.examples_per_second,
                   "eval_users_per_s": len(test_imp) / eval_s if eval_s > 0 else None},
        "selection": {"metric": cfg.eval.selection_metric, "best_epoch": trained.best_epoch, "epochs_run": trained.epochs_run,
                      "valid_value": trained.valid_value, "stopped_by": trained.stopped_by,
                      "converged": trained.converged, "max_epochs": train_cfg.max_epochs,
                      "history": trained.history},
        "metrics": {"valid": valid.metrics, "test": test.metrics, "test_tail": tail_metrics},
        "per_impression": npz.name, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data_stats": A.data_stats(search_log),
        "search": search_summary,
        "funnel": funnel,
        "diagnostics": diagnostics,
    }
    if table2 is not None:
        record["table2"] = table2
    if getattr(model, "visual_info", None):
        record["visual_features"] = model.visual_info  # which frozen encoder produced the features
    R.write_record(run["record"], record)
    return record


# --------------------------------------------------------------------------- suite

def unit_key(run: dict) -> tuple[str, str, str, str]:
    """The unit a run belongs to: its (dataset, mode, model, variant)."""
    return run["dataset"], run["mode"], run["model"], run["variant"]


def plan_units(runs: list[dict]) -> list[tuple[str, str, str, str]]:
    """The independent units of a plan, in plan order: one per (dataset, mode, model, variant).

    A unit's tuning search and its seeds run in order in one process (the search seed's run reuses
    the search's selected trial); two units share only files that are locked while written (data
    caches, a search reused through ``tuned_like``), so ``--jobs N`` runs them side by side. The
    index is over every planned run, done or not: every process computes the same one.
    """
    return list(dict.fromkeys(unit_key(r) for r in runs))


def _search_file(cfg, run: dict) -> Path | None:
    """The search file a run's search reads and writes (its ``tuned_like`` source's), None without one.
    The same path as ``search`` writes."""
    model, variant = MODELS[run["model"]].tuned_like or (run["model"], run["variant"])
    if not _grid_for(cfg, model, variant):
        return None
    return (Path(cfg.results_dir) / "search" / cfg.suite / R.dataset_dirname(run["dataset"]) / run["mode"]
            / f"{model}__{variant}.json")


def _done_meanwhile(run: dict, cfg, since: float) -> bool:
    """Whether another process wrote this run's record, current, while this one waited for its lock
    (with ``overwrite``: wrote it after this suite started)."""
    path = Path(run["record"])
    try:
        return record_is_current(R.read_record(path), cfg) and (not cfg.overwrite or path.stat().st_mtime >= since)
    except (OSError, ValueError):  # absent, or unreadable: run it
        return False


def run_planned(cfg) -> tuple[dict[str, str], list[str]]:
    """Run the suite's missing runs, only unit ``cfg.unit``'s when it is set (a job of ``--jobs N``).

    Returns (datasets that cannot run and why, runs skipped because of data errors). Safe to run in
    several processes over one results dir: a dataset's caches, a search file and a record are each
    written under a file lock, and a run whose record another process wrote meanwhile is skipped.
    """
    import contextlib

    global _ENVIRONMENT
    # The code revision is read once, when the suite starts: the code that runs is the code that was
    # imported then, whatever happens to the checkout while a long suite runs.
    _ENVIRONMENT = R.environment()
    started = time.time()
    root = data_root(cfg.data_dir)
    runs, problems = plan(cfg)
    units = plan_units(runs)
    if cfg.unit is not None and not 0 <= cfg.unit < len(units):
        raise ValueError(f"unit={cfg.unit}, but the plan has {len(units)} units (0 to {len(units) - 1})")
    todo = [r for r in runs if r["dataset"] not in problems and (cfg.overwrite or not r["done"])
            and (cfg.unit is None or unit_key(r) == units[cfg.unit])]
    views = list(dict.fromkeys((r["dataset"], r["mode"]) for r in runs))
    todo.sort(key=lambda r: views.index((r["dataset"], r["mode"])))  # stable: one dataset view loaded at a time
    if cfg.unit is None:
        print(format_plan(cfg))
    else:
        print(f"unit {cfg.unit} of {len(units)}: {' '.join(units[cfg.unit])}, {len(todo)} runs to do", flush=True)
    tag = "" if cfg.unit is None else f"unit {cfg.unit}: "
    logs: dict[str, SearchLog] = {}
    searched: dict[tuple, tuple] = {}
    failures = []
    for i, run in enumerate(todo, 1):
        name, mode = run["dataset"], run["mode"]
        view = (name, mode)
        try:
            mode_cfg = mode_config(cfg, mode)
            if view not in logs:
                logs.clear()  # one dataset view in memory at a time
                # one process at a time adapts a dataset and renders its images into the cache
                with R.file_lock(cache_root() / "processed" / R.dataset_dirname(name)):
                    logs[view] = load_log(name, mode_cfg, root)
                    if any(MODELS[r["model"]].needs_images for r in todo if (r["dataset"], r["mode"]) == view):
                        attach_images(logs[view], cfg, root)
            key = unit_key(run)
            if key not in searched:
                # another process searching the same file (karma_gen reuses karma:karma's) finishes first;
                # this one then reads its trials back instead of training them again
                search_file = _search_file(mode_cfg, run)
                with R.file_lock(search_file) if search_file else contextlib.nullcontext():
                    searched[key] = search(run, logs[view], mode_cfg)
            (run_cfg, tuned), summary, trial = searched[key]
            trial = trial if run["seed"] == cfg.search.seed else None
            if trial is not None:
                searched[key] = ((run_cfg, tuned), summary, None)  # used once, then freed
            with R.file_lock(run["record"]):
                if _done_meanwhile(run, mode_cfg, started):
                    print(f"[{tag}{i}/{len(todo)}] {name} [{mode}] {run['model']}:{run['variant']} seed {run['seed']}: "
                          "written by another process meanwhile, skipped", flush=True)
                    continue
                print(f"[{tag}{i}/{len(todo)}] {name} [{mode}] {run['model']}:{run['variant']} seed {run['seed']}"
                      + (" (the search's selected trial: same settings and seed)" if trial else ""), flush=True)
                record = run_one({**run, "tuned": tuned}, logs[view], run_cfg, summary, trial)
            m = record["metrics"]["test"]
            print(f"    {tag}test NDCG@10={m['NDCG@10']:.4f} HR@10={m['HR@10']:.4f} gAUC={m['gAUC']:.4f} "
                  f"train {record['timing']['train_s']:.0f}s", flush=True)
        except DataError as err:
            failures.append(f"{name}: {err}")
            problems[name] = str(err).splitlines()[0]
            print(f"    skipped: {err}", flush=True)
        except VisualEncoderError as err:  # e.g. the offline encoder's optional package is not installed
            failures.append(f"{name} {run['model']}:{run['variant']} seed {run['seed']}: {err}")
            print(f"    skipped: {err}", flush=True)
    return problems, failures


def run_suite(cfg) -> Path | None:
    """Run what is missing, then regenerate the leaderboard from the records. With ``cfg.unit`` set
    (one job of ``python -m benchmark.run --jobs N``) only that unit runs, and the leaderboard is left
    to the parent, which regenerates it once after every job ended; returns None then."""
    problems, failures = run_planned(cfg)
    if cfg.unit is not None:
        return None
    path = regenerate_leaderboard(cfg, {cfg.suite: problems})
    if failures:
        print("\n".join(["runs skipped because of data errors:", *failures]))
    return path


def tuning_note(cfg) -> str:
    """The tuning budget as the leaderboard states it, from the suite's own search settings."""
    if not cfg.search.enabled:
        return "none: every model runs its config's defaults (no search)."
    grids = OmegaConf.to_container(cfg.search.grids)
    axes = "; ".join(f"`{name}`: " + " x ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in sorted(grid.items()))
                     for name, grid in grids.items())
    return (f"every model and variant gets the same {cfg.search.trials} trials on seed {cfg.search.seed}, scored "
            f"on validation {cfg.eval.selection_metric} (a grid of 8 two-level points is halved to its 2^(3-1) "
            f"fraction); the selected setting then runs every seed and is tested once. Grids: {axes}. Models "
            "without a grid (popularity, query_pop, bm25) have nothing to tune.")


def regenerate_leaderboard(cfg, problems_by_suite: dict[str, dict[str, str]] | None = None) -> Path:
    """leaderboard.md from every suite's records: full first, then smoke, then others."""
    from hydra import compose

    results = Path(cfg.results_dir)
    suites_dir = results / "records"
    present = sorted(p.name for p in suites_dir.iterdir() if p.is_dir()) if suites_dir.exists() else []
    suites = [s for s in SUITE_ORDER if s in present] + [s for s in present if s not in SUITE_ORDER]
    revision, dirty = R.git_state()
    link_base = Path(cfg.leaderboard).resolve().parent  # figures are linked relative to leaderboard.md
    sections = []
    for suite in suites:
        file_cfg = compose(config_name="config", overrides=[f"suite={suite}"])
        suite_cfg = cfg if suite == cfg.suite else file_cfg
        # The leaderboard shows the whole suite: a run restricted on the command line (datasets=[...],
        # models=[...], seeds=[...]) adds to the suite file's plan and never hides the rest of it.
        widened = {key: list(dict.fromkeys([*file_cfg[key], *suite_cfg[key]])) for key in ("datasets", "models", "seeds")}
        suite_cfg = OmegaConf.merge(suite_cfg, {"data_dir": cfg.data_dir, "results_dir": cfg.results_dir, **widened})
        runs, problems = plan(suite_cfg)
        problems.update((problems_by_suite or {}).get(suite, {}))
        entries = {}
        for r in runs:
            key = (r["dataset"], r["mode"], r["model"], r["variant"])
            entries.setdefault(key, {"dataset": r["dataset"], "mode": r["mode"], "model": r["model"],
                                     "variant": r["variant"], "query_use": MODELS[r["model"]].query_use,
                                     "seeds": [], "status": "planned"})["seeds"].append(r["seed"])
            if r["dataset"] in problems:
                entries[key]["status"] = f"dataset missing: {problems[r['dataset']]}"
        records = R.read_run_records(results, suite)  # read once, rendered into every table
        memo = {}
        current = [r for r in records if r.suite != suite
                   or (r.mode in A.QUERY_MODES and record_is_current(r.data, mode_config(suite_cfg, r.mode), memo))]
        stale = len(records) - len(current)
        text = render_leaderboard(current, list(entries.values()), suite=suite, stale=stale,
                                  suite_version=str(suite_cfg.suite_version),
                                  revision=f"{revision}{' (dirty)' if dirty else ''}",
                                  metrics=LEADERBOARD_METRICS, figures_dir=results / "figures",
                                  link_base=link_base, tuning=tuning_note(suite_cfg))
        sections.append(text)
        # Tables 1 and 2, the funnel and the heat maps are per (dataset, mode) view: they read a record's
        # "dataset" as its view's label.
        view_records = [{**r.data, "dataset": f"{r.dataset} · {r.mode}"} for r in current]
        llm_views = sorted({f"{r['dataset']} · {r['mode']}" for r in runs if r["model"] in ("action_llm", "karma")
                            and r["dataset"] not in problems})
        ks = sorted(suite_cfg.eval.ks)
        if llm_views and any(r["model"] == "karma" for r in runs):
            sections.append(render_table1(view_records, suite=suite,
                                          suite_version=str(suite_cfg.suite_version), seeds=list(suite_cfg.seeds),
                                          ks=(ks[0], ks[-1]), datasets=llm_views))
            pairs = sorted({(r["dataset"], r["mode"]) for r in runs if r["model"] == "karma"
                            and r["dataset"] not in problems})
            sections.append(render_table1_paired(current, suite=suite, suite_version=str(suite_cfg.suite_version),
                                                 views=pairs, seeds=list(suite_cfg.seeds), ks=(ks[0], ks[-1])))
        if any(r["model"] == "karma_gen" for r in runs):
            sections.append(render_table2(view_records, suite=suite,
                                          suite_version=str(suite_cfg.suite_version), seeds=list(suite_cfg.seeds),
                                          ks=(ks[0], ks[-1]), datasets=llm_views,
                                          link_base=link_base))
        funnel = render_funnel(view_records, suite=suite, suite_version=str(suite_cfg.suite_version),
                               seeds=list(suite_cfg.seeds))
        if "### " in funnel:
            sections.append(funnel)
        heatmaps = render_attention_comparison(view_records, suite=suite,
                                               suite_version=str(suite_cfg.suite_version),
                                               figures_dir=results / "figures",
                                               link_base=link_base)
        if heatmaps:
            sections.append(heatmaps)
    path = Path(cfg.leaderboard)
    write_leaderboard(path, "\n\n".join(sections) + "\n")
    print(f"wrote {path} ({', '.join(suites) or 'no records yet'})")
    return path
