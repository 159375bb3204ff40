"""The adapter: k-core, HEM queries, BM25 exposures, splits, leakage checks, caching."""

import numpy as np
import pandas as pd
import pytest

from benchmark.data.adapt import AdaptConfig, adapt, fingerprint, k_core, load_cached, save
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


def test_query_is_category_path_without_stopwords_or_duplicates():
    log = adapt(_raw(), AdaptConfig(k_core=0), DataReport("toy"))
    row = log.impressions.iloc[0]
    category = log.catalog.loc[row["target"], "category"]
    assert row["query"] == f"beauty skin care cream {category[-1].split()[-1]}"
    assert "alpha" in category[-1] or "beta" in category[-1] or "gamma" in category[-1]


def test_query_falls_back_to_title_terms_without_category():
    log = adapt(_raw(with_category=False), AdaptConfig(k_core=0, query_fallback_terms=3), DataReport("toy"))
    assert log.impressions.iloc[0]["query"] == "night cream number"  # "the" is a stop-word


def test_bm25_exposures_exclude_the_click_and_are_lexical_matches():
    log = adapt(_raw(), AdaptConfig(k_core=0, n_exposures=3), DataReport("toy"))
    for target, exposures in zip(log.impressions["target"], log.impressions["exposures"], strict=True):
        assert target not in exposures
        assert len(exposures) == 3
    # the query "... cream alpha" must expose the other "Cream alpha" items first
    row = log.impressions[log.impressions["target"] == 0].iloc[0]
    same_leaf = set(log.catalog.index[log.catalog["category"].map(lambda c: c[-1] == "Cream alpha")]) - {0}
    assert set(row["exposures"][: len(same_leaf)]) == same_leaf


def test_id_only_source_has_no_query_and_no_exposures():
    log = adapt(_raw(has_text=False), AdaptConfig(k_core=0), DataReport("toy"))
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
    (tmp_path / "cache" / "impressions.parquet").write_bytes(b"garbage")
    assert load_cached(tmp_path / "cache") is None  # corrupt cache is rebuilt, not trusted
