"""What every funnel stage shares: the catalog-scaled K, the candidate set, the one pessimistic
rank rule and the per-user paired interval (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


# ============================================================================ shared pieces
def prerank_k(n_items: int) -> int:
    """Pre-ranking cut-off ``K = min(N, max(10, ceil(0.01 * N)))`` (the paper's HR@500 at N = 50k)."""
    return int(min(n_items, max(10, math.ceil(0.01 * n_items))))


def recall_k(n_items: int) -> int:
    """Recall cut-off ``K = min(N, max(10, ceil(0.10 * N)))`` (the paper's HR@5000 at N = 50k)."""
    return int(min(n_items, max(10, math.ceil(0.10 * n_items))))


def _arrays(seq) -> list[np.ndarray]:
    return [np.asarray(h if h is not None else [], dtype=np.int64).ravel() for h in seq]


def candidate_mask(histories: Sequence, targets: np.ndarray, n_items: int) -> np.ndarray:
    """(B, N) bool, True = candidate: the catalog minus the row's history, the target never masked."""
    targets = np.asarray(targets, dtype=np.int64)
    valid = np.ones((len(targets), n_items), dtype=bool)
    for r, h in enumerate(_arrays(histories)):
        valid[r, h[h != targets[r]]] = False
    return valid


def pessimistic_ranks(scores: np.ndarray, targets: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Target rank under the one tie rule of ``benchmark.metrics``: ``#{j in C : s_j >= s_t}``.

    ``scores`` (B, N); ``valid`` (B, N) marks the candidate set C (None = all items; the target is
    always a candidate). A NaN target score gets the worst rank ``|C|``. Returns int64 (B,), 1-based.
    """
    s = np.asarray(scores, dtype=np.float64)
    b, n = s.shape
    t = np.asarray(targets, dtype=np.int64)
    v = np.ones((b, n), dtype=bool) if valid is None else np.array(valid, dtype=bool, copy=True)
    v[np.arange(b), t] = True
    st = s[np.arange(b), t]
    with np.errstate(invalid="ignore"):
        r = np.count_nonzero(v & (s >= st[:, None]), axis=1)
    return np.where(np.isnan(st), v.sum(axis=1), r).astype(np.int64)
