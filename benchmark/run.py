"""Command line: ``python -m benchmark.run --suite NAME [hydra overrides...]``.

Examples::

    python -m benchmark.run --suite smoke
    python -m benchmark.run --suite full --data-dir ../shared/data --dry-run
    python -m benchmark.run --suite full --data-dir ../shared/data train.max_epochs=20 model.sasrec.loss=sampled
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

import benchmark.config  # noqa: F401  (registers the structured config schema with Hydra)

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
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.run",
        description="Run a karma-bench suite: load and adapt the data, train every model under identical "
                    "seeds, evaluate on the full catalog, write one record per run and regenerate "
                    "leaderboard.md from the records.",
        epilog="Suites: " + "; ".join(f"{s}" for s in suites()) + ". Any other argument is a Hydra override, "
               "e.g. train.lr=3e-4 model.sasrec.loss=sampled seeds=[0,1] datasets=[synthetic]. "
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
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    if args.results_dir:
        overrides.append(f"results_dir={args.results_dir}")
    if args.overwrite:
        overrides.append("overwrite=true")
    cfg = compose_config(args.suite, overrides)

    from benchmark import pipeline
    from benchmark.data.report import DataError

    with initialize_config_module(config_module="benchmark.conf", version_base="1.3"):
        try:
            if args.dry_run:
                print(pipeline.format_plan(cfg))
                return 0
            if args.leaderboard_only:
                pipeline.regenerate_leaderboard(cfg)
                return 0
            pipeline.run_suite(cfg)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
