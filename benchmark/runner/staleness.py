"""Staleness: whether a record, or a saved search trial, still answers the suite as it is defined now."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmark import records as R
from benchmark.models import model_spec, tuned_source
from benchmark.runner.grids import grid_for
from benchmark.runner.settings import untuned_settings


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
    ("train", "lr_schedule"): "constant",  # 2026-12-07: an opt-in rate schedule (suite v2 runs at a constant rate)
    ("train", "warmup_ratio"): 0.0,
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
