"""Adapt a loader's ``RawLog`` into the canonical ``SearchLog`` (DESIGN.md §2).

Public review data has no queries and no exposures; we adapt it the way the product-search
literature does (HEM, Ai et al. SIGIR 2017), and every choice here is a field of
``AdaptConfig`` that is recorded in the dataset card and in every run record:

1. k-core filter (users and items with at least ``k_core`` interactions, iterated to a fixed
   point). Skipped when the source publishes its own split, which k-core would break, and for
   sources marked ``skip_k_core`` (the embedded catalog, whose unseen items are the point).
2. query, by ``query`` mode (recorded in every record and card):
   - ``none``: no query (next-item recommendation, the setting SASRec and HLLM are published in);
   - ``coarse`` (the search default): the category path's deepest prefix (over its terms) that at
     least ``max(query_min_items, query_min_share * items)`` catalog items share, so a query names a
     group of items, never the target alone;
   - ``hem``: the full path (HEM, Ai et al. 2017); measured here it names the target so precisely
     that a no-learning rule beats every learned model, so it is shown apart as an easy setting.
   The path is the target's category path; a source that logs its searches (the embedded catalog)
   logs the searched path (``query_path``) and, for ``hem``, the typed query. A query is never built
   from a title: an item with no category path gives an empty query, and a source whose items have
   no category at all has no search mode (``search_modes``).
3. exposures = the top ``n_exposures`` of a BM25 ranker (bm25s, Lucene variant) for the target's
   full category path over the catalog text, minus the click: the hard negatives. They do not depend
   on the query mode (gAUC is comparable across modes) and never use the target's title: an item
   without a category path gets ``n_exposures`` items drawn by training popularity (fixed seed).
   Logged exposures are kept.
4. split: chronological leave-last-out per user (valid = second-last, test = last), or a global
   time split at timestamp quantiles, or the source's published split. The first event of a
   sequence has no history and is never an impression; it still counts as a training interaction.

The result is cached under ``<data root>/processed/<name>/<fingerprint>/``; the fingerprint hashes
the raw files' checksums, the loader's own config, this config and ``ADAPT_VERSION``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.download import sha256_file
from benchmark.data.report import DataError, DataReport
from benchmark.data.schema import CATALOG_COLUMNS, SPLITS, RawLog, SearchLog
from benchmark.data.text import terms
from benchmark.lexical import BM25Scorer

log = logging.getLogger(__name__)

ADAPT_VERSION = "2"  # bump whenever this module's output changes for the same inputs
# 2: query modes (none / coarse / hem), no title-term fallback, exposures from the full path only

QUERY_MODES = ("none", "coarse", "hem")
SEARCH_MODES = ("coarse", "hem")
EXPOSURE_SEED = 20261201  # the popularity-drawn exposures' own stream (data, never a model seed)


@dataclass
class AdaptConfig:
    k_core: int = 5  # min interactions per user and per item; 0 disables (published splits skip it)
    split: str = "leave_last_out"  # leave_last_out | global_time
    valid_frac: float = 0.1  # global_time only: share of the latest events in valid
    test_frac: float = 0.1  # global_time only: share of the latest events in test
    max_history: int = 50  # most recent history items kept per impression (SASRec's usual maxlen)
    n_exposures: int = 20  # BM25 hard negatives per impression
    query: str = "coarse"  # none | coarse | hem (see the module docstring)
    # coarse: a query names at least max(query_min_items, query_min_share * catalog items) items. 50 and
    # 2% keep a group well above one result page (HR@10) and large enough that popularity alone cannot
    # place the target in the top 50 of it (measured per dataset in its card: query_pop HR@50).
    query_min_items: int = 50
    query_min_share: float = 0.02
    max_text_chars: int = 512  # catalog text truncation (title + brand + category + description)
    min_user_events: int = 3  # shorter users cannot give a train, a valid and a test event

    def __post_init__(self) -> None:
        if self.query not in QUERY_MODES:
            raise ValueError(f"adapt.query must be one of {', '.join(QUERY_MODES)}, got {self.query!r}")
        if self.split not in ("leave_last_out", "global_time"):
            raise ValueError(f"adapt.split must be leave_last_out or global_time, got {self.split!r}")
        if self.query_min_items < 1 or not 0.0 <= self.query_min_share <= 1.0:
            raise ValueError("adapt.query_min_items must be >= 1 and adapt.query_min_share in [0, 1]")
        if not (0.0 < self.valid_frac and 0.0 < self.test_frac and self.valid_frac + self.test_frac < 1.0):
            raise ValueError(f"adapt.valid_frac and adapt.test_frac must be > 0 with a sum < 1, got "
                             f"{self.valid_frac}, {self.test_frac}")
        if self.k_core < 0:
            raise ValueError(f"adapt.k_core must be >= 0 (0 disables it), got {self.k_core}")
        for name in ("max_history", "n_exposures", "max_text_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"adapt.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_user_events < 3:  # a train, a valid and a test event
            raise ValueError(f"adapt.min_user_events must be >= 3, got {self.min_user_events}")


def fingerprint(raw: RawLog, config: AdaptConfig, source_config: dict | None = None) -> str:
    payload = {"name": raw.name, "raw_files": dict(sorted(raw.raw_files.items())), "adapt": asdict(config),
               "source_config": source_config or {}, "adapt_version": ADAPT_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sample_users(raw: RawLog, n: int) -> RawLog:
    """The raw log of a fixed subsample of ``n`` users: those with the smallest sha256 of their source
    id. Decided by the ids alone, before any model or result is seen, and the same for every model and
    seed (a dataset view, ``<name>@<n>users``); the catalog is then the items these users interacted
    with, as for any log."""
    users = pd.Series(raw.interactions["user_id"].astype(str).unique())
    if n >= len(users):
        return raw
    digest = users.map(lambda u: hashlib.sha256(u.encode()).hexdigest())
    keep = set(users[digest.argsort(kind="stable").to_numpy()[:n]])
    inter = raw.interactions[raw.interactions["user_id"].astype(str).isin(keep)].reset_index(drop=True)
    return dataclasses.replace(raw, interactions=inter)


def k_core(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively keep users and items with at least ``k`` interactions."""
    if k <= 1:
        return interactions
    frame = interactions
    while True:
        user_n = frame.groupby("user_id")["item_id"].transform("size")
        item_n = frame.groupby("item_id")["user_id"].transform("size")
        keep = (user_n >= k) & (item_n >= k)
        if keep.all():
            return frame
        frame = frame[keep]


