"""query_pop (what the query alone gives), the modes each model runs in, and the equal tuning budget."""

from __future__ import annotations

import numpy as np
import pytest

from baselines.query_pop import QueryPop, QueryPopConfig
from benchmark.data.adapt import AdaptConfig, adapt
from benchmark.data.report import DataReport
from benchmark.evaluate import evaluate
from benchmark.runner.grids import grid_trials
from benchmark.runner.plan import model_modes
from tests.test_adapt import _raw


def _scores(log, impressions):
    model = QueryPop(log.n_items, QueryPopConfig())
    return (model.user_embeddings(log, impressions) @ model.item_embeddings(log).T).numpy()


def test_matching_items_rank_first_by_popularity_then_the_rest():
    log = adapt(_raw(), AdaptConfig(k_core=0, query="hem"), DataReport("toy"))
    imp = log.split("test")
    scores = _scores(log, imp)
    pop = log.catalog["train_count"].to_numpy()
    for row, query in zip(scores, imp["query"], strict=True):
        leaf = query.split()[-1]  # "... cream alpha": the items of leaf alpha match
        match = np.array([c[-1].lower().endswith(leaf) for c in log.catalog["category"]])
        assert row[match].min() > row[~match].max()  # every match above every non-match
        order = np.argsort(-row[match], kind="stable")
        assert (np.diff(pop[match][order]) <= 0).all()  # matches by popularity


def test_empty_query_is_popularity_and_history_is_masked_by_the_evaluator():
    log = adapt(_raw(), AdaptConfig(k_core=0, query="none"), DataReport("toy"))
    imp = log.split("test")
    scores = _scores(log, imp)
    np.testing.assert_allclose(scores, np.log1p(log.catalog["train_count"].to_numpy())[None, :].repeat(len(imp), 0),
                               rtol=1e-6)
    model = QueryPop(log.n_items, QueryPopConfig())
    result = evaluate(model.item_embeddings(log).numpy(), model.user_embeddings(log, imp).numpy(), imp, ks=[10],
                      js_k=10, item_terms=None, topk_lists=False)
    assert 0.0 <= result.metrics["HR@10"] <= 1.0


def test_foreign_queries_fail_loudly():
    log = adapt(_raw(), AdaptConfig(k_core=0, query="hem"), DataReport("toy"))
    imp = log.split("test").copy()
    imp["query"] = "no such query"
    with pytest.raises(KeyError, match="not one of the log's queries"):
        QueryPop(log.n_items, QueryPopConfig()).user_embeddings(log, imp)


def test_query_blind_models_run_once_in_mode_none():
    available = ["none", "coarse", "hem"]
    assert model_modes("ignored", ["coarse", "hem"], available) == ["none"]
    assert model_modes("required", ["coarse", "none"], available) == ["coarse"]
    assert model_modes("optional", ["coarse", "none"], available) == ["coarse", "none"]
    assert model_modes("required", ["coarse"], ["none"]) == []  # a set without categories has no search mode


def test_a_family_member_with_one_more_axis_keeps_the_same_budget():
    shared = {"lr": [1e-4, 1e-3], "scale": [10, 20]}
    assert len(grid_trials(shared, 4)) == 4
    extended = grid_trials({**shared, "w": [0.3, 3.0]}, 4)  # 2^(3-1) half fraction
    assert len(extended) == 4
    for axis in ("lr", "scale", "w"):  # every level of every axis in half the trials
        values = [t[axis] for t in extended]
        assert sorted(set(values)) == sorted({**shared, "w": [0.3, 3.0]}[axis])
        assert all(values.count(v) == 2 for v in set(values))
    for a, b in (("lr", "scale"), ("lr", "w"), ("scale", "w")):  # every pair of axes fully crossed
        assert len({(t[a], t[b]) for t in extended}) == 4
    with pytest.raises(ValueError, match="same tuning budget"):
        grid_trials({"lr": [1, 2, 3]}, 4)
