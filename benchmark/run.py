"""Command line: ``python -m benchmark.run --suite NAME [hydra overrides...]``.

Examples::

    python -m benchmark.run --suite smoke
    python -m benchmark.run --suite full --data-dir ../shared/data --dry-run
    python -m benchmark.run --suite full --data-dir ../shared/data train.max_epochs=20 model.sasrec.loss=sampled
    python -m benchmark.run --suite full --data-dir ../shared/data --jobs 2   # two runs side by side

``--jobs N`` (N > 1) runs the plan's independent units, one (dataset, mode, model, variant) each (its
search, then its seeds), N at a time through Hydra's joblib launcher (``benchmark.worker``), one torch
thread per run; the records are the ones a sequential suite writes, and the leaderboard is regenerated
once, after every job ended.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from benchmark import allocator
from benchmark.config import typed  # (importing it registers the structured config schema with Hydra)

SUITES_DIR = Path(__file__).parent / "conf" / "suite"


def suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def _config_keys(node, prefix="") -> list[str]:
    keys = []
    for k, v in node.items():
        keys += _config_keys(v, f"{prefix}{k}.") if OmegaConf.is_dict(v) else [f"{prefix}{k}"]
    return keys


def compose_config(suite: str, overrides: list[str]):
    """The resolved, typed config of a suite plus overrides; errors name the valid choices."""
    if suite not in suites():
        raise SystemExit(f"error: unknown suite {suite!r}; valid suites: {', '.join(suites())}")
    with initialize_config_module(config_module="benchmark.conf", version_base="1.3"):
        try:
            cfg = compose(config_name="config", overrides=[f"suite={suite}", *overrides])
        except (ConfigCompositionException, MissingConfigException, ConfigKeyError, OmegaConfBaseException) as err:
            cause = err.__cause__ or err
            try:
                base = compose(config_name="config", overrides=[f"suite={suite}"])
            except Exception:  # the suite file itself is broken: say so, without a traceback
                raise SystemExit(f"error: suite {suite!r} does not compose: {cause}") from None
            raise SystemExit(f"error: bad override in {overrides}: {cause}\nvalid keys:\n  "
                             + "\n  ".join(_config_keys(base))) from None
    from benchmark.data.registry import parse
    from benchmark.models import expand

    try:
        expand(list(cfg.models))
    except KeyError as err:
        raise SystemExit(f"error: {err.args[0]}") from None
    for name in cfg.datasets:
        if name != "*":
            try:
                parse(name)
            except ValueError as err:
                raise SystemExit(f"error: {err}") from None
    try:
        typed_cfg = typed(cfg)
    except (ValueError, OmegaConfBaseException) as err:  # a field's own check (e.g. train.max_epochs >= 1)
        raise SystemExit(f"error: {err}") from None
    from benchmark.runner.plan import check_scope

    try:
        check_scope(typed_cfg)
    except (KeyError, ValueError) as err:
        raise SystemExit(f"error: scope: {err.args[0]}") from None
    return typed_cfg


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def is_launcher_override(override: str) -> bool:
    """``hydra/launcher=...``, ``hydra.launcher.partition=...``, ``hydra.sweep.dir=...``: settings of the
    ``--jobs`` launcher, passed to the jobs' Hydra multirun only (they are no part of the suite's config)."""
    key = _override_key(override)
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def run_jobs(cfg, suite: str, overrides: list[str], jobs: int, launcher_overrides: list[str] = (),
             verbose: bool = False) -> int:
    """Run the suite's missing units ``jobs`` at a time (a Hydra multirun of ``benchmark.worker``, one job
    per unit; the joblib launcher unless ``launcher_overrides`` choose another, e.g. submitit_slurm),
    then regenerate the leaderboard once. Returns the exit status: 1 when a job failed or any run failed
    or was skipped."""
    from benchmark import runner
    from benchmark.worker import STATUS_FILE

    runs, problems = runner.plan(cfg)
    units = runner.plan_units(runs)
    todo = sorted({units.index(runner.unit_key(r)) for r in runs
                   if r.dataset not in problems and (cfg.overwrite or not r.done)})
    print(runner.format_plan(cfg))
    failed, skipped = [], []
    if todo:
        given = {_override_key(o): o.split("=", 1)[1] for o in launcher_overrides if "=" in o}
        launcher = given.get("hydra/launcher", "joblib")
        n_jobs = min(jobs, len(todo))
        settings = [] if "hydra/launcher" in given else ["hydra/launcher=joblib"]
        if launcher == "joblib" and "hydra.launcher.n_jobs" not in given:
            settings.append(f"hydra.launcher.n_jobs={n_jobs}")
        elif launcher == "submitit_slurm" and "hydra.launcher.array_parallelism" not in given:
            settings.append(f"hydra.launcher.array_parallelism={n_jobs}")
        if launcher != "joblib" and "hydra.sweep.dir" not in given:
            raise SystemExit(f"error: hydra/launcher={launcher} runs the jobs elsewhere: set hydra.sweep.dir= to a "
                             "folder that every node sees (each job reports there)")
        # one folder per suite process: the jobs' resolved configs and status files (and submitit's logs);
        # a temporary one is removed when every job succeeded
        base = given.get("hydra.sweep.dir")
        if base:
            Path(base).mkdir(parents=True, exist_ok=True)
        sweep = Path(tempfile.mkdtemp(prefix="karma-bench-jobs-", dir=base))
        print(f"{len(todo)} units to run, {n_jobs} at a time (hydra {launcher} launcher)", flush=True)
        # one thread per run, unless the command line sets threads=: torch's and the BLAS/OpenMP pools
        user_threads = any(_override_key(o) == "threads" for o in overrides)
        threads = str(cfg.threads) if user_threads else "1"
        env = {**os.environ, **{var: threads for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
        command = [sys.executable, "-m", "benchmark.worker", "--multirun", f"suite={suite}", *overrides,
                   *([] if user_threads else ["threads=1"]), "unit=" + ",".join(map(str, todo)),
                   *settings, *(o for o in launcher_overrides if _override_key(o) != "hydra.sweep.dir"),
                   f"hydra.sweep.dir='{sweep}'", "hydra/job_logging=stdout",
                   f"hydra.job_logging.root.level={'INFO' if verbose else 'WARNING'}"]
        sys.stdout.flush()
        rc = subprocess.run(command, env=env, check=False).returncode
        statuses = {}
        for path in sweep.glob(f"*/{STATUS_FILE}"):
            status = json.loads(path.read_text())
            statuses[status["unit"]] = status
        for unit in todo:
            status = statuses.get(unit)
            if status is None or tuple(status["key"] or ()) != units[unit]:
                failed.append(f"unit {unit} ({' '.join(units[unit])})")
                continue
            problems.update(status["problems"])
            skipped += status["failures"]
        if rc != 0 and not failed:
            failed.append(f"the launcher exited with status {rc}")
        if failed or base:
            print(f"the jobs' folders (each one's resolved config and status) are in {sweep}",
                  file=sys.stderr if failed else sys.stdout)
        else:
            shutil.rmtree(sweep, ignore_errors=True)
    runner.finish(cfg, problems)
    if skipped:
        print("\n".join(["runs that failed or were skipped:", *skipped]), file=sys.stderr)
    if failed:
        print("\n".join(["error: jobs failed (their runs have no record; re-run to retry them):", *failed]),
              file=sys.stderr)
    return 1 if failed or skipped else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.run",
        description="Run a karma-bench suite: load and adapt the data, train every model under identical "
                    "seeds, evaluate on the full catalog, write one record per run and regenerate "
                    "leaderboard.md from the records.",
        epilog="Suites: " + "; ".join(f"{s}" for s in suites()) + ". Any other argument is a Hydra override, "
               "e.g. model.sasrec.lr=3e-4 model.sasrec.loss=sampled seeds=[0,1] datasets=[synthetic]. "
               "A bad key lists the valid ones.")
    parser.add_argument("--suite", default="smoke", help=f"suite to run (one of: {', '.join(suites())})")
    parser.add_argument("--data-dir", help="data root holding amazon2018/, unisrec/, ... "
                                           "(default: $KARMA_BENCH_DATA or the user cache dir)")
    parser.add_argument("--results-dir", help="where records and figures go (default: results)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (datasets x models x seeds, "
                                                               "and which runs are done) and exit")
    parser.add_argument("--overwrite", action="store_true", help="re-run runs whose record already exists")
    parser.add_argument("--leaderboard-only", action="store_true", help="only regenerate leaderboard.md")
    parser.add_argument("--verbose", action="store_true", help="log every epoch")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run N independent (dataset, mode, model, variant) units side by side, one thread "
                             "per run, through Hydra's joblib launcher (default 1: one process, in order); "
                             "hydra/launcher=submitit_slurm hydra.launcher.partition=... hydra.sweep.dir=<shared "
                             "folder> sends them to SLURM instead (pip install hydra-submitit-launcher)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    args = parser.parse_intermixed_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    overrides = [o for o in args.overrides if not is_launcher_override(o)]
    launcher_overrides = [o for o in args.overrides if is_launcher_override(o)]
    if launcher_overrides and (args.jobs == 1 or args.dry_run or args.leaderboard_only):
        parser.error(f"{' '.join(launcher_overrides)}: hydra launcher settings apply to --jobs N (N > 1) only")
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    if args.results_dir:
        overrides.append(f"results_dir={args.results_dir}")
    if args.overwrite:
        overrides.append("overwrite=true")
    cfg = compose_config(args.suite, overrides)
    from benchmark import distributed

    if cfg.strict and args.jobs > 1:  # a sweep's other jobs run on whatever one of them hits
        parser.error("strict=true stops the suite at its first bad record, which --jobs N cannot do: the other "
                     "units of the sweep run to their end; run a strict suite without --jobs")
    if distributed.init_from_env() and args.jobs > 1:  # started by torchrun: one run over several processes
        parser.error("under torchrun every process trains the same run (DDP); --jobs N does not apply")

    from benchmark import runner
    from benchmark.data.report import DataError

    with initialize_config_module(config_module="benchmark.conf", version_base="1.3"):
        try:
            if args.dry_run:
                print(runner.format_plan(cfg))
                return 0
            if args.leaderboard_only:
                runner.regenerate_leaderboard(cfg)
                return 0
            if args.jobs > 1:
                return run_jobs(cfg, args.suite, overrides, args.jobs, launcher_overrides, verbose=args.verbose)
            if runner.run_suite(cfg):
                return 1  # every other run finished and the leaderboard is written; the list is printed
        except (DataError, runner.StrictStop) as err:  # bad input, or strict=true's stop at a failed run
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    allocator.preload()  # first: re-executes this command once with mimalloc preloaded
    sys.exit(main())
