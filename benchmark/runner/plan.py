"""Planning: which (dataset, mode, model, variant, seed) runs a suite has, which of them are done (see
``staleness``), how they group into units, and how long the rest will take."""

from __future__ import annotations

import statistics

from benchmark import records as R
from benchmark.data import adapt as A
from benchmark.data import registry
from benchmark.data.download import data_root
from benchmark.models import MODELS, expand, model_spec, tuned_source
from benchmark.runner.grids import grid_for
from benchmark.runner.spec import RunSpec, mode_config
from benchmark.runner.staleness import record_is_current
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


def format_plan(cfg) -> str:
    runs, problems = plan(cfg)
    units = {unit: i for i, unit in enumerate(plan_units(runs))}
    lines = [f"suite {cfg.suite} v{cfg.suite_version}: {cfg.description}",
             f"data root: {data_root(cfg.data_dir)}   results: {cfg.results_dir}",
             f"{len({r.dataset for r in runs})} datasets x {len(expand(list(cfg.models)))} models/variants x "
             f"{len(cfg.seeds)} seeds; `unit=N` runs one unit (its search, then its seeds)"]
    for r in runs:
        state = ("done" if r.done and not cfg.overwrite else "missing data" if r.dataset in problems
                 else "stale: the suite or its search's selection changed since it ran; to re-run" if r.stale else "to run")
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
    """The summed time of the runs still to do, each estimated by the median time of the first of: the done
    runs of its unit; the done runs of the same model and variant on its dataset (any mode); the stale records
    of that model and variant there (its own or another seed's: the same run under older settings, a fair
    guess); the done runs of the same model there in any variant. Also how many runs had none of these. A
    planning aid only: the time a run takes depends on when its stopping rule fires, on the machine, and on
    what ran beside it, and tuning searches still to run are not counted."""
    times: dict[tuple, list[float]] = {}
    for r in done:
        if (seconds := run_seconds(R.read_record(r.record))) is not None:
            for key in (r.unit, (r.dataset, r.model, r.variant), (r.dataset, r.model)):
                times.setdefault(key, []).append(seconds)
    for r in todo:
        if r.stale and (seconds := run_seconds(R.read_record(r.record))) is not None:
            times.setdefault(("stale", r.dataset, r.model, r.variant), []).append(seconds)
    total, unknown = 0.0, 0
    for r in todo:
        keys = (r.unit, (r.dataset, r.model, r.variant), ("stale", r.dataset, r.model, r.variant), (r.dataset, r.model))
        known = next((times[k] for k in keys if times.get(k)), None)
        if known:
            total += statistics.median(known)
        else:
            unknown += 1
    return total, unknown


def estimate_line(todo: list[RunSpec], done: list[RunSpec]) -> str:
    seconds, unknown = estimate_seconds(todo, done)
    head = f"{len(todo)} runs to do in {len({r.unit for r in todo})} units"
    basis = "a done run or a stale record of the same model on the same dataset"
    if unknown == len(todo):
        return f"{head}: no time estimate yet (none has {basis})"
    line = (f"{head}: about {seconds / 3600:.1f} core-hours for the {len(todo) - unknown} with {basis} "
            f"(median train + eval time on the machines that made them; searches not counted)")
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
