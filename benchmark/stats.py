"""Statistics over run results: the one place where the benchmark turns numbers into claims.

Choices (and why):

- **Across seeds** (``mean_ci``): a leaderboard cell is the mean over seeds with the half-width of
  the Student-t interval. With 3-5 seeds the normal approximation is far too narrow, so the t
  quantile with ``n - 1`` degrees of freedom is used; one seed has no interval (``None``).
- **Model A vs model B** (``paired_delta``): both models are scored on the *same* test
  impressions, so the comparison is paired per impression, which removes the (large) variance
  between impressions that an unpaired test over seed means would keep. Seeds are pooled first,
  by averaging each model's per-impression values over its own seeds
  (``x_i = mean_s A_s,i``, ``y_i = mean_s B_s,i``); this allows different seed counts (e.g. a
  deterministic reference run once) and makes the unit of the test the impression, of which
  there are thousands, rather than the seed, of which there are a handful. Then a paired t-test
  on ``d_i = x_i - y_i``: ``delta = mean(d)``, interval ``delta ± t_{n-1} * sd(d) / sqrt(n)``,
  two-sided p from the t distribution. By the CLT the t-test is adequate at these ``n`` even
  for bounded, skewed metrics such as NDCG. Note what it does *not* capture: the seed-to-seed
  variance of training is averaged out, not tested — the interval answers "on this test set,
  is the pooled A better than the pooled B", not "would a new training run be better".
- **Undefined values**: an impression whose metric is NaN in any seed of either model (e.g. AUC
  with no negatives) is dropped for both models, so the pairs stay pairs.
- **Many comparisons** (``holm``, ``adjust``): a table of deltas is a family of tests, so the
  p-values are corrected with Holm–Bonferroni (step-down). It controls the family-wise error
  rate under any dependence between the tests — and the tests of one table are dependent (same
  impressions, same models) — while being uniformly more powerful than plain Bonferroni.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float | None]:
    """Mean and half-width of the Student-t interval over seeds (half-width None for one value)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return mean, None
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, float(stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)) * sem


@dataclass(frozen=True)
class PairedDelta:
    """A paired comparison of one metric between two models over the same test impressions."""

    metric: str
    a: str  # label of model A
    b: str  # label of model B
    delta: float  # mean over impressions of (A - B), each model pooled over its seeds
    low: float  # lower end of the interval of delta
    high: float  # upper end of the interval of delta
    p_value: float  # two-sided, uncorrected
    n: int  # impressions kept (defined in every seed of both models)
    seeds_a: int
    seeds_b: int
    p_adjusted: float | None = None  # after the multiple-comparison correction (see ``adjust``)
    significant: bool | None = None  # p_adjusted <= alpha


def _stack(arrays: Sequence[np.ndarray], which: str) -> np.ndarray:
    """(seeds, impressions) matrix; all seeds must cover the same impressions."""
    if len(arrays) == 0:
        raise ValueError(f"paired_delta: model {which} has no seeds")
    rows = [np.asarray(arr, dtype=float) for arr in arrays]
    for s, row in enumerate(rows):
        if row.ndim != 1:
            raise ValueError(
                f"paired_delta: model {which}, seed #{s}: expected a 1-D array, got shape {row.shape}"
            )
    lengths = {row.shape[0] for row in rows}
    if len(lengths) > 1:
        raise ValueError(
            f"paired_delta: model {which} has per-impression arrays of different lengths {sorted(lengths)}; "
            "every seed must be scored on the same test impressions"
        )
    return np.stack(rows)


def paired_delta(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    *,
    metric: str,
    label_a: str,
    label_b: str,
    confidence: float = CONFIDENCE,
) -> PairedDelta:
    """Paired t-test over impressions of A - B, each model first averaged over its seeds.

    ``a`` / ``b``: one per-impression array of ``metric`` per seed, all over the same impressions
    in the same order. Impressions that are NaN in any seed of either model are dropped.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"paired_delta: confidence must be in (0, 1), got {confidence}")
    xa, xb = _stack(a, "A"), _stack(b, "B")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(
            f"paired_delta: {label_a!r} has {xa.shape[1]} impressions but {label_b!r} has {xb.shape[1]}; "
            "a paired comparison needs both scored on the same test impressions"
        )
    keep = ~(np.isnan(xa).any(axis=0) | np.isnan(xb).any(axis=0))
    test = paired_test(xa[:, keep].mean(axis=0), xb[:, keep].mean(axis=0), method="t", confidence=confidence)
    base = {"metric": metric, "a": label_a, "b": label_b, "n": test["n"], "seeds_a": len(xa), "seeds_b": len(xb)}
    return PairedDelta(delta=test["mean_diff"], low=test["low"], high=test["high"],
                       p_value=min(test["p"], 1.0), **base)  # min keeps a NaN p NaN


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[tuple[float, bool]]:
    """Holm–Bonferroni step-down: (adjusted p, significant at ``alpha``) per input, in input order.

    Adjusted ``p_(k) = max_{j <= k} min(1, (m - j + 1) * p_(j))`` over the ascending order, so the
    adjusted values are monotone in the raw ones; "significant" is ``adjusted <= alpha`` (the same
    decision as the step-down rule). NaN p-values come back as ``(nan, False)`` and are not counted
    in the family size ``m``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"holm: alpha must be in (0, 1), got {alpha}")
    p = np.asarray(p_values, dtype=float).reshape(-1)
    valid = np.flatnonzero(~np.isnan(p))
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise ValueError(f"holm: p-values must be in [0, 1], got {list(p_values)}")
    adjusted = np.full(p.shape, np.nan)
    m = valid.size
    if m:
        order = valid[np.argsort(p[valid], kind="stable")]
        scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
        adjusted[order] = np.maximum.accumulate(scaled)  # step-down: never below an earlier (smaller) one
    return [(float(q), bool(q <= alpha)) if not math.isnan(q) else (float("nan"), False) for q in adjusted]


