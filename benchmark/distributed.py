"""Data-parallel training through PyTorch DDP, for a suite started under ``torchrun``.

    torchrun --standalone --nproc_per_node 2 -m benchmark.run --suite smoke threads=1

Every process runs the same plan on the same data; each optimiser step splits the one-process batch
between the processes (rank r takes examples r, r + W, ... of it), ``DistributedDataParallel`` averages
the gradients, and every process applies the same update, so the weights stay identical. Rank 0 alone
takes the file locks and writes records, search files, checkpoints, figures and the leaderboard; the
others follow its decisions (``agree``). Backend: ``gloo``, on a GPU node too (``device=cuda``: each
process takes its local rank's GPU, ``benchmark.device``): gloo reduces CUDA tensors as well as the CPU
ones the harness exchanges (losses, decisions), where ``nccl`` takes CUDA tensors only; a mixed
``cpu:gloo,cuda:nccl`` group would be faster on GPUs but has not been run here (no GPU was lent).

What differs from one process: a loss that is a mean over the batch becomes the mean of the shards'
means (equal when the shards are equal in size), and a loss that uses the batch itself (in-batch
negatives) sees each shard's examples only. Validation runs in every process (identical weights give
identical values), so the stopping rule agrees without communication.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

BACKEND = "gloo"  # reduces CPU and CUDA tensors alike (module doc)


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1); True if
    this process is one of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend=BACKEND)
    return True


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def main_lock(lock):
    """``lock`` (a context manager) on rank 0, nothing elsewhere: a follower never waits on a lock
    that rank 0 holds while it needs the follower for its gradients."""
    return lock if is_main() else contextlib.nullcontext()


def main_first():
    """Iterate once per turn: rank 0's turn, then (after a barrier) every other rank's, so a cache rank
    0 writes is there when the others read it. ``for _ in main_first(): <body>`` runs the body once per
    process either way."""
    if world_size() == 1:
        yield
        return
    if is_main():
        yield
    dist.barrier()
    if not is_main():
        yield
    dist.barrier()


def agree(value):
    """Rank 0's ``value`` in every process (any picklable object); ``value`` itself in one process."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true in any process (``flag`` itself in one process): a decision every process
    must take together although only some saw its cause (e.g. rank 0's evaluation failed)."""
    if world_size() == 1:
        return flag
    box = torch.tensor([int(flag)])
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the processes (an epoch's loss terms: the whole batch's, not one shard's)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    total = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(total)
    return {k: float(v) / world_size() for k, v in zip(keys, total.tolist(), strict=True)}


class ShardedBatches(Sampler):
    """This process's share of each batch of ``batches`` (a batch sampler every process builds from the
    same seed): examples ``rank, rank + W, ...``. A batch smaller than the world goes whole to every
    process (each then computes the same gradient, so the average is that batch's)."""

    def __init__(self, batches, world: int, rank_: int):
        self.batches, self.world, self.rank = batches, world, rank_

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.rank::self.world] if len(batch) >= self.world else batch

    def __len__(self) -> int:
        return len(self.batches)


class _Losses(nn.Module):
    """``model.losses`` as a module's forward, so DDP can wrap it (its hooks fire on the backward of
    what its forward returned)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, generator):
        return self.model.losses(batch, generator)


def loss_function(model):
    """``model.losses`` in one process; through ``DistributedDataParallel`` in several (trainable
    parameters that a step leaves unused, e.g. a head whose loss term is off for a batch, are allowed)."""
    if world_size() == 1 or not isinstance(model, nn.Module):
        return model.losses
    return nn.parallel.DistributedDataParallel(_Losses(model), find_unused_parameters=True, broadcast_buffers=False)
