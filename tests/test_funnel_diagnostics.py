"""Funnel evaluations (benchmark.funnel) and collapse diagnostics (benchmark.diagnostics), by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import diagnostics as D
from benchmark import funnel as F
from benchmark.data.schema import SearchLog


# ---------------------------------------------------------------- helpers
def _tiny_log() -> SearchLog:
    """6 items, 3 users; each user: train, valid, test impression."""
    texts = ["red running shoe", "blue running shoe", "red wool hat", "green wool hat", "black phone case",
             "red phone case"]
    catalog = pd.DataFrame({"item": range(6), "item_id": [f"i{i}" for i in range(6)], "title": texts,
                            "text": texts, "category": [[]] * 6, "image": [None] * 6,
                            "query": ["running shoe"] * 2 + ["wool hat"] * 2 + ["phone case"] * 2,
                            "train_count": [2, 0, 0, 1, 0, 0]})  # the train clicks below
    a = lambda *x: np.asarray(x, dtype=np.int64)  # noqa: E731
    rows = [  # user, query, history, target, exposures, split
        (0, "running shoe", a(), 0, a(1, 2), "train"),
        (0, "wool hat", a(0), 2, a(3, 4), "valid"),
        (0, "phone case", a(0, 2), 5, a(4, 1), "test"),
        (1, "running shoe", a(), 0, a(1), "train"),
        (1, "red hat", a(0), 2, a(3), "valid"),
        (1, "phone case", a(0, 2), 4, a(5), "test"),
        (2, "wool hat", a(), 3, a(2, 0), "train"),
        (2, "running shoe", a(3), 1, a(0), "valid"),
        (2, "red", a(3, 1), 5, a(0, 2), "test"),
    ]
    imps = pd.DataFrame(rows, columns=["user", "query", "history", "target", "exposures", "split"])
    imps.insert(1, "timestamp", range(len(imps)))
    return SearchLog(name="tiny", catalog=catalog, impressions=imps, n_users=3, has_text=True, fingerprint="t")


def _ctr_table(n_imp: int, n_neg: int, rng: np.random.Generator, n_items: int = 40, n_users: int = 30):
    rows = []
    for i in range(n_imp):
        user = int(rng.integers(n_users))
        hist = rng.integers(0, n_items, size=int(rng.integers(0, 6)))
        for j, item in enumerate(rng.choice(n_items, size=n_neg + 1, replace=False)):
            rows.append((i, user, int(item), int(j == 0), hist))
    df = pd.DataFrame(rows, columns=["impression", "user", "item", "label", "history"])
    df["lexical"] = rng.normal(size=len(df)).astype(np.float32)  # uninformative
    df["log_popularity"] = rng.normal(size=len(df)).astype(np.float32)  # uninformative
    df["leak"] = (df["label"] + 0.1 * rng.normal(size=len(df))).astype(np.float32)  # carries the label
    return df


# ---------------------------------------------------------------- K scaling
def test_k_scaling_rules():
    assert F.prerank_k(50_000) == 500  # the paper's K at N = 50k
    assert F.prerank_k(150) == 10
    assert F.prerank_k(5) == 5  # capped at N
    assert F.prerank_k(12_345) == 124
    assert F.k_ladder(100) == [10, 20, 40, 80] and F.k_ladder(5) == [5]


# ---------------------------------------------------------------- ranking: CTR feature
def test_global_auc_by_hand():
    assert F.global_auc([0.9, 0.8, 0.1, 0.3], [1, 0, 0, 1]) == pytest.approx(0.75)  # pairs: 2 of 4 + ...
    assert F.global_auc([1, 1], [1, 0]) == 0.5  # a tie counts one half
    assert math.isnan(F.global_auc([1, 2], [1, 1]))


def test_ctr_examples_and_similarity_by_hand():
    log = _tiny_log()
    ex = F.ctr_examples(log, "train")
    assert ex["item"].tolist() == [0, 1, 2, 0, 1, 3, 2, 0]
    assert ex["label"].tolist() == [1, 0, 0, 1, 0, 1, 0, 0]
    # train clicks: item 0 twice, item 3 once; a train row's own click is left out
    assert np.expm1(ex["log_popularity"]).round().astype(int).tolist() == [1, 0, 0, 1, 0, 0, 0, 2]
    te = F.ctr_examples(log, "test")
    assert np.expm1(te["log_popularity"]).round().astype(int).tolist() == [0, 0, 0, 0, 0, 0, 2, 0]
    # BM25: "phone case" matches items 4 and 5 only; "running shoe" does not match item 2
    assert (te["lexical"].iloc[:2] > 0).all() and ex["lexical"].iloc[2] == 0
    emb = np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]])
    sim = F.ctr_feature_similarity(emb, [np.array([0, 1]), np.array([], np.int64)], np.array([2, 0]))
    assert sim == pytest.approx([math.sqrt(0.5), 0.0])  # mean(cos45, cos45); empty history -> 0


def test_a_feature_carrying_the_label_raises_ctr_auc():
    rng = np.random.default_rng(0)
    tr, va, te = _ctr_table(300, 4, rng), _ctr_table(80, 4, rng), _ctr_table(120, 4, rng)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two contended ones
    try:
        res = F.compare_ctr(tr, va, te, extra_feature="leak", seed=0, epochs=4, batch_size=256, lr=1e-2,
                            n_boot=500)
    finally:
        torch.set_num_threads(threads)
    assert res["without"]["AUC"] < 0.65 and res["with"]["AUC"] > 0.95
    assert res["with"]["gAUC"] > 0.95
    assert res["delta_AUC"] > 0.3
    ci = res["delta_gAUC_ci"]
    assert ci["low"] > 0 and ci["mean_diff"] == pytest.approx(ci["delta"], abs=0.1)


# ---------------------------------------------------------------- pre-ranking fusion
def test_zscore_and_fuse():
    z = F.zscore_rows(np.array([[1.0, 2.0, 3.0, 100.0], [5.0, 5.0, 5.0, 5.0]]),
                      np.array([[True, True, True, False], [True] * 4]))
    assert z[0, :3] == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)]) and z[0, 3] == -np.inf
    assert (z[1] == 0).all()  # no spread -> 0
    pre, emb = np.array([[0.0, 1.0, 2.0]]), np.array([[20.0, 10.0, 0.0]])
    assert F.fuse(pre, emb, 0.0) == pytest.approx(F.zscore_rows(pre))
    assert F.fuse(pre, emb, 1.0) == pytest.approx(F.zscore_rows(emb))
    assert F.fuse(pre, emb, 0.5) == pytest.approx(np.zeros((1, 3)))  # mirror images cancel
    with pytest.raises(ValueError):
        F.fuse(pre, emb, 1.5)


def test_preranker_alone_gives_the_hand_computed_hr():
    pre = np.array([[3.0, 1.0, 2.0, 0.0], [1.0, 1.0, 0.0, 5.0]])
    targets = np.array([2, 0])
    valid = F.candidate_mask([np.array([], np.int64), np.array([3, 0])], targets, 4)
    assert valid.tolist() == [[True] * 4, [True, True, True, False]]  # history masked, target kept
    # row 0: s >= 2 -> items 0, 2: rank 2. row 1: item 3 masked; s >= 1 -> items 0, 1 (tie): rank 2
    assert F.pessimistic_ranks(pre, targets, valid).tolist() == [2, 2]
    emb = np.random.default_rng(1).normal(size=pre.shape)
    assert F.hr_at_k_fused(pre, emb, targets, 0.0, 1, valid).tolist() == [0.0, 0.0]
    assert F.hr_at_k_fused(pre, emb, targets, 0.0, 2, valid).tolist() == [1.0, 1.0]
    # the pre-ranker itself: query_pop + lambda * BM25 / max BM25 (lambda = 0: query_pop exactly)
    qp, b25 = np.array([[2.0, 0.0, 0.0]]), np.array([[0.0, 3.0, 1.0]])
    assert F.preranker_scores(qp, b25, 1.0)[0] == pytest.approx([2.0, 1.0, 1 / 3])
    assert (F.preranker_scores(qp, b25, 0.0) == qp).all()


def test_a_perfect_embedding_scorer_gives_hr_1_after_fusion():
    rng = np.random.default_rng(0)
    n, m, k = 30, 40, 3

    def split():
        t = rng.integers(0, n, size=m)
        pre = rng.normal(size=(m, n))  # an uninformative pre-ranker
        emb = rng.normal(scale=0.01, size=(m, n))
        emb[np.arange(m), t] = 1.0  # the target always scores highest
        return pre, emb, t

    pre, emb, t = split()
    w, hr_by_w = F.choose_weight(pre, emb, t, k)  # chosen on validation impressions only
    assert hr_by_w[1.0] == 1.0 and hr_by_w[0.0] < 0.5 and w > 0
    assert w == min(x for x, v in hr_by_w.items() if v == 1.0)  # ties -> smallest weight
    pre, emb, t = split()  # fresh test impressions
    assert F.hr_at_k_fused(pre, emb, t, w, k).mean() == 1.0


# ---------------------------------------------------------------- recall
def test_merge_channels_quota_and_dedup_by_hand():
    lex = np.array([[5, 3, 7, -1], [4, -1, -1, -1]])
    emb = np.array([[3, 9, 5, 2, 8], [4, 1, 2, 6, 0]])
    out = F.merge_channels(lex, emb, (2, 2))
    assert out[0].tolist() == [5, 3, 9, 2]  # 3 and 5 already lexical: skipped, quota still 2
    assert out[1].tolist() == [4, 1, 2, -1]  # lexical ran out: its slot stays empty
    assert F.recall_hr(out, np.array([2, 6])).tolist() == [1.0, 0.0]
    ids = F.topk_from_scores(np.array([[0.0, 2.0, 1.0, 2.0, 0.0]]), 4, positive_only=True)
    assert ids.tolist() == [[1, 3, 2, -1]]  # ties by index; zero scores never retrieved


def test_funnel_drivers_on_a_tiny_log():
    log = _tiny_log()
    eye = np.eye(6, dtype=np.float32)
    val, te = log.split("valid"), log.split("test")
    res = F.prerank_funnel(log, eye, eye[val["target"].to_numpy()], eye[te["target"].to_numpy()], k=1, n_boot=200)
    assert res["HR_emb"] == 1.0 and res["HR_fused"] == 1.0 and 0 <= res["HR_pre"] <= 1
    assert res["delta"]["delta"] == pytest.approx(res["HR_fused"] - res["HR_pre"])
    # the blocked driver agrees with the dense functions (weight chosen on valid only)
    bm, vt = F.BM25Scorer(log.catalog["text"].tolist()), val["target"].to_numpy()
    v = F.candidate_mask(list(val["history"]), vt, 6)
    pre = F.preranker_scores(F.query_pop_scores(log, val), bm.scores(val["query"].tolist()), res["lexical_weight"])
    w, hr = F.choose_weight(pre, eye[vt] @ eye.T, vt, 1, valid=v)
    assert res["w"] == w and res["valid_hr_by_w"] == pytest.approx(hr)
    # the pre-ranker is chosen on validation with the query_pop rule (weight 0) among its candidates
    by_weight = res["valid_hr_by_lexical_weight"]
    assert by_weight[str(res["lexical_weight"])] >= by_weight["0.0"]
    one = F.prerank_funnel(log, eye, eye[vt], eye[te["target"].to_numpy()], k=1, n_boot=200, block=1)
    assert one["valid_hr_by_w"] == res["valid_hr_by_w"] and one["HR_pre"] == res["HR_pre"]
    rec = F.recall_funnel(log, eye, eye[te["target"].to_numpy()], k=2, n_boot=200)
    assert rec["quota"] == (1, 1) and rec["HR_embedding"] == 1.0 and rec["HR_merged"] == 1.0
    # lexical alone at K=2: "phone case" -> items 4, 5 (hits 5 and 4); "red" -> 0, 2 masked for user 2? no:
    # user 2's history is (3, 1), so "red" retrieves {0, 2} (ties by index) and misses target 5
    assert rec["HR_lexical"] == pytest.approx(2 / 3)


def test_a_channel_that_returns_the_target_raises_recall_by_the_expected_amount():
    log = _tiny_log()
    te = log.split("test")
    eye = np.eye(6, dtype=np.float32)
    lexical = F.recall_funnel(log, eye, eye[te["target"].to_numpy()], k=2, emb_share=0.0, n_boot=50)
    oracle = F.recall_funnel(log, eye, eye[te["target"].to_numpy()], k=2, emb_share=0.5, n_boot=50)
    # with its quota of 1 the oracle channel recalls every target; the lexical channel alone at K=2
    # misses exactly the rows it does not recall, so the gain is 1 - HR_lexical(K=2)
    assert oracle["HR_merged"] == 1.0 and oracle["HR_lexical"] == lexical["HR_lexical"] == lexical["HR_merged"]
    assert oracle["delta"]["delta"] == pytest.approx(1.0 - lexical["HR_lexical"])


def test_the_recall_depth_leaves_the_lexical_channel_below_saturation():
    log = _tiny_log()
    k, by_k = F.unsaturated_k(log, F.BM25Scorer(log.catalog["text"].tolist()), max_hr=0.5)
    assert by_k[k] <= 0.5 or k == min(by_k)
    assert all(hr > 0.5 for kk, hr in by_k.items() if kk > k) or k == max(by_k)
    rec = F.recall_funnel(log, np.eye(6), np.eye(6)[log.split("test")["target"].to_numpy()], n_boot=50)
    assert rec["K"] == k and rec["lexical_valid_hr_by_k"] == by_k


def test_a_cross_fitted_feature_cannot_see_its_own_label():
    rng = np.random.default_rng(0)
    valid, test = _ctr_table(60, 3, rng), _ctr_table(60, 3, rng)
    test["row"] = np.arange(len(test))

    def memorise(train, early):  # a "model" that returns each row's label if it trained on that row
        seen = {(u, i, tuple(h)): y for u, i, h, y in zip(train["user"], train["item"], train["history"],
                                                          train["label"], strict=True)}
        return lambda rows: np.array([seen.get((u, i, tuple(h)), 0.5) for u, i, h in
                                      zip(rows["user"], rows["item"], rows["history"], strict=True)])

    scores = F.cross_fit_predict(memorise, valid, test, folds=2)
    own_user_rows = {u for u in test["user"]} & {u for u in valid["user"]}
    assert len(own_user_rows) > 0 and not np.isnan(scores).any()
    assert (scores == 0.5).all()  # no test row was ever in the training rows of the model that scored it
    folds = F.cross_fit_folds(test["user"].to_numpy(), 2)
    assert set(folds) == {0, 1}


# ---------------------------------------------------------------- diagnostics
def test_uniform_attention_is_maximal_entropy_and_barcode_3_over_l():
    h, q, ln = 2, 5, 8
    s = D.attention_stats(np.full((h, q, ln), 1 / ln))
    assert s["norm_entropy"] == pytest.approx(1.0) and s["entropy"] == pytest.approx(math.log(ln))
    assert s["barcode"] == pytest.approx(3 / ln) and s["first"] == pytest.approx(1 / ln)
    assert s["top3"] == pytest.approx(3 / ln)
    mask = np.arange(ln) < 4  # padding: only the first 4 keys are real
    s = D.attention_stats(np.where(mask, 0.25, 0.0)[None].repeat(q, 0), mask)
    assert s["norm_entropy"] == pytest.approx(1.0) and s["barcode"] == pytest.approx(3 / 4)


def test_one_hot_same_column_is_a_barcode():
    a = np.zeros((3, 6, 10))
    a[..., 4] = 1.0  # every query of every head on key 4
    s = D.attention_stats(a)
    assert s["barcode"] == pytest.approx(1.0) and s["entropy"] == 0.0 and s["norm_entropy"] == 0.0
    assert s["first"] == 0.0 and s["top3"] == 1.0
    left_pad = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]])
    assert D.attention_stats(left_pad, np.array([False, True, True, True]))["first"] == pytest.approx(0.75)
    diag = np.eye(10)  # sharp but query-specific: not a barcode
    sd = D.attention_stats(diag)
    assert sd["top3"] == 1.0 and sd["barcode"] == pytest.approx(3 / 10)


def test_effective_rank_and_pairwise_cosine():
    assert D.effective_rank(np.eye(7)) == pytest.approx(7.0)
    rank1 = np.outer(np.arange(1, 6), np.array([1.0, -2.0, 0.5]))
    assert D.effective_rank(rank1) == pytest.approx(1.0)
    assert D.mean_pairwise_cosine(np.ones((4, 3)) * [[1], [2], [3], [4]]) == pytest.approx(1.0)
    assert D.mean_pairwise_cosine(np.eye(5)) == pytest.approx(0.0)
    x = np.random.default_rng(0).normal(size=(50, 4))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    g = xn @ xn.T
    assert D.mean_pairwise_cosine(x) == pytest.approx((g.sum() - 50) / (50 * 49))
    assert D.mean_pairwise_cosine(x, sample=10, seed=1) == D.mean_pairwise_cosine(x, sample=10, seed=1)


def test_heatmaps_write_pngs(tmp_path):
    a = np.random.default_rng(0).dirichlet(np.ones(12), size=8)
    p = D.heatmap(a, tmp_path / "figs" / "one.png", "action-only")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p2 = D.compare_heatmaps(a, np.full((8, 12), 1 / 12), ["action-only", "KARMA"], tmp_path / "two.png")
    assert p2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_embeddings_are_stored_from_an_artifact_and_wide_ones_are_not(tmp_path):
    from benchmark.funnel.runs import embeddings_from_artifacts, embeddings_path

    record = tmp_path / "records" / "full" / "d" / "coarse" / "m__default__seed0.json"
    art = tmp_path / "artifacts" / "full" / "d" / "coarse" / "m__default__seed0.pt"
    wide = art.with_name("bm25__default__seed0.pt")
    art.parent.mkdir(parents=True)
    item, valid, test = torch.randn(6, 4), torch.randn(3, 4), torch.randn(3, 4)
    torch.save({"item_embeddings": item.numpy(), "user_embeddings_valid": valid.numpy(),
                "user_embeddings_test": test.numpy(), "state": {}}, art)
    torch.save({"item_embeddings": np.zeros((6, 5000), np.float32), "user_embeddings_valid": np.zeros((3, 5000)),
                "user_embeddings_test": np.zeros((3, 5000))}, wide)
    written = embeddings_from_artifacts(tmp_path)
    assert written == [embeddings_path(record, tmp_path)]
    stored = np.load(written[0])
    assert np.array_equal(stored["item"], item.numpy()) and np.array_equal(stored["user_test"], test.numpy())
    assert embeddings_from_artifacts(tmp_path) == []  # already stored: nothing rewritten


def test_the_leaderboard_reads_only_funnel_results_of_current_records(tmp_path):
    """A run re-trained since its funnel pass (new selection, new floor) has a newer record: the old pass's
    result describes a model the leaderboard no longer shows and is left out until the pass runs again."""
    import json
    from types import SimpleNamespace

    from benchmark.funnel.runs import read_funnel_results

    record = tmp_path / "records" / "full" / "d" / "coarse" / "karma__karma__seed0.json"
    current = SimpleNamespace(path=record, data={"created": "2026-12-07T07:00:00"})
    for name, created in (("seed0", "2026-12-07T07:00:00"), ("seed0_old", "2026-12-01T00:00:00")):
        out = tmp_path / "funnel" / "full" / "d" / "coarse" / f"karma__karma__{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"seed": 0, "source": {"record": "records/full/d/coarse/karma__karma__seed0.json",
                                                          "record_created": created}}))
    assert len(read_funnel_results(tmp_path, "full")) == 2
    kept = read_funnel_results(tmp_path, "full", [current])
    assert [r["source"]["record_created"] for r in kept] == ["2026-12-07T07:00:00"]
    assert read_funnel_results(tmp_path, "full", []) == []
