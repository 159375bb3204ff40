"""What every funnel stage shares: the catalog-scaled K, the candidate set, the one pessimistic
rank rule and the per-user paired interval (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from benchmark.metrics import pessimistic_ranks  # noqa: F401  (the one tie rule, re-exported for the stages)


# ============================================================================ shared pieces
def prerank_k(n_items: int) -> int:
    """Pre-ranking cut-off ``K = min(N, max(10, ceil(0.01 * N)))`` (the paper's HR@500 at N = 50k)."""
    return int(min(n_items, max(10, math.ceil(0.01 * n_items))))


def _arrays(seq) -> list[np.ndarray]:
    return [np.asarray(h if h is not None else [], dtype=np.int64).ravel() for h in seq]


def candidate_mask(histories: Sequence, targets: np.ndarray, n_items: int) -> np.ndarray:
    """(B, N) bool, True = candidate: the catalog minus the row's history, the target never masked."""
    targets = np.asarray(targets, dtype=np.int64)
    valid = np.ones((len(targets), n_items), dtype=bool)
    for r, h in enumerate(_arrays(histories)):
        valid[r, h[h != targets[r]]] = False
    return valid

