"""Planning: which (dataset, mode, model, variant, seed) runs a suite has, and whether a record still
answers the suite as it is defined now (staleness)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

from benchmark import records as R
from benchmark.data import adapt as A
from benchmark.data import registry
from benchmark.data.download import data_root
from benchmark.funnel.runs import PASS_FIELDS as FUNNEL_PASS_FIELDS
from benchmark.models import MODELS, expand, model_config, model_spec, tuned_source
from benchmark.runner.grids import grid_for
from benchmark.runner.spec import RunSpec, mode_config
from benchmark.trainer import TrainConfig
from karma.user_llm import UserLLMConfig, slow_bf16_warning


def plan(cfg) -> tuple[list[RunSpec], dict[str, str]]:
    """The runs of a suite and, per dataset, why it cannot run (empty when it can)."""
    root = data_root(cfg.data_dir)
    datasets = registry.expand(list(cfg.datasets), root)
    problems = {}
    for name in datasets:
        spec = registry.parse(name)
        if not registry.is_present(root, name):
            problems[name] = f"no files under {root / spec.family / spec.category}"
    runs, memo = [], {}
    for name in datasets:
        text = name in problems or registry.has_text(root, name)
        images = name in problems or registry.has_images(root, name, fetch=cfg.images.fetch)
        available = ["none", *A.SEARCH_MODES] if name in problems else registry.query_modes(root, name)
        for model, variant in expand(list(cfg.models)):
            scope = cfg.scope.get(model)
            if scope is not None and scope.datasets and name not in scope.datasets:
                continue  # the suite plans this model on other datasets only
            if MODELS[model].needs_text and not text:
                continue  # an LLM over item text has nothing to read on an ID-only dataset
            if MODELS[model].needs_images and not images:
                continue  # no image to reconstruct
            suite_modes = [m for m in cfg.modes if scope is None or not scope.modes or m in scope.modes]
            for mode in model_modes(MODELS[model].query_use, suite_modes, available):
                mode_cfg = mode_config(cfg, mode)
                for seed in cfg.seeds:
                    path = R.record_path(cfg.results_dir, cfg.suite, name, mode, model, variant, seed)
                    exists = path.exists()
                    current = exists and record_is_current(R.read_record(path), mode_cfg, memo)
                    runs.append(RunSpec(name, mode, model, variant, int(seed), path, done=current,
                                        stale=exists and not current))
    for model, variant in dict.fromkeys((r.model, r.variant) for r in runs):  # a bad grid fails before any run
        grid_for(cfg, *(tuned_source(model, variant) or (model, variant)))
    return runs, problems


def check_scope(cfg) -> None:
    """A scope must name known models and valid dataset names: a typo would silently drop runs. (It may
    name models and datasets a run restricted on the command line leaves out.) Called once, when the
    config is composed (``benchmark.run.compose_config``)."""
    for model, where in cfg.scope.items():
        model_spec(model)  # KeyError with the valid choices
        for name in where.datasets:
            registry.parse(name)  # ValueError naming the valid families


def model_modes(query_use: str, suite_modes: list[str], available: list[str]) -> list[str]:
    """The modes one model runs in on one dataset (see ``ModelSpec.query_use``)."""
    if query_use == "ignored":
        return ["none"]  # one query-blind run stands for every mode: only the query differs between them
    wanted = [m for m in suite_modes if m in available]
    return [m for m in wanted if m != "none"] if query_use == "required" else wanted


def train_config(cfg, model_cfg) -> TrainConfig:
    """The trainer's settings for one model: the suite's, with the model's own epoch cap."""
    train_cfg = cfg.train
    if getattr(model_cfg, "max_epochs", 0):  # a model family's own epoch cap
        train_cfg = dataclasses.replace(train_cfg, max_epochs=min(model_cfg.max_epochs, train_cfg.max_epochs))
    return train_cfg


