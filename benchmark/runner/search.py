"""The tuning search: every model/variant gets the same number of trials on the search seed, scored on
validation only; the best trial's settings run every seed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from benchmark import distributed as D
from benchmark import machine
from benchmark import records as R
from benchmark.data.schema import SearchLog
from benchmark.models import tuned_source
from benchmark.runner.execute import catalog_terms, fit, settle_checkpoint
from benchmark.runner.grids import grid_for, with_overrides
from benchmark.runner.settings import untuned_settings
from benchmark.runner.spec import RunSpec
from benchmark.runner.staleness import best_trial, current_trials, record_is_current, search_path


def search_file(cfg, run: RunSpec) -> Path | None:
    """The search file a run's search reads and writes (its ``tuned_like`` source's), None without one."""
    return search_path(cfg, run.dataset, run.mode, run.model, run.variant)


def search(run: RunSpec, search_log: SearchLog, cfg) -> tuple[tuple, dict | None, tuple | None]:
    """The tuning search of DESIGN's fair comparison: every model/variant gets the same grid size.

    Trials train on the search seed and are scored on the validation split only; each finished
    trial is saved at once (an interrupted search resumes), and the best trial's overrides are
    applied to the config of every seed's final run. Returns ((config, tuned fields), search
    summary or None, the selected trial's fit or None). The selected trial trained exactly the
    search seed's final run (same settings, same seed), so that run reuses it instead of training
    it again: in this process from memory, in a later one (after an interruption, or when a unit tuned
    like this one ran the search) from the trial's finished checkpoint, which the trainer keeps.
    """
    source = tuned_source(run.model, run.variant)
    if source is not None:  # the same settings as another variant, selected by that variant's search
        (run_cfg, tuned), summary, _ = search(dataclasses.replace(run, model=source[0], variant=source[1]),
                                             search_log, cfg)
        return (run_cfg, tuned), (None if summary is None else {**summary, "tuned_like": ":".join(source)}), None
    grid = grid_for(cfg, run.model, run.variant)
    if not grid:
        return (cfg, {}), None, None
    path = search_file(cfg, run)
    # Trials are kept only if they ran with the suite's current settings (a suite edit re-runs the
    # search). Trials saved without a settings stamp count while the search seed's record is current.
    memo = {}
    settings = {k: v for k, v in untuned_settings(cfg, run.model, run.variant).items() if k != "funnel"}
    seed_record = R.record_path(cfg.results_dir, cfg.suite, run.dataset, run.mode, run.model,
                                run.variant, cfg.search.seed)
    unstamped_ok = seed_record.exists() and record_is_current(R.read_record(seed_record), cfg, memo)
    done = current_trials(cfg, run.dataset, run.mode, run.model, run.variant, memo, unstamped_ok)
    item_terms = catalog_terms(search_log)
    kept = None  # (overrides, fit, peak memory) of the best trial trained in this process
    for overrides in grid:
        if any(t["overrides"] == overrides for t in done):
            continue
        trial_cfg, tuned = with_overrides(cfg, run.model, overrides)
        with machine.PeakMemory() as memory:
            fitted = fit(dataclasses.replace(run, seed=cfg.search.seed, tuned=tuned), search_log, trial_cfg,
                         item_terms)
        trained = fitted[1]
        done.append({"overrides": overrides, "settings": settings, "valid": trained.valid_value,
                     "best_epoch": trained.best_epoch,
                     # the trainer's count, which carries the time of earlier processes across a resume
                     "train_s": trained.train_seconds, "peak_memory_mb": memory.peak_mb})
        print(f"    search {run.model}:{run.variant} {overrides} -> valid "
              f"{cfg.eval.selection_metric}={trained.valid_value:.4f}", flush=True)
        if D.is_main():
            R.write_text_atomic(path, json.dumps({"metric": cfg.eval.selection_metric, "seed": cfg.search.seed,
                                                  "trials": done}, indent=1, default=str))
        # The best trial's finished checkpoint stays: the search seed's run has its exact settings and resumes
        # from it, in this process or a later one (a unit of a variant tuned like this one runs the search).
        if best_trial(done)["overrides"] == overrides:
            if kept is not None:
                settle_checkpoint(kept[1][1], cfg)
            kept = (overrides, fitted, memory.peak_mb)
        else:
            settle_checkpoint(trained, cfg)
        del fitted
    best = best_trial(done)
    reusable = kept[1:] if kept is not None and kept[0] == best["overrides"] else None
    return (with_overrides(cfg, run.model, best["overrides"]),
            {"metric": cfg.eval.selection_metric, "seed": cfg.search.seed, "trials": done,
             "selected": best["overrides"]}, reusable)
