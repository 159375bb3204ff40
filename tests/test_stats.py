"""benchmark.stats: hand-computed paired deltas, Holm correction and the formatting of a delta."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as sps

from benchmark.stats import PairedDelta, adjust, format_delta, holm, mean_ci, paired_delta

# d = X - Y = [0.1, 0.3, -0.1, 0.4]: mean 0.175, sum of squared deviations
# 0.075² + 0.125² + 0.275² + 0.225² = 0.1475, so sd = sqrt(0.1475 / 3), sem = sd / 2, t = 0.175 / sem.
X = np.array([0.5, 0.7, 0.2, 0.9])
Y = np.array([0.4, 0.4, 0.3, 0.5])
SD = math.sqrt(0.1475 / 3)
T_CRIT_3 = 3.1824463052837078  # t_{0.975, df=3}, from tables
P_HAND = 0.21257296315231972  # 2 * P(T_3 > 0.175 / (SD / 2)) = 2 * P(T_3 > 1.5785)


def _delta(a, b, **kw) -> PairedDelta:
    return paired_delta(a, b, metric="NDCG@10", label_a="A", label_b="B", **kw)


# --------------------------------------------------------------------------- mean_ci


def test_mean_ci_by_hand_and_against_scipy():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3))  # t_{0.975, 2} * sd 1 / sqrt 3
    assert mean_ci([1.0, 2.0, 3.0], 0.9)[1] == pytest.approx(2.919985580353724 / math.sqrt(3))  # t_{0.95, 2}
    # 0.31, 0.29, 0.35, 0.30: mean 0.3125, squared deviations sum 0.002075, sd sqrt(0.002075 / 3)
    values = [0.31, 0.29, 0.35, 0.30]
    sem = math.sqrt(0.002075 / 3) / 2
    for conf in (0.8, 0.9, 0.95, 0.99):
        low, high = sps.t.interval(conf, df=3, loc=0.3125, scale=sem)  # scipy's own two-sided interval
        mean, half = mean_ci(values, conf)
        assert (mean - half, mean + half) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert mean_ci([0.4]) == (0.4, None)
    with pytest.raises(ValueError):
        mean_ci([])


# --------------------------------------------------------------------------- paired_delta


def test_paired_delta_by_hand():
    r = _delta([X], [Y])
    assert r.delta == pytest.approx(0.175)
    half = T_CRIT_3 * SD / 2
    assert (r.low, r.high) == (pytest.approx(0.175 - half), pytest.approx(0.175 + half))
    assert r.p_value == pytest.approx(P_HAND)
    assert r.p_value == pytest.approx(sps.ttest_rel(X, Y).pvalue)
    assert (r.n, r.seeds_a, r.seeds_b, r.metric, r.a, r.b) == (4, 1, 1, "NDCG@10", "A", "B")
    assert (r.p_adjusted, r.significant) == (None, None)
    # Swapping the models flips the sign, keeps the p.
    s = _delta([Y], [X])
    assert (s.delta, s.low, s.high) == (pytest.approx(-0.175), pytest.approx(-r.high), pytest.approx(-r.low))
    assert s.p_value == pytest.approx(r.p_value)


def test_paired_delta_confidence_changes_only_the_interval():
    r = _delta([X], [Y], confidence=0.9)
    half = sps.t.ppf(0.95, 3) * SD / 2
    assert r.high - r.delta == pytest.approx(half)
    assert r.p_value == pytest.approx(P_HAND)


def test_paired_delta_pools_seeds_by_averaging_per_impression():
    a_seeds = [np.array([0.4, 0.8, 0.2, 1.0]), np.array([0.6, 0.6, 0.2, 0.8])]  # per-impression mean == X
    b_seeds = [Y - 0.05, Y + 0.05, Y]  # mean == Y
    pooled = _delta(a_seeds, b_seeds)
    single = _delta([X], [Y])
    assert pooled.delta == pytest.approx(single.delta)
    assert pooled.low == pytest.approx(single.low) and pooled.high == pytest.approx(single.high)
    assert pooled.p_value == pytest.approx(single.p_value)
    assert (pooled.n, pooled.seeds_a, pooled.seeds_b) == (4, 2, 3)
    # Not the same as treating seeds as extra impressions (8 pairs would give a different test).
    stacked = sps.ttest_rel(np.concatenate(a_seeds), np.concatenate([Y, Y]))
    assert pooled.p_value != pytest.approx(stacked.pvalue)


def test_paired_delta_drops_nan_impressions_pairwise():
    nan = float("nan")
    # Impression 4 is undefined in one seed of A, impression 5 in B: both dropped for both models.
    a = [np.append(X, [nan, 0.9]), np.append(X, [0.1, 0.9])]
    b = [np.append(Y, [0.2, nan])]
    r = _delta(a, b)
    ref = _delta([X], [Y])
    assert r.n == 4
    assert (r.delta, r.p_value) == (pytest.approx(ref.delta), pytest.approx(ref.p_value))
    assert (r.low, r.high) == (pytest.approx(ref.low), pytest.approx(ref.high))


def test_paired_delta_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same test impressions"):
        _delta([X], [np.append(Y, 0.1)])
    with pytest.raises(ValueError, match="different lengths"):
        _delta([X, X[:3]], [Y])
    with pytest.raises(ValueError, match="no seeds"):
        _delta([], [Y])


def test_paired_delta_zero_variance():
    x = np.array([1.0, 2.0, 3.0])
    r = _delta([x], [x - 0.5])  # every d is exactly 0.5
    assert (r.delta, r.low, r.high, r.p_value) == (0.5, 0.5, 0.5, 0.0)
    same = _delta([x], [x])
    assert (same.delta, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_delta_too_few_impressions():
    nan = float("nan")
    one = _delta([np.array([0.7, nan])], [np.array([0.2, 0.3])])
    assert one.n == 1 and one.delta == pytest.approx(0.5)
    assert math.isnan(one.low) and math.isnan(one.high) and math.isnan(one.p_value)
    none = _delta([np.array([nan])], [np.array([0.2])])
    assert none.n == 0 and math.isnan(none.delta) and math.isnan(none.p_value)


# --------------------------------------------------------------------------- holm


def test_holm_textbook_example():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06.
    out = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert [q for q, _ in out] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [s for _, s in out] == [True, False, False, True]
    # Plain per-test alpha would have called all four significant; a looser alpha takes all.
    assert [s for _, s in holm([0.01, 0.04, 0.03, 0.005], alpha=0.07)] == [True, True, True, True]


def test_holm_monotone_and_capped():
    rng = np.random.default_rng(0)
    p = list(rng.uniform(0, 1, 20) ** 3)
    adjusted = [q for q, _ in holm(p)]
    order = np.argsort(p)
    assert all(np.diff(np.asarray(adjusted)[order]) >= 0)  # same order as the raw p-values
    assert all(q >= raw for q, raw in zip(adjusted, p, strict=True))
    assert all(q <= 1.0 for q in adjusted)
    assert holm([0.5, 0.6]) == [(1.0, False), (1.0, False)]  # 2 * 0.5 = 1.0; 0.6 raised to 1.0
    assert holm([]) == []


def test_holm_nan_passes_through_and_does_not_count():
    out = holm([0.01, float("nan"), 0.04])
    assert math.isnan(out[1][0]) and out[1][1] is False
    assert (out[0], out[2]) == ((pytest.approx(0.02), True), (pytest.approx(0.04), True))  # family of 2


def test_holm_rejects_invalid_p():
    with pytest.raises(ValueError):
        holm([0.5, 1.5])


def test_adjust_fills_copies():
    base = PairedDelta("NDCG@10", "A", "B", 0.01, 0.0, 0.02, 0.01, 100, 3, 1)
    deltas = [dataclasses.replace(base, p_value=p) for p in (0.01, 0.04, 0.03, 0.005)]
    out = adjust(deltas)
    assert [d.p_adjusted for d in out] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [d.significant for d in out] == [True, False, False, True]
    assert all(d.p_adjusted is None and d.significant is None for d in deltas)  # inputs untouched
    assert [d.p_value for d in out] == [0.01, 0.04, 0.03, 0.005]


# --------------------------------------------------------------------------- format_delta


def test_format_delta():
    d = PairedDelta("NDCG@10", "A", "B", 0.0123, 0.0040, 0.0206, 0.004, 500, 3, 1)
    assert format_delta(d) == "+1.23 [+0.40, +2.06] p=0.004"  # not corrected yet: no mark
    assert format_delta(dataclasses.replace(d, p_adjusted=0.004, significant=True)) == (
        "+1.23 [+0.40, +2.06] p=0.004*"
    )
    # After correction the adjusted p is shown, and no mark when it is not significant.
    assert format_delta(dataclasses.replace(d, p_adjusted=0.12, significant=False)) == (
        "+1.23 [+0.40, +2.06] p=0.120"
    )
    neg = PairedDelta("AUC", "A", "B", -0.015, -0.0301, -0.00004, 0.0002, 500, 3, 3, 0.0008, True)
    assert format_delta(neg) == "-1.50 [-3.01, +0.00] p<0.001*"  # -0.004 rounds to zero: no "-0.00"
    assert format_delta(neg, scale=1.0, digits=3) == "-0.015 [-0.030, +0.000] p<0.001*"


def test_format_delta_nan():
    nan = float("nan")
    one = PairedDelta("NDCG@10", "A", "B", 0.5, nan, nan, nan, 1, 1, 1)
    assert format_delta(one) == "+50.00 [n/a] p=n/a"
    assert format_delta(adjust([one])[0]) == "+50.00 [n/a] p=n/a"
    empty = PairedDelta("NDCG@10", "A", "B", nan, nan, nan, nan, 0, 1, 1)
    assert format_delta(empty) == "n/a [n/a] p=n/a"
