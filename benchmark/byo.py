"""Bring your own model: evaluate any ``benchmark.model.RankingModel`` with a suite's exact protocol.

From Python::

    from benchmark.byo import evaluate_model
    record = evaluate_model(lambda log: MyModel(log.n_items, MyModel.Config()), "synthetic", suite="smoke")

From the command line, name the class by its import path like any built-in model::

    python -m benchmark.run --suite smoke "models=[popularity,examples.item_knn.ItemKNN]"

Either way the model gets the suite's data view, splits, training loop and stopping rule (the generic
trainer over its own ``train_dataset`` / ``losses``), full-catalog evaluation, funnel and diagnostics,
and a normal run record under ``results/records/<suite>/...`` named by the class's import path, with
``model_source`` (import path, file, sha256) as its provenance. The leaderboard shows external records
like any other, as long as the class still imports and its record was made with its ``Config``
defaults (the suite's settings for it); external models get no tuning search.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from pathlib import Path

from benchmark import machine
from benchmark import records as R
from benchmark.data.download import data_root
from benchmark.data.schema import SearchLog
from benchmark.model import RankingModel


def import_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def model_source(cls: type) -> dict:
    """Where an external model's code came from: its import path, file and the file's sha256."""
    try:
        file = Path(inspect.getfile(cls))
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
    except (TypeError, OSError):
        file, digest = None, None
    return {"import_path": import_path(cls), "file": str(file) if file else None, "sha256": digest}


def evaluate_model(model: RankingModel | Callable[[SearchLog], RankingModel], dataset: str = "synthetic", *,
                   suite: str = "smoke", mode: str | None = None, seed: int = 0, overrides: tuple[str, ...] = (),
                   results_dir: str | None = None) -> dict:
    """Train (if it has anything to train) and evaluate ``model`` on ``dataset`` with ``suite``'s
    protocol, in query ``mode`` (default: the suite's first), and write its run record; returns it.
    ``model`` is the object, or a factory called with the search log after the seed is set (so that
    its initialisation is seeded like a built-in model's)."""
    import torch

    from benchmark.run import compose_config
    from benchmark.runner.execute import evaluate_split, load_log, run_one
    from benchmark.runner.settings import train_config
    from benchmark.runner.spec import RunSpec, mode_config
    from benchmark.seed import seed_everything
    from benchmark.trainer import train

    cfg = compose_config(suite, [*overrides, *([f"results_dir={results_dir}"] if results_dir else [])])
    mode = mode or cfg.modes[0]
    run_cfg = mode_config(cfg, mode)
    log = load_log(dataset, run_cfg, data_root(cfg.data_dir))
    torch.set_num_threads(cfg.threads)
    generator = seed_everything(seed)
    if not isinstance(model, RankingModel):
        model = model(log)
    if not isinstance(model, RankingModel):
        raise TypeError(f"{type(model).__name__} does not implement benchmark.model.RankingModel "
                        "(train_dataset, collate, losses, item_embeddings, user_embeddings)")
    name = import_path(type(model))
    run = RunSpec(dataset, mode, name, "default", seed,
                  R.record_path(cfg.results_dir, cfg.suite, dataset, mode, name, "default", seed))
    config = getattr(model, "config", None)
    train_cfg = train_config(run_cfg, config)
    metric = run_cfg.eval.selection_metric
    with torch.no_grad():
        model.initial_item_embeddings = model.item_embeddings(log).float().cpu().numpy()
    with machine.PeakMemory() as memory:
        trained = train(model, log, train_cfg, generator,
                        lambda m: evaluate_split(m, log, "valid", run_cfg, None, False)[0].metrics[metric],
                        lr=getattr(config, "lr", 1e-3), desc=run.label)
    return run_one(run, log, run_cfg, machine.environment(), trial=((model, trained, train_cfg), memory.peak_mb),
                   source=model_source(type(model)))