# Settings that never change a result: where caches live, and whether bars are drawn.
NOT_RESULT_SETTINGS = {"cache_dir", "progress"}


def untuned_settings(cfg, model: str, variant: str) -> dict:
    """A run's settings as the suite defines them, less those its tuning search chooses."""
    source = tuned_source(model, variant) or (model, variant)
    skip = NOT_RESULT_SETTINGS | {key.rsplit(".", 1)[-1] for trial in grid_for(cfg, *source) for key in trial}
    model_cfg = model_config(model, variant, cfg.model)
    skip |= model_cfg.inert_fields() if hasattr(model_cfg, "inert_fields") else set()  # e.g. action-only's decode budget
    skip |= set(FUNNEL_PASS_FIELDS)  # the funnel pass reads them, after the run, from its stored embeddings
    resolved = dataclasses.asdict(cfg)
    settings = {"model_config": dataclasses.asdict(model_cfg),
                "train": dataclasses.asdict(train_config(cfg, model_cfg)),
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
    try:
        if variant not in model_spec(model).variants:
            return False
    except KeyError:  # a model this code does not know (any more)
        return False
    if record.get("mode") != cfg.adapt.query:
        return False
    memo = {} if memo is None else memo
    key = (model, variant, cfg.adapt.query)
    if key not in memo:
        memo[key] = untuned_settings(cfg, model, variant)
    got = json.loads(json.dumps(record.get("config") or {}, default=str))
    return (settings_agree(memo[key], got, record_stop(record))
            and selection_agrees(record, cfg, memo))


def search_path(cfg, dataset: str, mode: str, model: str, variant: str) -> Path | None:
    """The search file a run's search reads and writes (its ``tuned_like`` source's), None without one."""
    model, variant = tuned_source(model, variant) or (model, variant)
    if not grid_for(cfg, model, variant):
        return None
    return (Path(cfg.results_dir) / "search" / cfg.suite / R.dataset_dirname(dataset) / mode
            / f"{model}__{variant}.json")


def current_trials(cfg, dataset: str, mode: str, model: str, variant: str, memo: dict,
                   unstamped_ok: bool) -> list[dict]:
    """The saved trials of a run's search that still answer the suite: trained with its current
    settings (the funnel's do not enter a trial's validation score, so they are not stamped). Trials
    saved without a settings stamp count if ``unstamped_ok``."""
    path = search_path(cfg, dataset, mode, model, variant)
    if path is None or not path.exists():
        return []
    source = tuned_source(model, variant) or (model, variant)
    key = (*source, cfg.adapt.query)
    if key not in memo:
        memo[key] = untuned_settings(cfg, *source)
    settings = {k: v for k, v in memo[key].items() if k != "funnel"}
    return [t for t in json.loads(path.read_text())["trials"]
            if (settings_agree(settings, t["settings"], trial_stop(t)) if isinstance(t.get("settings"), dict)
                else unstamped_ok)]


def best_trial(trials: list[dict]) -> dict:
    return max(trials, key=lambda t: -math.inf if t["valid"] is None else t["valid"])


def selection_agrees(record: dict, cfg, memo: dict) -> bool:
    """Whether a record ran the setting its tuning search selects now. A search whose trials changed (a
    trial that trained again under a new stopping rule, a grid edited) can select another setting;
    the records of the old one are then stale. While the search lacks current trials for part of
    its grid (they train before the next run of its unit) the record is not judged."""
    selected = (record.get("search") or {}).get("selected")
    if selected is None:
        return True  # a model without a tuning grid
    args = (record["dataset"], record["mode"], record["model"], record["variant"])
    grid = grid_for(cfg, *(tuned_source(*args[2:]) or args[2:]))
    trials = current_trials(cfg, *args, memo, unstamped_ok=True)
    if not grid:
        return False  # searched once, but the suite no longer tunes it: its settings are the suite's defaults now
    if any(not any(t["overrides"] == overrides for t in trials) for overrides in grid):
        return True
    return best_trial(trials)["overrides"] == selected


# Fields added to the code with a default that changes results, and the value a record or trial saved
# before the field existed ran with: such a record is compared as if it had stored that value.
ADDED_FIELDS_BEFORE = {
    ("model_config", "match_input_norm"): False,  # HLLM, 2026-12-04: item states at the user LLM's input scale
}


def settings_agree(want: dict, got: dict, stop: tuple[str, int | None]) -> bool:
    """``part -> {field: value}`` settings; only the parts both have are compared, and a field a record
    lacks is compared only if ``ADDED_FIELDS_BEFORE`` gives its old value, so a field added later with a
    default that keeps the old behaviour leaves older records and trials valid. ``train.min_epochs`` is
    compared through how the run stopped (``stop``: see ``floor_agrees``)."""
    return floor_agrees(want, got, stop) and all(
        value == got[part].get(key, ADDED_FIELDS_BEFORE.get((part, key)))
        for part, values in want.items() if isinstance(got.get(part), dict)
        for key, value in values.items()
        if (part, key) != ("train", "min_epochs") and (key in got[part] or (part, key) in ADDED_FIELDS_BEFORE))


def floor_agrees(want: dict, got: dict, stop: tuple[str, int | None]) -> bool:
    """Whether a run trained with ``got``'s ``train.min_epochs`` is the run ``want``'s floor trains.

    ``stop`` is (what stopped the run: "patience", "max_epochs" or "nothing to train", the last epoch
    it trained). Raising the floor changes only the runs that patience stopped below it: a run that
    stopped at or above the new floor, or at its epoch cap, never met the patience condition from that
    floor on before its stop (it did not from its own lower floor), so the new rule stops it at the
    same epoch, bit for bit. Those records and trials stay current; the others train again. A lower
    floor than the run's could have stopped it earlier, which its record cannot tell: it trains again.
    """
    stopped_by, stopped_at = stop
    if stopped_by == "nothing to train" or not isinstance(got.get("train"), dict) or "train" not in want:
        return True  # a model without training (popularity, BM25): no stopping rule to agree on
    want_floor, ran_floor = want["train"].get("min_epochs", 0), got["train"].get("min_epochs", 0)
    if want_floor == ran_floor:
        return True
    return ran_floor < want_floor and (stopped_by == "max_epochs"
                                       or (stopped_by == "patience" and stopped_at is not None
                                           and stopped_at >= want_floor))


def record_stop(record: dict) -> tuple[str, int | None]:
    selection = record.get("selection") or {}
    return selection.get("stopped_by", "unknown"), selection.get("epochs_run")


def trial_stop(trial: dict) -> tuple[str, int | None]:
    """How a search trial stopped, from its best epoch and its stopping rule (trials saved before
    ``train.min_epochs`` existed ran with none)."""
    train = (trial.get("settings") or {}).get("train") or {}
    if "patience" not in train or "max_epochs" not in train:
        return "unknown", None
    if trial.get("best_epoch") is None:
        return "nothing to train", None
    last = max(trial["best_epoch"] + train["patience"], train.get("min_epochs", 0))
    return ("patience", last) if last < train["max_epochs"] else ("max_epochs", train["max_epochs"])


def format_plan(cfg) -> str:
    runs, problems = plan(cfg)
    units = {unit: i for i, unit in enumerate(plan_units(runs))}
    lines = [f"suite {cfg.suite} v{cfg.suite_version}: {cfg.description}",
             f"data root: {data_root(cfg.data_dir)}   results: {cfg.results_dir}",
             f"{len({r.dataset for r in runs})} datasets x {len(expand(list(cfg.models)))} models/variants x "
             f"{len(cfg.seeds)} seeds; `unit=N` runs one unit (its search, then its seeds)"]
    for r in runs:
        state = ("done" if r.done and not cfg.overwrite else "missing data" if r.dataset in problems
                 else "stale: the suite changed since it ran; to re-run" if r.stale else "to run")
        lines.append(f"  unit {units[r.unit]:<3} {r.dataset:<30} {r.mode:<7} {r.model:<12} {r.variant:<8} "
                     f"seed {r.seed}  [{state}]")
    todo = [r for r in runs if (cfg.overwrite or not r.done) and r.dataset not in problems]
    if todo:
        lines.append(estimate_line(todo, [r for r in runs if r.done]))
    lines += [f"  ! {name}: {why}" for name, why in problems.items()]
    planned = {r.dataset for r in runs}
    lines += [f"  ! scope.{model}.datasets names {name}, not a dataset of this plan (a typo, or left out here)"
              for model, where in cfg.scope.items() for name in where.datasets if name not in planned]
    lines += [f"  ! model.{node}: {why}" for node, why in precision_warnings(cfg, runs).items()]
    return "\n".join(lines)


def run_seconds(record: dict) -> float | None:
    """A record's training + evaluation time (seconds on one process), if it has both."""
    timing = record.get("timing") or {}
    if timing.get("train_s") is None or timing.get("eval_s") is None:
        return None
    return float(timing["train_s"]) + float(timing["eval_s"])


def estimate_seconds(todo: list[RunSpec], done: list[RunSpec]) -> tuple[float, int]:
    """The summed time of the runs still to do, each estimated by the median time of the done runs of
    its unit, else of the same model and variant on its dataset (any mode); and how many runs had
    neither. A planning aid only: the time a run takes depends on when its stopping rule fires, on
    the machine, and on what ran beside it, and tuning searches still to run are not counted."""
    times: dict[tuple, list[float]] = {}
    for r in done:
        if (seconds := run_seconds(R.read_record(r.record))) is not None:
            times.setdefault(r.unit, []).append(seconds)
            times.setdefault((r.dataset, r.model, r.variant), []).append(seconds)
    total, unknown = 0.0, 0
    for r in todo:
        known = times.get(r.unit) or times.get((r.dataset, r.model, r.variant))
        if known:
            total += statistics.median(known)
        else:
            unknown += 1
    return total, unknown


def estimate_line(todo: list[RunSpec], done: list[RunSpec]) -> str:
    seconds, unknown = estimate_seconds(todo, done)
    units = len({r.unit for r in todo})
    line = (f"{len(todo)} runs to do in {units} units: about {seconds / 3600:.1f} core-hours for the "
            f"{len(todo) - unknown} with a done run of the same model on the same dataset (median train + eval "
            f"time; searches not counted)")
    return line + (f", {unknown} without one" if unknown else "")


def precision_warnings(cfg, runs) -> dict[str, str]:
    """Per model config node that runs still to do read: why its precision will be slow on this machine."""
    nodes = {model_spec(r.model).config for r in runs if not r.done or cfg.overwrite}
    out = {}
    for node in sorted(nodes):
        model_cfg = getattr(cfg.model, node, None)
        if isinstance(model_cfg, UserLLMConfig) and (why := slow_bf16_warning(model_cfg)):
            out[node] = why
    return out


def unit_key(run: RunSpec) -> tuple[str, str, str, str]:
    """The unit a run belongs to: its (dataset, mode, model, variant)."""
    return run.unit


def plan_units(runs: list[RunSpec]) -> list[tuple[str, str, str, str]]:
    """The independent units of a plan, in plan order: one per (dataset, mode, model, variant).

    A unit's tuning search and its seeds run in order in one process (the search seed's run reuses
    the search's selected trial); two units share only files that are locked while written (data
    caches, a search reused through ``tuned_like``), so ``--jobs N`` runs them side by side. The
    index is over every planned run, done or not: every process computes the same one.
    """
    return list(dict.fromkeys(unit_key(r) for r in runs))

