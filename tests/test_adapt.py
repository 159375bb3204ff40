"""The adapter: k-core, query modes, BM25 exposures, splits, leakage checks, caching."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from benchmark.data.adapt import (
    AdaptConfig,
    QueryRule,
    adapt,
    fingerprint,
    k_core,
    load_cached,
    query_matches,
    query_stats,
    save,
)
from benchmark.data.report import DataError, DataReport
from benchmark.data.schema import RawLog

LEAVES = ["alpha", "beta", "gamma"]


def _raw(n_users=6, n_items=8, events=5, has_text=True, with_category=True) -> RawLog:
    rows = []
    for u in range(n_users):
        for t in range(events):
            rows.append((f"u{u}", f"i{(3 * u + t) % n_items}", 100 * t + u, t))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "order"])
    cats = [["Beauty", "Skin Care", f"Cream {LEAVES[i % 3]}"] if with_category else [] for i in range(n_items)]
    catalog = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                            "title": [f"the night cream number {i} for skin" for i in range(n_items)],
                            "brand": ["acme"] * n_items, "category": cats, "description": [""] * n_items,
                            "image": [None] * n_items})
    return RawLog("toy", catalog, inter, has_text=has_text, has_timestamps=True, raw_files={"a": "1"})


def test_leave_last_out_split_and_history():
    log = adapt(_raw(), AdaptConfig(k_core=0, n_exposures=3), DataReport("toy"))
    imp = log.impressions
    assert log.n_users == 6 and log.n_items == 8
    # 5 events per user -> 4 impressions: positions 1, 2 train; 3 valid; 4 test.
    assert (imp.groupby("user").size() == 4).all()
    for _, g in imp.groupby("user"):
        assert g.sort_values("position")["split"].tolist() == ["train", "train", "valid", "test"]
    test = imp[imp["split"] == "test"].iloc[0]
    valid = imp[(imp["split"] == "valid") & (imp["user"] == test["user"])].iloc[0]
    assert list(test["history"]) == list(valid["history"]) + [valid["target"]]


def test_hem_query_is_the_full_category_path_without_stopwords_or_duplicates():
    log = adapt(_raw(), AdaptConfig(k_core=0, query="hem"), DataReport("toy"))
    row = log.impressions.iloc[0]
    category = log.catalog.loc[row["target"], "category"]
    assert row["query"] == f"beauty skin care cream {category[-1].split()[-1]}"
    assert log.adaptation["query"] == "hem" and log.adaptation["query_modes"] == ["none", "coarse", "hem"]


def test_coarse_query_is_the_deepest_prefix_enough_items_share():
    paths = [["Home", "Kitchen", "Mugs"]] * 30 + [["Home", "Kitchen", "Teapots"]] * 5 + [["Home", "Bath"]] * 10
    rule = QueryRule(paths, AdaptConfig(query="coarse", query_min_items=20, query_min_share=0.0))
    assert rule(["Home", "Kitchen", "Mugs"]) == "home kitchen mugs"  # 30 items share the full path
    assert rule(["Home", "Kitchen", "Teapots"]) == "home kitchen"  # 5 < 20: cut to the 35-item prefix
    assert rule(["Home", "Bath"]) == "home"  # 10 < 20: cut to the root (45 items)
    # the threshold scales with the catalog: 80% of its 45 items is 36 > 35 (the 35-item prefix)
    big = QueryRule(paths, AdaptConfig(query="coarse", query_min_items=1, query_min_share=0.8))
    assert big.threshold == 36 and big(["Home", "Kitchen", "Mugs"]) == "home"
    assert QueryRule(paths, AdaptConfig(query="none"))(["Home", "Bath"]) == ""


def test_coarse_mode_on_the_toy_log_names_a_group_never_one_item():
    log = adapt(_raw(), AdaptConfig(k_core=0, query="coarse", query_min_items=4, query_min_share=0.0),
                DataReport("toy"))
    # 8 items, 3 leaves of 2-3 items each: no leaf reaches 4 items, so every query is the shared prefix
    assert set(log.impressions["query"]) == {"beauty skin care cream"}
    stats = query_stats(log)
    assert stats["distinct_queries"] == 1 and stats["median_items_per_query"] == 8.0


def test_no_title_fallback_a_set_without_categories_has_only_mode_none():
    raw = _raw(with_category=False)
    with pytest.raises(DataError, match="only mode"):
        adapt(raw, AdaptConfig(k_core=0, query="coarse"), DataReport("toy"))
    log = adapt(raw, AdaptConfig(k_core=0, query="none", n_exposures=3), DataReport("toy"))
    assert (log.impressions["query"] == "").all() and log.adaptation["query_modes"] == ["none"]
    # exposures never come from the title: they are drawn by popularity instead, the target excluded
    assert "popularity draw" in log.adaptation["exposure_source"]
    assert all(len(e) == 3 and t not in e for e, t in zip(log.impressions["exposures"], log.impressions["target"],
                                                            strict=True))


def test_exposures_do_not_depend_on_the_query_mode():
    logs = [adapt(_raw(), AdaptConfig(k_core=0, query=m, n_exposures=3), DataReport("toy"))
            for m in ("none", "coarse", "hem")]
    for other in logs[1:]:
        assert all((a == b).all() for a, b in zip(logs[0].impressions["exposures"], other.impressions["exposures"],
                                                  strict=True))
        assert (logs[0].impressions["target"] == other.impressions["target"]).all()
    assert len({lg.fingerprint or fingerprint(_raw(), AdaptConfig(query=m)) for lg, m in
                zip(logs, ("none", "coarse", "hem"), strict=True)}) == 3


def test_query_matches_is_a_boolean_and_over_terms():
    out = query_matches(["red ceramic mug", "blue mug", "red teapot"], ["red mug", "mug", "green"])
    assert out["red mug"].tolist() == [True, False, False]
    assert out["mug"].tolist() == [True, True, False] and not out["green"].any()


def test_bm25_exposures_exclude_the_click_and_are_lexical_matches():
    log = adapt(_raw(), AdaptConfig(k_core=0, n_exposures=3, query="hem"), DataReport("toy"))
    for target, exposures in zip(log.impressions["target"], log.impressions["exposures"], strict=True):
        assert target not in exposures
        assert len(exposures) == 3
    # the query "... cream alpha" must expose the other "Cream alpha" items first
    row = log.impressions[log.impressions["target"] == 0].iloc[0]
    same_leaf = set(log.catalog.index[log.catalog["category"].map(lambda c: c[-1] == "Cream alpha")]) - {0}
    assert set(row["exposures"][: len(same_leaf)]) == same_leaf


def test_id_only_source_has_no_query_and_no_exposures():
    log = adapt(_raw(has_text=False), AdaptConfig(k_core=0, query="none"), DataReport("toy"))
    assert (log.impressions["query"] == "").all()
    assert all(len(e) == 0 for e in log.impressions["exposures"])
    assert log.adaptation["exposure_source"].startswith("none")


def test_k_core_reaches_a_fixed_point():
    inter = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b", "c"], "item_id": ["x", "y", "z", "x", "y", "x"]})
    out = k_core(inter, 2)
    assert set(out["user_id"]) == {"a", "b"} and set(out["item_id"]) == {"x", "y"}


def test_short_users_are_counted_and_strict_mode_raises():
    raw = _raw()
    raw.interactions = raw.interactions[~((raw.interactions["user_id"] == "u0") & (raw.interactions["order"] > 1))]
    report = DataReport("toy")
    log = adapt(raw, AdaptConfig(k_core=0), report)
    assert report.counts["user_too_short_to_split"] == 1 and log.n_users == 5
    with pytest.raises(DataError, match="user_too_short_to_split"):
        adapt(raw, AdaptConfig(k_core=0), DataReport("toy", strict=True))


def test_global_time_split_needs_timestamps_and_orders_by_time():
    raw = _raw()
    log = adapt(raw, AdaptConfig(k_core=0, split="global_time", valid_frac=0.2, test_frac=0.2), DataReport("t"))
    imp = log.impressions
    assert imp.loc[imp["split"] == "train", "timestamp"].max() < imp.loc[imp["split"] == "test", "timestamp"].min()
    raw.has_timestamps = False
    with pytest.raises(DataError, match="needs timestamps"):
        adapt(raw, AdaptConfig(k_core=0, split="global_time"), DataReport("t"))


def test_published_split_is_kept_and_checked():
    raw = _raw()
    raw.interactions["split"] = np.where(raw.interactions["order"] == 4, "test", "train")
    log = adapt(raw, AdaptConfig(k_core=5), DataReport("t"))
    assert set(log.impressions["split"]) == {"train", "test"}
    assert log.adaptation["split_source"] == "published" and not log.adaptation["k_core_applied"]
    raw.interactions["split"] = np.where(raw.interactions["order"] == 1, "test", "train")  # test before train
    with pytest.raises(DataError, match="leakage"):
        adapt(raw, AdaptConfig(k_core=0), DataReport("t"))


def test_fingerprint_changes_with_config_and_cache_round_trips(tmp_path):
    raw = _raw()
    assert fingerprint(raw, AdaptConfig()) != fingerprint(raw, AdaptConfig(n_exposures=5))
    log = adapt(raw, AdaptConfig(k_core=0), DataReport("t"))
    save(log, tmp_path / "cache")
    back = load_cached(tmp_path / "cache")
    assert back is not None and back.n_items == log.n_items
    for a, b in zip(log.impressions["history"], back.impressions["history"], strict=True):
        assert a.dtype == b.dtype == np.int64 and (a == b).all()
    shifted = pd.read_parquet(tmp_path / "cache" / "impressions.parquet")
    shifted["target"] = (shifted["target"] + 1) % log.n_items  # a valid file, altered
    shifted.to_parquet(tmp_path / "cache" / "impressions.parquet", index=False)
    assert load_cached(tmp_path / "cache") is None  # caught by its checksum: rebuilt, never read
    (tmp_path / "cache" / "impressions.parquet").write_bytes(b"garbage")
    assert load_cached(tmp_path / "cache") is None  # corrupt cache is rebuilt, not trusted


def test_a_user_subsample_view_is_fixed_by_the_ids_and_named_as_a_view():
    from benchmark.data.adapt import sample_users
    from benchmark.data.registry import parse

    spec = parse("unisrec/Scientific@3000users")
    assert (spec.family, spec.category, spec.users, spec.name) == ("unisrec", "Scientific", 3000,
                                                                   "unisrec/Scientific@3000users")
    with pytest.raises(DataError, match="<N>users"):
        parse("unisrec/Scientific@some")
    users = [f"u{i}" for i in range(50)]
    raw = RawLog("toy", pd.DataFrame(columns=["item_id"]), pd.DataFrame(
        {"user_id": [u for u in users for _ in range(3)], "item_id": ["a", "b", "c"] * 50,
         "timestamp": list(range(150)), "order": list(range(150))}), has_text=False, has_timestamps=True)
    first, again = sample_users(raw, 10), sample_users(raw, 10)
    kept = sorted(first.interactions["user_id"].unique())
    assert len(kept) == 10 and kept == sorted(again.interactions["user_id"].unique())  # the same every time
    shuffled = dataclasses.replace(raw, interactions=raw.interactions.sample(frac=1.0, random_state=1))
    assert sorted(sample_users(shuffled, 10).interactions["user_id"].unique()) == kept  # order does not matter
    assert (first.interactions.groupby("user_id").size() == 3).all()  # whole histories are kept
    assert sample_users(raw, 100) is raw
