"""Speed and memory of every model family on one dataset, measured by one command.

    python -m benchmark.perf --dataset synthetic                  # the embedded catalog, full-suite models
    python -m benchmark.perf --suite full --data-dir ../shared/data --dataset unisrec/Scientific@1020users

For each model: training throughput (impressions/s, and decoder tokens/s for the LLM family) over a few
optimiser steps on the trainer's own batches, each model in a process of its own (so its peak memory is
its own); evaluation: catalog and user embedding of the test split,
then the project's exact full-catalog ranking (``benchmark.evaluate``) against a plain batched
matrix-product top-K over the same embeddings (``torch.topk``; the ratio is the figure of merit: the
harness's ranking costs this many plain top-Ks); peak resident memory. Then KARMA vs the action-only
LLM at inference (``benchmark.latency``: must be 1.00 within noise), and the visual-feature cache: the
same catalog's features extracted into an empty cache (miss) and read back (hit).

Writes ``results/perf/<dataset>.json`` with the machine described (CPU, threads, load average before and
after: a load above the thread count means the timings were contended); ``leaderboard.md`` shows every
such file in its speed section. A measurement, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmark import allocator, machine
from benchmark import records as R
from benchmark.data.download import cache_root, data_root

DEFAULT_MODELS = ["popularity:default", "query_pop:default", "bm25:default", "sasrec:default", "action_llm:default",
                  "karma:karma", "hllm:default"]


def plain_topk_seconds(items: np.ndarray, users: np.ndarray, k: int, batch: int = 1024, repeats: int = 3) -> float:
    """Median seconds of the simplest exact top-K: scores = users @ items.T in batches, ``torch.topk``."""
    item_t, user_t = torch.from_numpy(items), torch.from_numpy(users)
    k = min(k, len(items))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for s in range(0, len(user_t), batch):
            torch.topk(user_t[s:s + batch] @ item_t.T, k, dim=1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _load(dataset: str, suite: str, mode: str, overrides: list[str]):
    """The suite's config in ``mode`` and the dataset's log with its images resolved."""
    from benchmark.run import compose_config
    from benchmark.runner import load_log
    from benchmark.runner.execute import attach_images
    from benchmark.runner.spec import mode_config

    cfg = mode_config(compose_config(suite, overrides), mode)
    root = data_root(cfg.data_dir)
    log = load_log(dataset, cfg, root)
    attach_images(log, cfg, root)
    return log, cfg


def _measure_in_child(entry: str, dataset: str, suite: str, mode: str, overrides: list[str], steps: int,
                      repeats: int, threads: int) -> dict:
    """``measure_model`` in a process of its own (spawned): its peak memory is that model's alone, and
    nothing one model allocated stays for the next."""
    torch.set_num_threads(threads)
    log, cfg = _load(dataset, suite, mode, overrides)  # a cache hit: the parent adapted it
    return measure_model(entry, log, cfg, steps, repeats)


def measure_model(entry: str, log, cfg, steps: int, repeats: int) -> dict:
    from benchmark.device import place, synchronize
    from benchmark.evaluate import evaluate
    from benchmark.models import build
    from benchmark.runner.execute import embed
    from benchmark.runner.settings import train_config
    from benchmark.seed import seed_everything
    from benchmark.step_time import time_training_steps

    name, _, variant = entry.partition(":")
    test = log.split("test")
    with machine.PeakMemory() as memory:
        generator = seed_everything(0)
        model = build(name, variant or "default", log, cfg.model, cache_dir=cache_root() / "models")
        device = place(model, cfg.device)  # device=cuda measures the GPU path; ranking stays on the CPU
        train_cfg = train_config(cfg, getattr(model, "config", None))
        out = {"training": time_training_steps(model, log, train_cfg, generator, steps)
               if any(p.requires_grad for p in getattr(model, "parameters", list)()) else None}
        model.eval()
        start = time.perf_counter()
        items, users = embed(model, log, "test")  # back on the CPU, so the encoder's work is done
        synchronize(device)
        encode_s = time.perf_counter() - start
        ks = list(cfg.eval.ks)
        rank_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            evaluate(items, users, test, ks=ks, js_k=cfg.eval.js_k)
            rank_times.append(time.perf_counter() - start)
        rank_s = statistics.median(rank_times)
        plain_s = plain_topk_seconds(items, users, max(ks), repeats=repeats)
    out["evaluation"] = {
        "test_impressions": len(test), "encode_s": encode_s, "rank_s": rank_s, "plain_topk_s": plain_s,
        "rank_over_plain_topk": rank_s / plain_s if plain_s > 0 else None,
        "users_per_s": len(test) / (encode_s + rank_s),
        "ms_per_request": 1000.0 * (encode_s + rank_s) / len(test)}
    out["peak_memory_mb"] = memory.peak_mb  # host memory; a GPU's own memory is not counted
    out["compute_device"] = str(device)
    return out


def measure_visual_cache(log, cfg) -> dict:
    """Seconds to extract the catalog's visual features into an empty cache, then to read them back."""
    from karma.visual import VisualEncoderError, extract_features

    paths = log.catalog["image_file"].tolist() if "image_file" in log.catalog else []
    if not any(p is not None for p in paths):
        return {"skipped": "no item images in this dataset"}
    encoder = cfg.model.karma.visual_encoder
    with tempfile.TemporaryDirectory() as folder:
        try:
            times = {}
            for state in ("miss", "hit"):
                start = time.perf_counter()
                _, _, info = extract_features(paths, encoder, Path(folder), progress=False)
                times[state] = {"seconds": time.perf_counter() - start, "cache": info["cache"]}
        except VisualEncoderError as err:
            return {"skipped": str(err).splitlines()[0]}
    return {"encoder": encoder, "images": sum(p is not None for p in paths), **times,
            "miss_over_hit": times["miss"]["seconds"] / max(times["hit"]["seconds"], 1e-9)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="full", help="the suite whose model settings to measure")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--mode", default="coarse", help="query mode (none for a set without category paths)")
    parser.add_argument("--data-dir")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="model:variant entries")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each evaluation")
    parser.add_argument("--latency-impressions", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="default: results/perf/<dataset>.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for benchmark.run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from benchmark.latency import measure_latency

    overrides = [*args.overrides, *([f"data_dir={args.data_dir}"] if args.data_dir else [])]
    load_before = os.getloadavg()
    log, cfg = _load(args.dataset, args.suite, args.mode, overrides)
    result = {"dataset": args.dataset, "mode": args.mode, "suite": cfg.suite, "suite_version": str(cfg.suite_version),
              "n_items": log.n_items, "threads": args.threads, "steps": args.steps, "repeats": args.repeats,
              "command": " ".join(["python -m benchmark.perf", *(argv if argv is not None else sys.argv[1:])]),
              "models": {}}
    spawn = multiprocessing.get_context("spawn")
    for entry in args.models:
        print(f"{entry} ...", flush=True)
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                m = pool.submit(_measure_in_child, entry, args.dataset, args.suite, args.mode, overrides, args.steps,
                                args.repeats, args.threads).result()
            result["models"][entry] = m
        except Exception as err:  # e.g. a query model on a log without queries: the others are still measured
            result["models"][entry] = {"error": f"{type(err).__name__}: {err}"}
            print(f"  failed: {type(err).__name__}: {err}", flush=True)
            continue
        train = m["training"] or {}
        tokens = f", {train['tokens_per_s']:.0f} tokens/s" if train.get("tokens_per_s") else ""
        print(f"  train {train.get('impressions_per_s') or 0:.0f} impressions/s{tokens}; "
              f"eval {m['evaluation']['users_per_s']:.0f} users/s, ranking {m['evaluation']['rank_over_plain_topk']:.2f}"
              f"x a plain top-K; peak {m['peak_memory_mb']:.0f} MiB", flush=True)
    if {"action_llm:default", "karma:karma"} <= set(args.models) and log.has_text:
        latency = measure_latency(log, cfg, args.latency_impressions, args.repeats)
        result["karma_vs_action_only"] = {k: latency[k] for k in ("identical_scores", "ratio_karma_over_action_only",
                                                                  "ratio_range_over_rounds", "first_per_round", "median_seconds",
                                                                  "impressions", "repeats")}
    result["visual_cache"] = measure_visual_cache(log, cfg)
    result["machine"] = {**machine.environment(), "cpu_count": os.cpu_count(), "load_average_before": load_before,
                         "load_average_after": os.getloadavg()}
    out = Path(args.out) if args.out else Path(cfg.results_dir) / "perf" / f"{R.dataset_dirname(args.dataset)}.json"
    R.write_text_atomic(out, json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    allocator.preload()  # first: re-executes this command once with mimalloc preloaded
    raise SystemExit(main())