def adjust(deltas: Sequence[PairedDelta], alpha: float = ALPHA) -> list[PairedDelta]:
    """Copies of ``deltas`` with ``p_adjusted`` / ``significant`` filled by ``holm`` over the whole list."""
    corrected = holm([d.p_value for d in deltas], alpha=alpha)
    return [
        dataclasses.replace(d, p_adjusted=q, significant=sig)
        for d, (q, sig) in zip(deltas, corrected, strict=True)
    ]


def _fmt_signed(value: float, scale: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    text = f"{value * scale:+.{digits}f}"
    # A tiny negative rounds to "-0.00", which reads like a real sign; show it as zero.
    return f"{0.0:+.{digits}f}" if float(text) == 0.0 else text


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "p=n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def format_delta(d: PairedDelta, scale: float = 100.0, digits: int = 2) -> str:
    """``+1.23 [+0.40, +2.06] p=0.004*`` (scale 100: metric points).

    The p shown is the Holm-adjusted one once ``adjust`` has run (so the number and the ``*`` agree),
    the raw one otherwise; ``*`` marks significance after correction only.
    """
    if math.isnan(d.low) or math.isnan(d.high):
        interval = "[n/a]"
    else:
        interval = f"[{_fmt_signed(d.low, scale, digits)}, {_fmt_signed(d.high, scale, digits)}]"
    p = d.p_adjusted if d.p_adjusted is not None else d.p_value
    mark = "*" if d.significant else ""
    return f"{_fmt_signed(d.delta, scale, digits)} {interval} {_fmt_p(p)}{mark}"


def paired_test(
    a: np.ndarray,
    b: np.ndarray,
    *,
    method: str = "t",
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, float]:
    """Paired comparison of two systems on the SAME impressions (or users), ``d_i = a_i - b_i``.

    Pairs where either value is NaN are dropped (``n`` reports how many remain).

    - ``method="t"`` (default): paired Student t-test, ``t = mean(d) / (sd(d) / sqrt(n))`` with
      n-1 degrees of freedom; CI = ``mean(d) ± t_{0.975, n-1} * sd(d) / sqrt(n)``; two-sided p.
    - ``method="bootstrap"``: ``n_boot`` resamples of the pairs with ``np.random.default_rng(seed)``;
      CI = the central ``confidence`` percentiles (2.5 / 97.5) of the resampled mean differences; two-sided p =
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
        # exact equality, not sd == 0: the mean of identical floats can be off by an ulp
        if np.all(d == d[0]):
            out.update(low=out["mean_diff"], high=out["mean_diff"], p=1.0 if out["mean_diff"] == 0 else 0.0)
            return out
        se = sd / np.sqrt(n)
        t = out["mean_diff"] / se
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * se)
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
        lo, hi = np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)])
        p = min(1.0, 2.0 * min(np.mean(means <= 0), np.mean(means >= 0)))
        out.update(low=float(lo), high=float(hi), p=float(p))
        return out
    raise ValueError(f"unknown method {method!r}; valid: t, bootstrap")


def per_user_mean(values: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` over each user's rows, NaNs ignored -> (sorted users, means; NaN if none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    uniq, inv = np.unique(np.asarray(users).ravel(), return_inverse=True)
    ok = ~np.isnan(v)
    cnt = np.bincount(inv[ok], minlength=uniq.size).astype(np.float64)
    tot = np.bincount(inv[ok], weights=v[ok], minlength=uniq.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return uniq, np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def paired_delta_over_users(a: np.ndarray, b: np.ndarray, users: np.ndarray, *, n_boot: int = 10_000,
                            seed: int = 0) -> dict[str, float]:
    """Delta ``a - b`` of two systems on the same rows, 95 % interval bootstrapped over users.

    ``d_u = mean_u(a) - mean_u(b)`` per user (``per_user_mean``), then
    ``paired_test(method="bootstrap")`` over the users. Also returns the
    impression-weighted headline ``delta = nanmean(a) - nanmean(b)`` (rows where either is NaN dropped).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    both = ~(np.isnan(a) | np.isnan(b))
    _, ua = per_user_mean(np.where(both, a, np.nan), users)
    _, ub = per_user_mean(np.where(both, b, np.nan), users)
    out = paired_test(ua, ub, method="bootstrap", n_boot=n_boot, seed=seed)
    out["delta"] = float(a[both].mean() - b[both].mean()) if both.any() else float("nan")
    return out
