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
    Across seeds, ``mean_ci95`` gives the mean and a Student-t 95 % interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = [
    "hit_rate",
    "ndcg",
    "mrr",
    "auc_vs_negatives",
    "gauc",
    "jaccard",
    "jaccard_at_k",
    "mean_ci95",
    "paired_bootstrap_or_t",
]


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


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """Mean and Student-t 95 % confidence interval over seeds.

    ``mean ± t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation (ddof=1).
    n = 1 gives ``(x, nan, nan)``; n = 0 gives all NaN. NaNs are NOT dropped: a missing seed
    makes the whole cell NaN (incomplete cells are shown as missing, never averaged in).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        return (float("nan"), float("nan"), float("nan"))
    m = float(np.mean(v))
    if n == 1 or np.isnan(m):
        return (m, float("nan"), float("nan"))
    half = float(stats.t.ppf(0.975, n - 1) * np.std(v, ddof=1) / np.sqrt(n))
    return (m, m - half, m + half)


def paired_bootstrap_or_t(
    a: np.ndarray,
    b: np.ndarray,
    *,
    method: str = "t",
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired comparison of two systems on the SAME impressions (or users), ``d_i = a_i - b_i``.

    Pairs where either value is NaN are dropped (``n`` reports how many remain).

    - ``method="t"`` (default): paired Student t-test, ``t = mean(d) / (sd(d) / sqrt(n))`` with
      n-1 degrees of freedom; CI = ``mean(d) ± t_{0.975, n-1} * sd(d) / sqrt(n)``; two-sided p.
    - ``method="bootstrap"``: ``n_boot`` resamples of the pairs with ``np.random.default_rng(seed)``;
      CI = 2.5 / 97.5 percentiles of the resampled mean differences; two-sided p =
      ``min(1, 2 * min(P(mean* <= 0), P(mean* >= 0)))``.

    Returns ``{"mean_diff", "low", "high", "p", "t", "n"}`` (``t`` is NaN for the bootstrap).
    With n < 2 only ``mean_diff`` (NaN for n = 0) and ``n`` are set, the rest NaN. With zero
    variance of ``d`` the t-test's CI collapses to ``mean(d)`` and p is 1 (all d = 0) or 0.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in length: {a.shape} vs {b.shape}")
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    n = int(d.size)
    nan = float("nan")
    out = {"mean_diff": float(d.mean()) if n else nan, "low": nan, "high": nan, "p": nan, "t": nan, "n": n}
    if n < 2:
        return out
    if method == "t":
        sd = float(np.std(d, ddof=1))
        if sd == 0.0:
            out.update(low=out["mean_diff"], high=out["mean_diff"], p=1.0 if out["mean_diff"] == 0 else 0.0)
            return out
        se = sd / np.sqrt(n)
        t = out["mean_diff"] / se
        half = float(stats.t.ppf(0.975, n - 1) * se)
        out.update(
            low=out["mean_diff"] - half,
            high=out["mean_diff"] + half,
            t=float(t),
            p=float(2.0 * stats.t.sf(abs(t), n - 1)),
        )
        return out
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = np.empty(n_boot, dtype=np.float64)
        chunk = max(1, 2_000_000 // n)
        for s in range(0, n_boot, chunk):
            e = min(n_boot, s + chunk)
            idx = rng.integers(0, n, size=(e - s, n))
            means[s:e] = d[idx].mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        p = min(1.0, 2.0 * min(np.mean(means <= 0), np.mean(means >= 0)))
        out.update(low=float(lo), high=float(hi), p=float(p))
        return out
    raise ValueError(f"unknown method {method!r}; valid: t, bootstrap")
