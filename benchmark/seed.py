"""One function seeds everything; samplers get explicit generators, never the global RNG."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch, and return a torch generator for data order and sampling."""
    random.seed(seed)
    np.random.seed(seed)  # only for third-party code that insists on the global RNG
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
