"""A suite's execution: the missing runs, in one process or as one unit of ``--jobs N``; safe with several
processes on one results dir (file locks on data caches, search files and records)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
import traceback
from pathlib import Path

from benchmark import distributed as D
from benchmark import machine
from benchmark import records as R
from benchmark.data.download import cache_root, data_root
from benchmark.data.report import DataError
from benchmark.data.schema import SearchLog
from benchmark.funnel.runs import run_funnel_pass
from benchmark.models import MODELS
from benchmark.runner.execute import attach_images, load_log, run_one
from benchmark.runner.plan import format_plan, plan, plan_units, unit_key
from benchmark.runner.report import regenerate_leaderboard
from benchmark.runner.search import search, search_file
from benchmark.runner.spec import RunSpec, mode_config
from benchmark.runner.staleness import record_is_current
from karma.visual import VisualEncoderError


class StrictStop(RuntimeError):
    """``strict=true``: the suite stopped at its first failed or skipped run (no funnel pass, no
    leaderboard; the records written before it stay)."""


def done_meanwhile(run: RunSpec, cfg, since: float) -> bool:
    """Whether another process wrote this run's record, current, while this one waited for its lock
    (with ``overwrite``: wrote it after this suite started)."""
    path = Path(run.record)
    try:
        return record_is_current(R.read_record(path), cfg) and (not cfg.overwrite or path.stat().st_mtime >= since)
    except (OSError, ValueError):  # absent, or unreadable: run it
        return False


def run_planned(cfg) -> tuple[dict[str, str], list[str]]:
    """Run the suite's missing runs, only unit ``cfg.unit``'s when it is set (a job of ``--jobs N``).

    Returns (datasets that cannot run and why, runs that failed or were skipped); with ``cfg.strict``
    the first such run raises ``StrictStop`` instead. Safe to run in several processes over one results
    dir: a dataset's caches, a search file and a record are each written under a file lock, and a run
    whose record another process wrote meanwhile is skipped.
    """
    # The code revision is read once, when the suite starts: the code that runs is the code that was
    # imported then, whatever happens to the checkout while a long suite runs.
    environment = machine.environment()
    started = time.time()
    root = data_root(cfg.data_dir)
    runs, problems = plan(cfg)
    units = plan_units(runs)
    if cfg.unit is not None and not 0 <= cfg.unit < len(units):
        raise ValueError(f"unit={cfg.unit}, but the plan has {len(units)} units (0 to {len(units) - 1})")
    todo = [r for r in runs if r.dataset not in problems and (cfg.overwrite or not r.done)
            and (cfg.unit is None or unit_key(r) == units[cfg.unit])]
    views = list(dict.fromkeys((r.dataset, r.mode) for r in runs))
    todo.sort(key=lambda r: views.index((r.dataset, r.mode)))  # stable: one dataset view loaded at a time
    if cfg.unit is None:
        if D.is_main():
            print(format_plan(cfg))
    else:
        print(f"unit {cfg.unit} of {len(units)}: {' '.join(units[cfg.unit])}, {len(todo)} runs to do", flush=True)
    tag = "" if cfg.unit is None else f"unit {cfg.unit}: "
    logs: dict[tuple[str, str], SearchLog] = {}
    searched: dict[tuple, tuple] = {}
    failures = []
    for i, run in enumerate(todo, 1):
        name, mode = run.dataset, run.mode
        view = (name, mode)
        try:
            mode_cfg = mode_config(cfg, mode)
            if view not in logs:
                logs.clear()  # one dataset view in memory at a time
                # one process at a time adapts a dataset and renders its images into the cache (under
                # DDP, rank 0 first: the others then read its cache)
                for _ in D.main_first():
                    with R.file_lock(cache_root() / "processed" / R.dataset_dirname(name)):
                        logs[view] = load_log(name, mode_cfg, root)
                        if any(MODELS[r.model].needs_images for r in todo if (r.dataset, r.mode) == view):
                            attach_images(logs[view], cfg, root)
            key = unit_key(run)
            if key not in searched:
                # another process searching the same file (karma_gen reuses karma:karma's) finishes first;
                # this one then reads its trials back instead of training them again
                path = search_file(mode_cfg, run)
                with D.main_lock(R.file_lock(path) if path else contextlib.nullcontext()):
                    searched[key] = search(run, logs[view], mode_cfg)
            (run_cfg, tuned), summary, trial = searched[key]
            trial = trial if run.seed == cfg.search.seed else None
            if trial is not None:
                searched[key] = ((run_cfg, tuned), summary, None)  # used once, then freed
            with D.main_lock(R.file_lock(run.record)):
                if D.agree(done_meanwhile(run, mode_cfg, started)):
                    print(f"[{tag}{i}/{len(todo)}] {name} [{mode}] {run.model}:{run.variant} seed {run.seed}: "
                          "written by another process meanwhile, skipped", flush=True)
                    continue
                print(f"[{tag}{i}/{len(todo)}] {name} [{mode}] {run.model}:{run.variant} seed {run.seed}"
                      + (" (the search's selected trial: same settings and seed)" if trial else ""), flush=True)
                record = run_one(dataclasses.replace(run, tuned=tuned), logs[view], run_cfg, environment, summary,
                                 trial)
            if record is not None:  # None in a DDP follower: rank 0 evaluated and wrote it
                m = record["metrics"]["test"]
                print(f"    {tag}test NDCG@10={m['NDCG@10']:.4f} HR@10={m['HR@10']:.4f} gAUC={m['gAUC']:.4f} "
                      f"train {record['timing']['train_s']:.0f}s", flush=True)
        except DataError as err:
            failures.append(f"{name}: {err}")
            problems[name] = str(err).splitlines()[0]
            print(f"    skipped: {err}", flush=True)
        except VisualEncoderError as err:  # e.g. the offline encoder's optional package is not installed
            failures.append(f"{name} {run.model}:{run.variant} seed {run.seed}: {err}")
            print(f"    skipped: {err}", flush=True)
        except Exception as err:  # a run that crashed: the others still run, and the suite exits non-zero
            failures.append(f"{name} [{mode}] {run.model}:{run.variant} seed {run.seed}: "
                            f"{type(err).__name__}: {err}")
            print(f"    failed: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc()
        # strict: the first bad record, skipped or failed run ends the suite, in every DDP process at once
        # (rank 0 alone evaluates, so a failure there is not seen by the others)
        if cfg.strict and D.any_process(bool(failures)):
            where = failures[-1] if failures else "in another process (see its log)"
            raise StrictStop(f"strict mode: stopped at the first failed or skipped run, {where}; "
                             f"{len(todo) - i} later runs not run (without strict=true bad records are counted "
                             "and skipped, and the other runs finish)")
    return problems, failures


def finish(cfg, problems: dict[str, str]) -> None:
    """After the runs: the funnel pass over the stored embeddings, then the leaderboard."""
    if cfg.funnel.enabled:
        run_funnel_pass(cfg)
    regenerate_leaderboard(cfg, {cfg.suite: problems})


def run_suite(cfg) -> list[str]:
    """Run what is missing, then regenerate the leaderboard from the records. Returns the runs that
    failed or were skipped (bad data, a crash), one line each: the caller exits non-zero when there
    are any. With ``cfg.unit`` set (one job of ``python -m benchmark.run --jobs N``) only that unit
    runs, and the leaderboard is left to the parent, which regenerates it once after every job ended.
    With ``cfg.strict`` the first failed or skipped run raises ``StrictStop`` (nothing after it runs)."""
    problems, failures = run_planned(cfg)
    if cfg.unit is None and D.is_main():
        finish(cfg, problems)
    if failures:
        print("\n".join(["runs that failed or were skipped:", *failures]), file=sys.stderr)
    return failures

