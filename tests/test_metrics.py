"""Hand-computed cases for every metric (DESIGN.md §4) and the full-catalog evaluator."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark import metrics as M
from benchmark import stats as S
from benchmark.evaluate import evaluate, retrieve_topk, summarize

EMPTY = np.zeros(0, dtype=np.int64)


def _imps(targets, histories=None, exposures=None, users=None) -> pd.DataFrame:
    n = len(targets)
    arr = lambda xs: [np.asarray(x, dtype=np.int64) for x in xs]  # noqa: E731
    return pd.DataFrame(
        {
            "user": users if users is not None else list(range(n)),
            "history": arr(histories) if histories is not None else [EMPTY] * n,
            "target": targets,
            "exposures": arr(exposures) if exposures is not None else [EMPTY] * n,
        }
    )


# 1-D embeddings: the user vector [1] scores item i with item_emb[i].
SCORES5 = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]], dtype=np.float32)


# ---------------------------------------------------------------- rank-based metrics
def test_rank_metrics_by_hand():
    ranks = np.array([1, 2, 3, 11])
    assert M.hit_rate(ranks, 1).tolist() == [1, 0, 0, 0]
    assert M.hit_rate(ranks, 2).tolist() == [1, 1, 0, 0]
    nd = M.ndcg(ranks, 2)
    assert nd == pytest.approx([1.0, 1 / math.log2(3), 0.0, 0.0])
    assert M.ndcg(ranks, 10)[2] == pytest.approx(0.5)  # 1/log2(4)
    assert M.mrr(ranks) == pytest.approx([1.0, 0.5, 1 / 3, 1 / 11])
    with pytest.raises(ValueError):
        M.hit_rate(np.array([0]), 1)


def test_evaluate_tiny_catalog_by_hand():
    # scores 5,4,3,2,1; targets 2 (rank 3) and 1 (rank 2)
    res = evaluate(SCORES5, np.ones((2, 1), np.float32), _imps([2, 1]), ks=(1, 2), js_k=2)
    assert res.per_impression["rank"].tolist() == [3, 2]
    m = res.metrics
    assert m["HR@1"] == 0.0
    assert m["HR@2"] == pytest.approx(0.5)
    assert m["NDCG@2"] == pytest.approx((0 + 1 / math.log2(3)) / 2)
    assert m["MRR"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["n"] == 2
    assert np.isnan(m["gAUC"]) and np.isnan(m["JS@2"])  # no exposures, no text


def test_history_masking():
    # item 0 (score 5) is in the history: masked, so target 2 moves from rank 3 to rank 2
    res = evaluate(SCORES5, np.ones((1, 1), np.float32), _imps([2], histories=[[0]]), ks=(2,))
    assert res.per_impression["rank"].tolist() == [2]
    assert res.metrics["HR@2"] == 1.0
    assert res.metrics["NDCG@2"] == pytest.approx(1 / math.log2(3))
    # the target itself is never masked, even when it appears in the history
    res = evaluate(SCORES5, np.ones((1, 1), np.float32), _imps([2], histories=[[2, 0, 0]]), ks=(2,))
    assert res.per_impression["rank"].tolist() == [2]


def test_ties_are_pessimistic():
    emb = np.array([[3.0], [3.0], [1.0]], np.float32)
    res = evaluate(emb, np.ones((2, 1), np.float32), _imps([1, 0]), ks=(1,))
    # each tied item counts against the target, whichever index it has
    assert res.per_impression["rank"].tolist() == [2, 2]
    assert res.metrics["HR@1"] == 0.0


def test_constant_scorer_gets_last_rank():
    n_items = 6
    emb = np.zeros((n_items, 4), np.float32)
    res = evaluate(emb, np.ones((1, 4), np.float32), _imps([3], histories=[[0, 5]]), ks=(3, 4))
    assert res.per_impression["rank"].tolist() == [4]  # 6 items - 2 masked = 4 candidates
    assert res.metrics["HR@3"] == 0.0 and res.metrics["HR@4"] == 1.0
    # top-K list of a constant scorer: item index ascending, history excluded
    _, ids = retrieve_topk(emb, np.ones((1, 4), np.float32), [np.array([0, 5])], 3)
    assert ids.tolist() == [[1, 2, 3]]


def test_two_item_catalog_and_padding():
    emb = np.array([[1.0], [2.0]], np.float32)
    res = evaluate(emb, np.ones((1, 1), np.float32), _imps([0], histories=[[1]]), ks=(1,), js_k=3)
    assert res.per_impression["rank"].tolist() == [1]
    assert res.topk.tolist() == [[0, -1, -1]]  # one candidate, padded with -1


# ---------------------------------------------------------------- AUC / gAUC
def test_auc_vs_negatives_by_hand():
    assert M.auc_vs_negatives(0.5, np.array([0.1, 0.5, 0.9])) == pytest.approx((1 + 0.5) / 3)
    assert M.auc_vs_negatives(1.0, np.array([0.0, 0.0])) == 1.0
    assert M.auc_vs_negatives(0.0, np.array([1.0])) == 0.0
    assert math.isnan(M.auc_vs_negatives(1.0, np.array([])))


def test_gauc_weighting_by_hand():
    auc = np.array([1.0, 0.5, 0.0, 1.0, np.nan])
    users = np.array([7, 7, 7, 9, 9])
    # user 7: mean 0.5 over 3 impressions; user 9: mean 1.0 over 1 (its NaN impression is excluded)
    assert M.gauc(auc, users) == pytest.approx((3 * 0.5 + 1 * 1.0) / 4)  # 0.625, not 0.75
    assert math.isnan(M.gauc(np.array([np.nan]), np.array([0])))


def test_evaluate_gauc_with_ties():
    # target 2 scores 3; exposures score 5 (above), 3 (tie: 0.5), 1 (below); target in exposures is dropped
    res = evaluate(
        SCORES5,
        np.ones((3, 1), np.float32),
        _imps([2, 2, 0], exposures=[[0, 4], [2, 4], []], users=[0, 0, 1]),
    )
    auc = res.per_impression["auc"]
    assert auc[0] == pytest.approx(0.5)  # one above, one below
    assert auc[1] == pytest.approx(1.0)  # target dropped from its own exposures
    assert np.isnan(auc[2])
    tie = evaluate(
        np.array([[3.0], [3.0]], np.float32), np.ones((1, 1), np.float32), _imps([0], exposures=[[1]])
    )
    assert tie.per_impression["auc"].tolist() == [0.5]
    assert res.metrics["gAUC"] == pytest.approx(0.75)  # only user 0 has exposures


# ---------------------------------------------------------------- JS@K
def test_jaccard_at_k_by_hand():
    a = {"red", "wool", "scarf"}
    got = M.jaccard_at_k(a, [{"red", "scarf"}, {"blue"}, set(), {"red", "wool", "scarf"}])
    assert got == pytest.approx((2 / 3 + 0 + 0 + 1) / 4)
    assert M.jaccard(set(), set()) == 0.0  # both empty counts as 0
    assert math.isnan(M.jaccard_at_k(a, []))


def test_evaluate_js():
    terms = [{"a", "b"}, {"a"}, {"c"}, {"a", "b", "c"}, set()]
    # scores 5..1; target 3; top-2 with item 0 masked = items 1, 2
    res = evaluate(
        SCORES5,
        np.ones((1, 1), np.float32),
        _imps([3], histories=[[0]]),
        ks=(2,),
        js_k=2,
        item_terms=terms,
    )
    assert res.topk.tolist() == [[1, 2]]
    assert res.per_impression["js"][0] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert res.metrics["JS@2"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- faiss vs brute force
def _brute_topk(item_emb, user_emb, histories, k):
    s = user_emb.astype(np.float64) @ item_emb.T.astype(np.float64)
    out = np.full((len(user_emb), k), -1, dtype=np.int64)
    for i, h in enumerate(histories):
        row = s[i].copy()
        row[h] = -np.inf
        ids = np.arange(len(row))[np.isfinite(row)]
        order = ids[np.lexsort((ids, -row[ids]))][:k]
        out[i, : order.size] = order
    return out


@pytest.mark.parametrize("n_items,k", [(40, 5), (40, 60), (300, 20), (2, 1)])
def test_faiss_topk_equals_bruteforce_with_ties_and_masking(n_items, k):
    rng = np.random.default_rng(n_items + k)
    # small integer embeddings: exact float32 dot products with many exact ties
    item_emb = rng.integers(-1, 2, size=(n_items, 3)).astype(np.float32)
    user_emb = rng.integers(-1, 2, size=(64, 3)).astype(np.float32)
    histories = [rng.integers(0, n_items, rng.integers(0, min(n_items, 30))) for _ in range(64)]
    _, ids = retrieve_topk(item_emb, user_emb, histories, k, chunk_size=16)
    np.testing.assert_array_equal(ids, _brute_topk(item_emb, user_emb, histories, k))
    # constant scorer: every list is the first k unmasked indices
    _, ids = retrieve_topk(np.ones_like(item_emb), user_emb, histories, k)
    np.testing.assert_array_equal(ids, _brute_topk(np.ones_like(item_emb), user_emb, histories, k))


def test_evaluate_ranks_equal_bruteforce():
    rng = np.random.default_rng(1)
    n_items, n = 50, 200
    item_emb = rng.integers(-2, 3, size=(n_items, 4)).astype(np.float32)
    user_emb = rng.integers(-2, 3, size=(n, 4)).astype(np.float32)
    targets = rng.integers(0, n_items, n)
    hist = [rng.integers(0, n_items, rng.integers(0, 10)) for _ in range(n)]
    res = evaluate(item_emb, user_emb, _imps(targets, histories=hist), block_size=7)
    s = user_emb @ item_emb.T
    for i in range(n):
        cand = np.setdiff1d(np.arange(n_items), np.setdiff1d(hist[i], [targets[i]]))
        expect = 1 + np.sum((s[i, cand] >= s[i, targets[i]]) & (cand != targets[i]))
        assert res.per_impression["rank"][i] == expect


def test_summarize_slice():
    per = {"rank": np.array([1, 5, 20]), "auc": np.array([1.0, np.nan, 0.0]), "js": np.full(3, np.nan)}
    users = np.array([0, 0, 1])
    mask = np.array([True, True, False])
    out = summarize({k: v[mask] for k, v in per.items()}, users[mask], ks=(1, 10), js_k=5)
    assert out["HR@1"] == 0.5 and out["HR@10"] == 1.0 and out["n"] == 2
    assert out["gAUC"] == 1.0 and math.isnan(out["JS@5"])


# ---------------------------------------------------------------- across seeds / paired
def test_mean_ci_by_hand():
    m, half_width = S.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975,2} * sd / sqrt(n)
    assert (m, half_width) == pytest.approx((2.0, half))
    assert S.mean_ci([0.3]) == (0.3, None)
    assert math.isnan(S.mean_ci([1.0, np.nan])[0])  # a missing seed is never averaged in


def test_paired_t_and_bootstrap():
    a = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    b = np.array([0.0, 2.0, 1.0, 4.0, 1.0])
    out = S.paired_test(a, b)
    d = np.array([1.0, 0.0, 2.0, 0.0])
    ref = stats.ttest_rel(a[:4], b[:4])
    assert out["n"] == 4 and out["mean_diff"] == pytest.approx(0.75)
    assert out["t"] == pytest.approx(ref.statistic) and out["p"] == pytest.approx(ref.pvalue)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert (out["low"], out["high"]) == pytest.approx((0.75 - half, 0.75 + half))
    bs = S.paired_test(a, b, method="bootstrap", n_boot=2000, seed=3)
    again = S.paired_test(a, b, method="bootstrap", n_boot=2000, seed=3)
    assert (bs["low"], bs["high"], bs["p"]) == (again["low"], again["high"], again["p"])  # seeded
    assert 0.0 <= bs["low"] <= 0.75 <= bs["high"] <= 2.0
