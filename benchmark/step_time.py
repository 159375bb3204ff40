"""Training step time of the LLM family on one dataset (how the ``cpu`` preset's budget was chosen).

    python -m benchmark.step_time --dataset unisrec/Scientific --data-dir ../shared/data [--steps 20]

Builds each listed model/variant with the full suite's config, then times ``steps`` optimiser
steps (forward, backward, AdamW) on the same length-grouped batches, after one untimed warm-up
step. Prints and writes ``results/step_time.json``: seconds per step, impressions per second, and
the projected seconds per joint epoch. A measurement script, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import benchmark.config  # noqa: F401  (registers the config schema)
from benchmark import allocator
from benchmark.data.download import cache_root, data_root
from benchmark.machine import environment
from benchmark.records import write_text_atomic

DEFAULT_MODELS = ["action_llm:default", "karma:task1", "karma:task2", "karma:karma", "hllm:default"]


def time_training_steps(model, log, train_cfg, generator: torch.Generator, steps: int) -> dict:
    """Time ``steps`` optimiser steps (forward, backward, AdamW) on the trainer's own batches, after one
    untimed step (one-off allocations): median seconds per step, impressions/s, and decoder tokens/s
    for the models that count them (``tokens_seen``)."""
    from benchmark.device import module_device, synchronize, to_device
    from benchmark.trainer import _loader

    model.train()
    device = module_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loader = _loader(model.train_dataset(log, generator), model, train_cfg, generator)
    batches = iter(loader)
    times, sizes, tokens = [], [], 0
    for step in range(steps + 1):
        batch = next(batches, None)
        if batch is None:  # a small set: the next epoch's batches
            batches = iter(loader)
            batch = next(batches)
        seen = getattr(model, "tokens_seen", 0)
        synchronize(device)
        start = time.perf_counter()
        loss = sum(model.losses(to_device(batch, device), generator).values())  # the move is part of a step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step:
            times.append(time.perf_counter() - start)
            sizes.append(len(batch.get("targets", batch.get("items"))))
            tokens += getattr(model, "tokens_seen", 0) - seen
    return {"median_s_per_step": statistics.median(times), "impressions_per_s": sum(sizes) / sum(times),
            "tokens_per_s": tokens / sum(times) if tokens else None, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.step_time", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="unisrec/Scientific")
    parser.add_argument("--data-dir")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="model:variant entries")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides, e.g. model.karma.decode_fraction=0.5")
    parser.add_argument("--out", default="results/step_time.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hydra import compose, initialize_config_module

    from benchmark.config import typed
    from benchmark.device import place
    from benchmark.models import build
    from benchmark.runner import load_log
    from benchmark.seed import seed_everything
    from benchmark.trainer import TrainConfig

    with initialize_config_module(config_module="benchmark.conf", version_base="1.3"):
        cfg = typed(compose(config_name="config", overrides=["suite=full", *args.override]))
    log = load_log(args.dataset, cfg, data_root(args.data_dir))
    n_train = int((log.impressions["split"] == "train").sum())
    train_cfg = TrainConfig(batch_size=cfg.train.batch_size)
    result = {"dataset": args.dataset, "train_impressions": n_train, "batch_size": train_cfg.batch_size,
              "threads": args.threads, "overrides": args.override, "models": {}}
    for entry in args.models:
        name, _, variant = entry.partition(":")
        generator = seed_everything(0)
        model = build(name, variant or "default", log, cfg.model, cache_dir=cache_root() / "models")
        place(model, cfg.device)  # --override device=cuda times the GPU path
        timed = time_training_steps(model, log, train_cfg, generator, args.steps)
        per_step, rate = timed["median_s_per_step"], timed["impressions_per_s"]
        result["models"][entry] = {**timed, "projected_s_per_epoch": n_train / rate}
        print(f"{entry:<22} {per_step:.3f} s/step  {rate:.0f} impressions/s  ~{n_train / rate:.0f} s/epoch", flush=True)
    result["environment"] = environment()
    result["load_average_at_end"] = os.getloadavg()  # > threads means the timings were contended
    write_text_atomic(Path(args.out), json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    allocator.preload()  # first: re-executes this command once with mimalloc preloaded
    raise SystemExit(main())
