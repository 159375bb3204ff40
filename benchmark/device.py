"""Where a run computes: ``device=cpu`` (the default; every committed record), ``cuda`` or ``auto``.

A model is built on the CPU (weights load there), then moved whole to the run's device; its batches
follow it (``to_device``), its random draws stay on the CPU generators the harness hands it (drawn
there, then moved: the same draws on every device), and what leaves it for evaluation (embeddings,
attention) comes back to the CPU, where faiss and the metrics run. Under ``torchrun`` each process
takes the GPU of its local rank.
"""

from __future__ import annotations

import os

import torch

DEVICE_CHOICES = ("cpu", "cuda", "auto")


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX). Without it PyTorch emulates
    them: on an AVX2-only AMD EPYC (2026-12-02), one decoder-shaped linear layer's forward and backward ran
    10x slower under bf16 autocast than in fp32 (0.75 against 7.5 steps/s, one thread on a quiet core;
    ``python -m benchmark.preset_checks bf16_speed``, ``results/preset_bf16_speed_emulated.json``). On an
    Intel Xeon (model 207) whose flags list AVX512 but neither of the two (2026-12-07), a KARMA training
    step ran 2.9x slower under bf16 autocast than in fp32 (36.3 against 12.6 s, synthetic@300users, one thread
    each, the two side by side;
    ``results/step_time_cpu_{emulated_bf16,fp32}_synthetic@300users.json``).
    The same seed can give other bits with and without them, so every record says which (``machine.environment``)."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def check(name: str) -> None:
    """Raise at composition for a name that is not a choice, or for cuda on a machine without one."""
    base = name.split(":", 1)[0]
    if base not in DEVICE_CHOICES or (base != "cuda" and ":" in name):
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}, but torch sees no CUDA device here (torch {torch.__version__}); "
                         "use device=cpu or device=auto")


def resolve(name: str) -> torch.device:
    """The torch device ``name`` means here: ``auto`` is cuda when there is one; a plain ``cuda`` under
    torchrun is the local rank's GPU."""
    check(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def place(model, name: str):
    """``model`` moved to the device ``name`` resolves to (a model that is not an ``nn.Module``, e.g. a
    no-learning rule, stays where it is); returns that device."""
    device = resolve(name)
    if isinstance(model, torch.nn.Module):
        model.to(device)
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that a clock read after it times the work (CUDA runs
    asynchronously; a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (the CPU for a module without any)."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def to_device(batch, device: torch.device):
    """A collated batch (a dict of tensors and other values) with its tensors on ``device``."""
    if isinstance(batch, dict):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch
