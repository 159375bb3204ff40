"""Data-parallel training (DDP through torchrun, gloo on the CPU, 2 processes) follows the one-process
loss curve: SASRec and the action-only LLM, same seed, same data, same global batches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.run import main

CHEAP = ["synthetic.n_items=120", "synthetic.n_users=80", "synthetic.image_size=16", "train.max_epochs=3",
         "model.sasrec.hidden=8", "model.karma.tiny=true", "train.progress=false", "funnel.ctr_epochs=1",
         "funnel.n_boot=50", "threads=1", "models=[sasrec,action_llm:default]", "modes=[coarse]", "seeds=[0]"]
# The stated tolerance: the largest per-epoch gap in mean training loss, relative to the one-process
# curve. Under DDP a batch-mean loss becomes the mean of the two shards' means, and the LLM's in-batch
# negatives see one shard (half the batch); measured here: SASRec 0.02%, the action-only LLM 0.3% on the
# tiny random backbones (0.9% on the smoke suite's 2 real SmolLM2 blocks, which made this test take 164 s
# on an AVX2-only CPU against 35 s: DDP's mechanics do not depend on the weights), against a gap between
# two seeds of one process of up to 0.2% (SASRec) and 6% (the LLM).
TOLERANCE = {"sasrec": 0.01, "action_llm": 0.03}


def _curves(results: Path) -> dict[str, list[float]]:
    out = {}
    for path in sorted((results / "records").rglob("*.json")):
        record = json.loads(path.read_text())
        loss = "ce" if record["model"] == "sasrec" else "action"
        out[record["model"]] = ([h[loss] for h in record["selection"]["history"]], record["timing"]["processes"])
    return out


def test_two_processes_follow_the_one_process_loss_curve(tmp_path):
    def args(name):
        return ["--suite", "smoke", "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / name),
                f"leaderboard={tmp_path / name / 'leaderboard.md'}", *CHEAP]

    assert main(args("one")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "benchmark.run", *args("two")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _curves(tmp_path / "one"), _curves(tmp_path / "two")
    assert set(one) == set(two) == set(TOLERANCE)
    for model, tolerance in TOLERANCE.items():
        (single, n1), (ddp, n2) = one[model], two[model]
        assert (n1, n2) == (1, 2) and len(single) == len(ddp) == 3
        gaps = [abs(a - b) / a for a, b in zip(single, ddp, strict=True)]
        assert max(gaps) <= tolerance, (model, single, ddp)
        assert ddp != single  # two processes really split the batches (a shard's loss is not the batch's)
    assert (tmp_path / "two" / "leaderboard.md").exists()
    # rank 0 alone wrote: one record per run, and no checkpoint left behind
    assert len(list((tmp_path / "two" / "records").rglob("*.json"))) == 2
    assert not list((tmp_path / "cache" / "checkpoints").rglob("*.pt"))


@pytest.mark.parametrize("world, batch, expect", [(2, [0, 1, 2, 3, 4], [[0, 2, 4], [1, 3]]), (2, [7], [[7], [7]])])
def test_each_process_takes_its_share_of_every_batch(world, batch, expect):
    from benchmark.distributed import ShardedBatches

    assert [next(iter(ShardedBatches([batch], world, r))) for r in range(world)] == expect


def test_a_gpu_node_joins_with_gloo_while_tensors_stay_on_the_cpu(monkeypatch):
    # nccl reduces only CUDA tensors; the training tensors are on the CPU even where CUDA exists
    import torch

    from benchmark import distributed

    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: chosen.append(backend))
    assert distributed.init_from_env() and chosen == ["gloo"]


def _strict_decision(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from benchmark import distributed as D

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:  # only rank 0 saw a failure (its evaluation crashed): every process must stop with it
        Path(out, str(rank)).write_text(json.dumps([D.any_process(rank == 0), D.any_process(False)]))
    finally:
        dist.destroy_process_group()


def test_a_failure_seen_by_one_process_stops_every_process(tmp_path):
    """strict=true under torchrun: a stop decided on rank 0 alone would leave the others waiting in the
    next run's collectives, so the decision is reduced over the processes (``any_process``)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_strict_decision, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    assert [json.loads((tmp_path / str(r)).read_text()) for r in range(2)] == [[True, False], [True, False]]
