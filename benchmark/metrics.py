"""Ranking metrics of the benchmark (DESIGN.md §4), as pure functions on numpy arrays.

Every metric is defined once here and tested against hand-computed cases in
``tests/test_metrics.py``; ``benchmark.evaluate`` only produces the inputs (ranks, scores).

Candidates
    For an impression with target item ``t`` and history ``H`` the candidates are the full
    catalog minus the history items, ``C = {0..N-1} \\ (H \\ {t})``: the history is masked, the
    target itself is never masked (even when it also appears in the history). Metrics are over
    the full catalog, never over sampled negatives.

Tie rule (the ONE rule, used by every metric and by the evaluator)
    The target's rank is pessimistic::

        rank = 1 + #{ j in C, j != t : s_j >= s_t }

    so every candidate scored equal to the target is ranked above it. A constant scorer gets
    ``rank = |C|`` (the number of candidates), never a lucky hit. A NaN target score gets the
    worst rank ``|C|`` as well. In top-K *lists* (JS@K, retrieval) exactly-tied scores are
    ordered by item index ascending; that order never affects a rank.

Summaries
    ``hit_rate``, ``ndcg`` and ``mrr`` return one value per impression; the reported number is
    the plain mean over impressions. ``gauc`` and ``jaccard_at_k`` document their own averaging.
    Intervals across seeds and paired tests live in ``benchmark.stats``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "hit_rate",
    "ndcg",
    "mrr",
    "pessimistic_ranks",
    "auc_vs_negatives",
    "gauc",
    "jaccard",
    "jaccard_at_k",
]


def pessimistic_ranks(scores: np.ndarray, targets: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Target rank under the project's one tie rule: ``#{j in C : s_j >= s_t}`` (pessimistic: a
    tie with the target counts against it).

    ``scores`` (B, N); ``valid`` (B, N) marks the candidate set C (None = all items; the target is
    always a candidate). A NaN target score gets the worst rank ``|C|``. Returns int64 (B,), 1-based.
    """
    s = np.asarray(scores)  # float32 stays float32: the evaluator's hot loop
    b, n = s.shape
    t = np.asarray(targets, dtype=np.int64)
    v = np.ones((b, n), dtype=bool) if valid is None else np.array(valid, dtype=bool, copy=True)
    v[np.arange(b), t] = True
    st = s[np.arange(b), t]
    with np.errstate(invalid="ignore"):
        r = np.count_nonzero(v & (s >= st[:, None]), axis=1)
    return np.where(np.isnan(st), v.sum(axis=1), r).astype(np.int64)


def _ranks(ranks: np.ndarray) -> np.ndarray:
    r = np.asarray(ranks)
    if r.size and (r < 1).any():
        raise ValueError("ranks are 1-based: every rank must be >= 1")
    return r


def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    """HR@K (= Recall@K with one relevant item), per impression.

    ``HR@K_i = 1 if rank_i <= K else 0`` (float64 array); the summary is the mean.
    """
    r = _ranks(ranks)
    return (r <= k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@K with a single relevant item (ideal DCG = 1), per impression.

    ``NDCG@K_i = 1 / log2(rank_i + 1) if rank_i <= K else 0``; the summary is the mean.
    """
    r = _ranks(ranks).astype(np.float64)
    return np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)


def mrr(ranks: np.ndarray) -> np.ndarray:
    """Reciprocal rank over the full candidate list (no cut-off), per impression.

    ``RR_i = 1 / rank_i``; the summary (MRR) is the mean.
    """
    r = _ranks(ranks).astype(np.float64)
    return 1.0 / r


def auc_vs_negatives(target_score: float, negative_scores: np.ndarray) -> float:
    """AUC of one clicked item against its impression's exposed-but-unclicked negatives.

    ``AUC = ( #{n : s_n < s_t} + 0.5 * #{n : s_n == s_t} ) / #negatives``

    (ties count one half: this is the AUC definition, unlike the pessimistic *rank* rule).
    Returns NaN when there are no negatives.
    """
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    if neg.size == 0:
        return float("nan")
    t = float(target_score)
    below = np.count_nonzero(neg < t)
    ties = np.count_nonzero(neg == t)
    return float((below + 0.5 * ties) / neg.size)


def gauc(per_impression_auc: np.ndarray, users: np.ndarray) -> float:
    """Group AUC: per-user mean AUC, averaged over users weighted by their impression counts.

    Let ``I_u`` be user u's impressions with at least one negative (a NaN AUC marks an
    impression without negatives; those are excluded everywhere) and ``n_u = |I_u|``::

        AUC_u = mean_{i in I_u} AUC_i
        gAUC  = sum_u n_u * AUC_u / sum_u n_u          (users with n_u = 0 drop out)

    Weighting by impressions (not one vote per user) is the DIN / industry convention. Note
    that with this weighting gAUC equals the mean of AUC_i over all impressions that have
    negatives; the per-user grouping matters only for the per-user arrays used in paired tests.
    Returns NaN when no impression has negatives.
    """
    auc = np.asarray(per_impression_auc, dtype=np.float64).ravel()
    users = np.asarray(users).ravel()
    if auc.shape != users.shape:
        raise ValueError(f"auc and users differ in length: {auc.shape} vs {users.shape}")
    ok = ~np.isnan(auc)
    if not ok.any():
        return float("nan")
    _, inv = np.unique(users[ok], return_inverse=True)
    n_u = np.bincount(inv).astype(np.float64)
    auc_u = np.bincount(inv, weights=auc[ok]) / n_u
    return float(np.sum(n_u * auc_u) / np.sum(n_u))


def jaccard(a: set, b: set) -> float:
    """Term-level Jaccard ``|A ∩ B| / |A ∪ B|``; two empty sets give 0 (no evidence of overlap)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def jaccard_at_k(target_terms: set, retrieved_terms: Sequence[set]) -> float:
    """JS@K: mean term-level Jaccard between the target's terms and each retrieved item's terms.

    ``JS@K = (1 / K') * sum_{j in top-K} |A ∩ B_j| / |A ∪ B_j|`` where ``A`` is the target
    item's term set, ``B_j`` the j-th retrieved item's term set, and ``K'`` the number of items
    actually passed (the caller passes the top-K list; fewer when the catalog has fewer than K
    candidates). A pair of empty sets counts as 0. Returns NaN for an empty list.
    """
    if len(retrieved_terms) == 0:
        return float("nan")
    a = target_terms if isinstance(target_terms, (set, frozenset)) else set(target_terms)
    return float(np.mean([jaccard(a, b) for b in retrieved_terms]))
