"""The embedded synthetic search log: determinism, integrity, images, and that semantics matter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.data.report import DataReport
from benchmark.data.schema import RAW_CATALOG_COLUMNS, RAW_INTERACTION_COLUMNS
from benchmark.data.synthetic import SyntheticConfig, fingerprint, generate, load
from benchmark.data.text import unique_terms

SMALL = SyntheticConfig(n_items=300, n_users=120, min_events=4, max_events=10, n_exposures=12,
                        image_size=32, seed=7)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    report = DataReport("synthetic")
    return root, load(root, SMALL, report), report


def _train_mask(inter: pd.DataFrame, window: int) -> pd.Series:
    """True for each user's events before the last ``window`` (the training events)."""
    from_end = inter.sort_values(["timestamp", "order"]).groupby("user_id").cumcount(ascending=False)
    return from_end.reindex(inter.index) >= window


def test_determinism_frames_and_image_bytes(small, tmp_path):
    root, log, _ = small
    again = load(tmp_path, SMALL, DataReport("synthetic"))
    pd.testing.assert_frame_equal(log.interactions, again.interactions)
    pd.testing.assert_frame_equal(log.catalog.drop(columns="image"), again.catalog.drop(columns="image"))
    for a, b in zip(log.catalog["image"], again.catalog["image"], strict=True):
        assert a != b and Path(a).read_bytes() == Path(b).read_bytes()
    other = generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 8}))
    assert not other.interactions["item_id"].equals(log.interactions["item_id"])
    assert fingerprint(SMALL) != fingerprint(SyntheticConfig(**{**SMALL.__dict__, "seed": 8}))


def test_contract_columns_and_flags(small):
    _, log, report = small
    assert list(log.catalog.columns) == RAW_CATALOG_COLUMNS
    assert list(log.interactions.columns) == RAW_INTERACTION_COLUMNS + ["query", "query_path", "exposures"]
    assert log.has_text and log.has_timestamps and log.raw_files == {}
    assert "generated" in report.stats and report.stats["interactions"] == len(log.interactions)
    assert all(isinstance(c, list) and len(c) == 3 for c in log.catalog["category"])
    assert log.interactions["user_id"].map(type).eq(str).all()
    assert log.interactions["timestamp"].map(type).isin([int, np.int64]).all()


def test_catalog_unique_and_covers_interactions(small):
    _, log, _ = small
    ids = log.catalog["item_id"]
    assert ids.is_unique and len(ids) == SMALL.n_items
    assert set(log.interactions["item_id"]) <= set(ids)
    exposed = {e for ex in log.interactions["exposures"] for e in ex}
    assert exposed <= set(ids)


def test_images_are_real_pngs_of_configured_size(small):
    root, log, _ = small
    images = log.catalog["image"]
    assert all(Path(p).parent == Path(root) / "synthetic" / fingerprint(SMALL) / "images" for p in images)
    for p in images:
        assert Path(p).read_bytes()[:8] == PNG_MAGIC
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == (SMALL.image_size, SMALL.image_size)
    # Distinct products look distinct: far more distinct images than leaf categories.
    assert len({Path(p).read_bytes() for p in images}) > 0.9 * len(images)


def test_rerender_skipped_when_present(small):
    root, log, _ = small
    path = Path(log.catalog["image"].iloc[0])
    mtime = path.stat().st_mtime_ns
    load(root, SMALL, DataReport("synthetic"))
    assert path.stat().st_mtime_ns == mtime


def test_events_well_formed(small):
    _, log, _ = small
    inter = log.interactions
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert inter["order"].is_unique
    per_user = inter.sort_values("order").groupby("user_id")["timestamp"]
    assert per_user.apply(lambda s: s.is_monotonic_increasing).all()
    counts = inter.groupby("user_id").size()
    assert counts.between(SMALL.min_events, SMALL.max_events).all() and len(counts) == SMALL.n_users
    assert inter["timestamp"].duplicated().any()  # ties across users exist (order breaks them)
    assert inter["query"].str.strip().str.len().gt(0).all()
    for click, ex in zip(inter["item_id"], inter["exposures"], strict=True):
        assert click not in ex and len(ex) == SMALL.n_exposures - 1 and len(set(ex)) == len(ex)


def test_new_items_only_in_the_release_window(small):
    _, log, _ = small
    world = generate(SMALL)
    assert world.is_new.sum() == round(SMALL.new_item_share * SMALL.n_items)
    new_ids = set(world.catalog["item_id"][world.is_new])
    inter = log.interactions
    train = inter[_train_mask(inter, SMALL.new_item_window)]
    assert not train["item_id"].isin(new_ids).any()
    assert not any(e in new_ids for ex in train["exposures"] for e in ex)
    # ... yet the window (valid/test) does click some of them, and every window event is later
    # than every training event (so a global time split is leak-free too).
    window = inter.drop(train.index)
    assert window["item_id"].isin(new_ids).any()
    assert window["timestamp"].min() >= train["timestamp"].max()


def test_semantics_matter(small):
    _, log, _ = small
    cat_terms = {i: set(unique_terms(" ".join(c))) for i, c in zip(log.catalog["item_id"], log.catalog["category"], strict=True)}
    rng = np.random.default_rng(0)
    clicked, exposed = [], []
    for q, click, ex in zip(log.interactions["query"], log.interactions["item_id"], log.interactions["exposures"], strict=True):
        q = set(q.split())
        clicked.append(len(q & cat_terms[click]))
        exposed.append(len(q & cat_terms[ex[rng.integers(len(ex))]]))
    assert np.mean(clicked) > np.mean(exposed) + 0.2


def test_default_config_shape():
    cfg = SyntheticConfig()
    world = generate(cfg)
    inter = world.interactions
    assert len(world.catalog) == 1500 and inter["user_id"].nunique() == 1200
    assert world.is_new.sum() == 150
    clicks = inter["item_id"].value_counts()
    top_share = clicks.iloc[:150].sum() / len(inter)
    assert 0.3 < top_share < 0.7  # a long tail: top-10% items take a large, not total, share
    assert len(clicks) > 0.9 * cfg.n_items  # ... and the tail is still clicked


def test_config_validation():
    with pytest.raises(ValueError):
        SyntheticConfig(min_events=2, new_item_window=2)
    with pytest.raises(ValueError):
        SyntheticConfig(new_item_share=1.0)
