"""One job of a ``--jobs N`` suite: the suite's runs of one unit of its plan, launched by Hydra.

``python -m benchmark.run --suite S --jobs N [overrides]`` plans the suite, then runs::

    python -m benchmark.worker --multirun suite=S [overrides] threads=1 unit=0,3,4,... \\
        hydra/launcher=joblib hydra.launcher.n_jobs=N hydra.sweep.dir=<temporary folder>

Hydra's joblib launcher (``hydra-joblib-launcher``) runs one job per unit, N at a time, each in a
worker process. A unit is one (dataset, mode, model, variant): its tuning search and its seeds, in
order (``benchmark.runner.plan_units``). ``hydra/launcher=submitit_slurm`` (``hydra-submitit-launcher``)
sends the same jobs to SLURM instead. Each job writes ``unit.json`` into its Hydra output folder: its
unit, the datasets that could not be loaded and the runs skipped, which the parent reads to regenerate
the leaderboard once.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

import benchmark.config  # noqa: F401  (registers the structured config schema with Hydra)
from benchmark import allocator

STATUS_FILE = "unit.json"


@hydra.main(config_path="pkg://benchmark.conf", config_name="config", version_base="1.3")
def job(cfg) -> None:
    from benchmark import runner
    from benchmark.config import typed
    from benchmark.records import write_text_atomic

    cfg = typed(cfg)
    if cfg.unit is None:
        raise SystemExit("benchmark.worker runs one unit of a suite's plan: set unit=<index> "
                         "(python -m benchmark.run --jobs N does)")
    runs, _ = runner.plan(cfg)
    units = runner.plan_units(runs)
    key = list(units[cfg.unit]) if 0 <= cfg.unit < len(units) else None
    problems, failures = runner.run_planned(cfg)
    write_text_atomic(Path(HydraConfig.get().runtime.output_dir) / STATUS_FILE,
                      json.dumps({"unit": cfg.unit, "key": key, "problems": problems, "failures": failures}))


if __name__ == "__main__":
    allocator.preload()  # first: re-executes this command once with mimalloc preloaded
    job()