def _item_text(row, max_chars: int) -> str:
    parts = [row.title, row.brand, " > ".join(row.category), row.description]
    return ". ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())[:max_chars]


def path_terms(path) -> list[str]:
    """A category path (a list of levels, or one flat level) as its terms, duplicates kept."""
    return terms(" ".join(path)) if len(path) else []


def coarse_threshold(n_items: int, config: AdaptConfig) -> int:
    return max(config.query_min_items, int(np.ceil(config.query_min_share * n_items)))


class QueryRule:
    """Maps a searched category path to the query of a mode, given the catalog's paths."""

    def __init__(self, catalog_paths: list, config: AdaptConfig):
        self.mode = config.query
        self.threshold = coarse_threshold(len(catalog_paths), config)
        self.prefix_items: dict[tuple[str, ...], int] = {}  # term prefix -> catalog items under it
        for path in catalog_paths:
            words = path_terms(path)
            for n in range(1, len(words) + 1):
                key = tuple(words[:n])
                self.prefix_items[key] = self.prefix_items.get(key, 0) + 1

    def __call__(self, path, typed: str | None = None) -> str:
        if self.mode == "none":
            return ""
        if self.mode == "hem" and typed is not None:
            return typed
        words = path_terms(path)
        if self.mode == "coarse":
            # deepest prefix shared by enough items; the shallowest one when none is (a tiny catalog)
            depth = max((n for n in range(1, len(words) + 1) if self.prefix_items.get(tuple(words[:n]), 0)
                         >= self.threshold), default=min(1, len(words)))
            words = words[:depth]
        return " ".join(dict.fromkeys(words))


def search_modes(catalog: pd.DataFrame, has_text: bool) -> list[str]:
    """The query modes a catalog supports: search modes need item category paths."""
    has_paths = has_text and any(len(c) for c in catalog["category"])
    return list(QUERY_MODES) if has_paths else ["none"]


