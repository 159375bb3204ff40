"""The query-only BM25 baseline: its dot product is BM25 (+ the popularity tie-break), history is ignored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.bm25 import BM25, BM25Config
from benchmark import funnel as F
from tests.test_funnel_diagnostics import _tiny_log


def test_dot_product_equals_bm25_plus_popularity_tiebreak():
    log = _tiny_log()
    model = BM25(log.n_items, BM25Config(popularity_weight=0.01))
    imps = log.impressions
    scores = (model.user_embeddings(log, imps) @ model.item_embeddings(log).T).numpy()
    want = (F.BM25Scorer(log.catalog["text"].tolist()).scores(imps["query"].tolist())
            + 0.01 * np.log1p(F.train_popularity(log))[None, :])
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
    # "running shoe": the two running shoes first; train clicks (item 0 twice, item 1 never) break their tie
    assert np.argsort(-scores[0])[:2].tolist() == [0, 1]
    assert model.train_dataset(log, None) is None


def test_history_is_ignored_and_foreign_queries_fail_loudly():
    log = _tiny_log()
    model = BM25(log.n_items, BM25Config())
    imps = log.impressions.iloc[[0, 3]].copy()  # same query, different users
    imps["history"] = [np.array([1, 2], dtype=np.int64), np.array([], dtype=np.int64)]
    user = model.user_embeddings(log, imps)
    assert torch.equal(user[0], user[1])
    imps["query"] = ["running umbrella", "running shoe"]
    with pytest.raises(KeyError, match="umbrella"):
        model.user_embeddings(log, imps)
