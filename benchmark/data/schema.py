"""The two data contracts of the harness.

``RawLog`` is what a *loader* returns: the source's catalog and its positive interactions,
nothing adapted yet (ids are the source's strings). ``SearchLog`` is the canonical search log of
DESIGN.md §2 that every model and evaluator consumes: contiguous integer ids, a query and
exposed-but-unclicked items per impression, and a split label. Only ``benchmark.data.adapt``
turns the first into the second, so nothing downstream knows the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# RawLog.catalog columns. ``category`` is a list of path levels, root first (may be empty);
# ``image`` a local path or URL (None when the source has none).
RAW_CATALOG_COLUMNS = ["item_id", "title", "brand", "category", "description", "image"]
# RawLog.interactions columns. ``timestamp`` is an int (seconds, or the file's order when the
# source has no clock); ``order`` keeps the source's order to break timestamp ties.
RAW_INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "order"]
# Optional RawLog.interactions columns: ``query`` (the typed str), ``query_path`` (the searched
# category path, a list of levels) and ``exposures`` (list of item_id str) when the source logs them
# (the embedded catalog does), ``split`` when the source publishes its own split (train/valid/test),
# which then replaces the adapter's.
OPTIONAL_INTERACTION_COLUMNS = ["query", "query_path", "exposures", "split"]

# SearchLog.catalog columns: ``item`` is the contiguous index 0..N-1 used everywhere downstream.
# ``query``: the query of the log's mode that the item gets as a target ("" in mode none).
# ``brand``: the source's brand ("" when it has none).
CATALOG_COLUMNS = ["item", "item_id", "title", "text", "category", "image", "query", "brand"]
# SearchLog.impressions columns: ``history`` and ``exposures`` are int64 numpy arrays of ``item``.
IMPRESSION_COLUMNS = ["user", "timestamp", "query", "history", "target", "exposures", "split"]
SPLITS = ("train", "valid", "test")


@dataclass
class RawLog:
    """What a loader yields: the source's own catalog and interaction table."""

    name: str
    catalog: pd.DataFrame  # RAW_CATALOG_COLUMNS
    interactions: pd.DataFrame  # RAW_INTERACTION_COLUMNS (+ optional ones)
    has_text: bool  # False for ID-only sources (no titles: no query, no BM25, no JS@K)
    has_timestamps: bool  # False when ``timestamp`` is only the file order
    # True when the source is already filtered as intended and k-core must not touch it (the
    # embedded catalog: k-core would delete the rare and unseen items it is built to contain).
    skip_k_core: bool = False
    raw_files: dict[str, str] = field(default_factory=dict)  # file name -> sha256 of what was read
    report: Any = None  # a benchmark.data.report.DataReport


@dataclass
class SearchLog:
    """The canonical search log (DESIGN.md §2)."""

    name: str
    catalog: pd.DataFrame  # CATALOG_COLUMNS, row i has item == i
    impressions: pd.DataFrame  # IMPRESSION_COLUMNS
    n_users: int
    has_text: bool
    fingerprint: str  # raw checksums + adaptation config + code version
    adaptation: dict = field(default_factory=dict)  # the resolved adaptation config, for records
    user_ids: list[str] = field(default_factory=list)  # user index -> source user id

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return self.impressions[self.impressions["split"] == name]


def train_popularity(log: SearchLog) -> np.ndarray:
    """``pop_i`` = number of train-split impressions whose target is item i, shape (N,) int64."""
    tr = log.split("train")["target"].to_numpy().astype(np.int64)
    return np.bincount(tr, minlength=log.n_items).astype(np.int64)