def popularity_exposures(popularity: np.ndarray, targets: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` items per impression drawn without replacement in proportion to 1 + training clicks,
    the target excluded: the exposures of items with no category path to search by."""
    rng = np.random.default_rng(seed)
    weights = popularity.astype(np.float64) + 1.0
    k = min(n, len(weights) - 1)
    out = []
    for t in targets:
        w = weights.copy()
        w[t] = 0.0
        out.append(np.sort(rng.choice(len(w), size=k, replace=False, p=w / w.sum())).astype(np.int64))
    return out


def bm25_exposures(texts: list[str], queries: list[str], targets: np.ndarray, n: int) -> list[np.ndarray]:
    """Top-``n`` BM25 items for each impression's query, the clicked item removed.

    Queries repeat (one per target item, and category paths are shared), so each distinct query
    is retrieved once.
    """
    if n <= 0 or not texts:
        return [np.zeros(0, dtype=np.int64) for _ in targets]
    distinct = sorted({q for q in queries if q})
    ranked = dict(zip(distinct, BM25Scorer(texts).top(distinct, n + 1), strict=True))
    empty = np.zeros(0, dtype=np.int64)
    return [ranked[q][ranked[q] != t][:n] if q in ranked else empty
            for q, t in zip(queries, targets, strict=True)]


def adapt(raw: RawLog, config: AdaptConfig, report: DataReport) -> SearchLog:
    """RawLog -> SearchLog. Deterministic: every ordering is by value, never by hash."""
    inter = raw.interactions.copy()
    preset = "split" in inter.columns and inter["split"].notna().all()
    if config.split == "global_time" and not raw.has_timestamps:
        raise DataError(f"[{raw.name}] split=global_time needs timestamps; this source only has an order. "
                        "Use split=leave_last_out.")
    apply_k_core = not preset and not raw.skip_k_core
    if apply_k_core:
        before = len(inter)
        inter = k_core(inter, config.k_core)
        report.stat("removed_by_k_core", before - len(inter))
    inter = inter.sort_values(["user_id", "timestamp", "order"], kind="stable")
    counts = inter.groupby("user_id")["item_id"].transform("size")
    short = counts < config.min_user_events
    if short.any():
        for _ in range(int(short.groupby(inter["user_id"]).first().sum())):
            report.issue("user_too_short_to_split", detail=f"< {config.min_user_events} events")
        inter = inter[~short]
    if inter.empty:
        raise DataError(f"[{raw.name}] no interactions left after filtering (k_core={config.k_core}, "
                        f"min_user_events={config.min_user_events})")

    # Catalog: the interacted items, indexed by sorted source id.
    raw_catalog = raw.catalog.drop_duplicates("item_id").set_index("item_id")
    item_ids = np.array(sorted(inter["item_id"].unique()))
    missing = set(item_ids) - set(raw_catalog.index)
    if missing:
        raise DataError(f"[{raw.name}] {len(missing)} interacted items are missing from the loader's catalog "
                        f"(e.g. {sorted(missing)[:3]}); loaders must add a row per interacted item")
    cat = raw_catalog.loc[item_ids].reset_index()
    cat["category"] = [list(c) if isinstance(c, list | tuple | np.ndarray) else [] for c in cat["category"]]
    for col in ("title", "brand", "description"):
        cat[col] = cat[col].fillna("").astype(str)
    catalog = pd.DataFrame({
        "item": np.arange(len(cat), dtype=np.int64), "item_id": cat["item_id"].astype(str),
        "title": cat["title"], "text": [_item_text(r, config.max_text_chars) for r in cat.itertuples()],
        "category": cat["category"], "image": cat["image"].where(cat["image"].notna(), None),
        "brand": cat["brand"],
    })
    index_of = pd.Series(catalog["item"].to_numpy(), index=catalog["item_id"].to_numpy())
    user_ids = sorted(inter["user_id"].unique())
    user_of = {u: i for i, u in enumerate(user_ids)}

    inter = inter.assign(item=index_of.loc[inter["item_id"].astype(str)].to_numpy(),
                         user=inter["user_id"].map(user_of).to_numpy())
    inter["position"] = inter.groupby("user").cumcount()
    inter["length"] = inter.groupby("user")["item"].transform("size")
    if preset:
        split = inter["split"].astype(str).to_numpy()
        bad = ~np.isin(split, SPLITS)
        if bad.any():
            raise DataError(f"[{raw.name}] published split has labels {sorted(set(split[bad]))}; valid: {SPLITS}")
    elif config.split == "leave_last_out":
        split = np.where(inter["position"] == inter["length"] - 1, "test",
                         np.where(inter["position"] == inter["length"] - 2, "valid", "train"))
    elif config.split == "global_time":
        ts = inter["timestamp"].to_numpy()
        t_valid, t_test = np.quantile(ts, [1 - config.valid_frac - config.test_frac, 1 - config.test_frac])
        split = np.where(ts > t_test, "test", np.where(ts > t_valid, "valid", "train"))
    else:
        raise DataError(f"unknown split {config.split!r}; valid: leave_last_out, global_time")
    inter["split"] = split

    # Training interaction counts per item (position 0 included): defines the tail slice.
    train_count = np.bincount(inter.loc[inter["split"] == "train", "item"], minlength=len(catalog))
    catalog["train_count"] = train_count

    modes = search_modes(catalog, raw.has_text)
    if config.query not in modes:
        raise DataError(f"[{raw.name}] adapt.query={config.query!r} needs item category paths, which this "
                        f"source lacks; its only mode is {modes}. Never fall back to title terms: the title "
                        "names the target.")
    rule = QueryRule(catalog["category"].tolist(), config)
    impressions = _impressions(inter, config)
    targets = impressions["target"].to_numpy()
    rows = inter["position"] > 0
    logged_paths = "query_path" in inter.columns and inter["query_path"].notna().all()
    paths = (inter.loc[rows, "query_path"].tolist() if logged_paths
             else [catalog["category"].iat[t] for t in targets])
    typed = (inter.loc[rows, "query"].astype(str).tolist() if "query" in inter.columns
             and inter["query"].notna().all() else [None] * len(targets))
    impressions["query"] = [rule(p, q) for p, q in zip(paths, typed, strict=True)]
    if "exposures" in inter.columns:
        logged = inter.loc[rows, "exposures"].tolist()
        impressions["exposures"] = [
            np.array([index_of[i] for i in (ex if isinstance(ex, list | tuple | np.ndarray) else [])
                      if i in index_of.index and index_of[i] != t], dtype=np.int64)
            for ex, t in zip(logged, targets, strict=True)]
        exposure_source = "logged"
    elif raw.has_text:
        # the target's full path, whatever the mode: exposures (and gAUC) are the same in every mode
        full = [" ".join(dict.fromkeys(path_terms(catalog["category"].iat[t]))) for t in targets]
        exposures = bm25_exposures(catalog["text"].tolist(), full, targets, config.n_exposures)
        no_path = [i for i, q in enumerate(full) if not q]
        drawn = popularity_exposures(train_count, targets[no_path], config.n_exposures, EXPOSURE_SEED)
        for i, ex in zip(no_path, drawn, strict=True):
            exposures[i] = ex
        impressions["exposures"] = exposures
        exposure_source = "bm25 of the target's full category path" + (
            f"; popularity draw for the {len(no_path)} impressions whose target has none" if no_path else "")
    else:
        impressions["exposures"] = [np.zeros(0, dtype=np.int64)] * len(impressions)
        exposure_source = "none (ID-only source)"
    catalog["query"] = [rule(c) for c in catalog["category"]]  # the query an item gets as a target

    search_log = SearchLog(
        name=raw.name, catalog=catalog, impressions=impressions[IMPRESSION_ORDER], n_users=len(user_ids),
        has_text=raw.has_text, fingerprint="", user_ids=[str(u) for u in user_ids],
        adaptation={**asdict(config), "split_source": "published" if preset else config.split,
                    "exposure_source": exposure_source, "k_core_applied": apply_k_core,
                    "query_modes": modes, "query_source": "logged search path" if logged_paths
                    else "target's category path", "coarse_min_items": rule.threshold},
    )
    check_no_leakage(search_log)
    for name, value in data_stats(search_log).items():
        report.stat(name, value)
    return search_log


IMPRESSION_ORDER = ["user", "timestamp", "position", "query", "history", "target", "exposures", "split"]


def _impressions(inter: pd.DataFrame, config: AdaptConfig) -> pd.DataFrame:
    """One impression per event with a non-empty history; history = the most recent earlier items."""
    rows = {"user": [], "timestamp": [], "position": [], "history": [], "target": [], "split": []}
    for _, g in inter.groupby("user", sort=True):
        items = g["item"].to_numpy(dtype=np.int64)
        for pos in range(1, len(items)):
            rows["user"].append(int(g["user"].iat[pos]))
            rows["timestamp"].append(int(g["timestamp"].iat[pos]))
            rows["position"].append(pos)
            rows["history"].append(items[max(0, pos - config.max_history):pos])
            rows["target"].append(int(items[pos]))
            rows["split"].append(g["split"].iat[pos])
    return pd.DataFrame(rows)


def check_no_leakage(log_: SearchLog) -> None:
    """Fail loudly if an evaluated event could see its own future.

    Per user: every train impression precedes every valid one, which precedes every test one;
    no history contains its target.
    """
    imp = log_.impressions
    order = {"train": 0, "valid": 1, "test": 2}
    rank = imp["split"].map(order).to_numpy()
    by_user = pd.DataFrame({"user": imp["user"].to_numpy(), "pos": imp["position"].to_numpy(), "rank": rank})
    by_user = by_user.sort_values(["user", "pos"])
    steps = np.diff(by_user["rank"].to_numpy())
    same_user = np.diff(by_user["user"].to_numpy()) == 0
    if log_.adaptation.get("split") != "global_time" and np.any(steps[same_user] < 0):
        raise DataError(f"[{log_.name}] leakage: an evaluated event precedes a training event of the same user")
    for hist, target in zip(imp["history"], imp["target"], strict=True):
        if target in hist:
            raise DataError(f"[{log_.name}] leakage: a history contains its own target item {target}")


def data_stats(log_: SearchLog) -> dict:
    imp = log_.impressions
    stats = {"users": log_.n_users, "items": log_.n_items, "impressions": len(imp)}
    for s in SPLITS:
        stats[f"{s}_impressions"] = int((imp["split"] == s).sum())
    stats["mean_exposures"] = round(float(np.mean([len(e) for e in imp["exposures"]])), 2) if len(imp) else 0.0
    test = imp[imp["split"] == "test"]
    tail = log_.catalog["train_count"].to_numpy()[test["target"].to_numpy()] <= 5
    stats["test_tail_share"] = round(float(tail.mean()), 4) if len(test) else 0.0
    stats.update(query_stats(log_))
    return stats


def query_stats(log_: SearchLog) -> dict:
    """What the query gives away, before any model: distinct test queries, and how many catalog items
    match a query (every query term in the item's category path; the median over test impressions)."""
    test = log_.split("test")
    queries = test["query"].astype(str)
    if not log_.has_text or not (queries != "").any():
        return {"distinct_queries": 0, "median_items_per_query": None, "empty_query_share": 1.0}
    paths = [" ".join(c) for c in log_.catalog["category"]]
    matches = query_matches(paths, sorted(set(queries) - {""}))
    sizes = [int(matches[q].sum()) for q in queries if q]
    return {"distinct_queries": int(queries[queries != ""].nunique()),
            "median_items_per_query": float(np.median(sizes)),
            "empty_query_share": round(float((queries == "").mean()), 4)}


def query_matches(texts: list[str], queries: list[str]) -> dict[str, np.ndarray]:
    """query -> (N,) bool: the items whose text holds every term of the query (boolean AND)."""
    postings: dict[str, set[int]] = {}
    for i, text in enumerate(texts):
        for t in set(terms(text)):
            postings.setdefault(t, set()).add(i)
    out = {}
    for q in queries:
        mask = np.zeros(len(texts), dtype=bool)
        words = set(terms(q))
        if words:
            hit = set.intersection(*(postings.get(t, set()) for t in words))
            mask[list(hit)] = True
        out[q] = mask
    return out


PROCESSED_FILES = ("catalog.parquet", "impressions.parquet")


def save(log_: SearchLog, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    cat = log_.catalog.copy()
    imp = log_.impressions.copy()
    cat.to_parquet(tmp / "catalog.parquet", index=False)
    imp.to_parquet(tmp / "impressions.parquet", index=False)
    meta = {"name": log_.name, "n_users": log_.n_users, "has_text": log_.has_text,
            "fingerprint": log_.fingerprint, "adaptation": log_.adaptation, "user_ids": log_.user_ids,
            "sha256": {f: sha256_file(tmp / f) for f in PROCESSED_FILES}}
    (tmp / "meta.json").write_text(json.dumps(meta))
    for f in tmp.iterdir():
        f.replace(folder / f.name)
    tmp.rmdir()


def load_cached(folder: Path) -> SearchLog | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        sums = meta.get("sha256") or {}
        altered = [f for f in PROCESSED_FILES if sums.get(f) != sha256_file(folder / f)]
        if altered:  # truncated, altered, or written before caches were sealed: rebuilt, never read
            log.warning("processed cache %s: %s do not match their checksums; rebuilding", folder, altered)
            return None
        cat = pd.read_parquet(folder / "catalog.parquet")
        imp = pd.read_parquet(folder / "impressions.parquet")
    except Exception as err:  # a corrupt cache is rebuilt, not trusted
        log.warning("ignoring unreadable processed cache %s: %s", folder, err)
        return None
    missing = set(CATALOG_COLUMNS) - set(cat.columns)
    if missing:  # written before a column was added: rebuilt (same data, so the same fingerprint)
        log.info("processed cache %s lacks %s; rebuilding it", folder, sorted(missing))
        return None
    cat["category"] = cat["category"].map(list)
    for col in ("history", "exposures"):
        imp[col] = imp[col].map(lambda a: np.asarray(a, dtype=np.int64))
    return SearchLog(name=meta["name"], catalog=cat, impressions=imp, n_users=meta["n_users"],
                     has_text=meta["has_text"], fingerprint=meta["fingerprint"],
                     adaptation=meta["adaptation"], user_ids=meta["user_ids"])
