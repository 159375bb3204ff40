"""Amazon Reviews 2018 (Ni, Li, McAuley, EMNLP 2019): reviews + optional product metadata.

Files under ``<root>/amazon2018/<Cat>/``: ``<Cat>_5.json.gz`` (5-core reviews; the full
``<Cat>.json.gz`` is used instead when only it is present) and ``meta_<Cat>.json.gz``. Both are
JSON lines. Differs from the 2014 loader in the meta format (real JSON; ``category`` is one flat
path, ``description`` a list) and from 2023 in the ids (``reviewerID``/``asin``, no parent).
Metadata is optional: without it the set is ID-only (``has_text`` False). Every review is a
positive interaction (the rating is not used), as in the sequential-recommendation literature.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmark.data.download import RemoteFile, ensure_files
from benchmark.data.loading import (
    Events,
    catalog_row,
    clean,
    clean_category,
    finish,
    first_image,
    meta_id,
    optional_file,
    parse_records,
    present,
    read_reviews,
)
from benchmark.data.report import DataReport
from benchmark.data.schema import RawLog

BASE = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
# sha256 of the official files, from the shared mirror (../shared/data/SHA256SUMS), which holds
# unmodified copies; categories not mirrored there are fetched unchecked (None).
SHA256 = {
    "AMAZON_FASHION_5.json.gz": "5c73b65d0a5cc5dcd905b75a87086c37513ff0d023b02b381e729ab8a9541cb6",
    "All_Beauty_5.json.gz": "4a6b1eb40c4f58328f3f34181a6ef00f8e3423d801128617cc408a83c9bd0027",
    "Gift_Cards_5.json.gz": "41e1f0e50d3c1c9d7d949fb6315944c8bde51ea6b7429a29fdd0d02cbc07ef25",
    "meta_Gift_Cards.json.gz": "07fd154b7275ab9b1537e3802913508c7a5f84ed00f73201cd3fa18b2b51b342",
    "Magazine_Subscriptions_5.json.gz": "95c124603d62d6acdfd1bd62284934fb6c513db836ea64c2e8176c14256426f2",
    "meta_Magazine_Subscriptions.json.gz": "147cb78dac0f9ce04849b196e2e13cad6a504bff45d53500b7a1fe8121d91595",
}


def _remote(category: str, name: str, folder: str) -> RemoteFile:
    return RemoteFile(f"amazon2018/{category}/{name}", f"{BASE}/{folder}/{name}", SHA256.get(name))


def FILES(category: str) -> list[RemoteFile]:  # noqa: N802 (the loader protocol's name)
    """The 5-core reviews and the metadata of one category, as published."""
    return [_remote(category, f"{category}_5.json.gz", "categoryFilesSmall"),
            _remote(category, f"meta_{category}.json.gz", "metaFiles2")]


def read_meta(path: Path, report: DataReport, wanted: set[str], parse=json.loads,
              kind: str = "bad_json") -> dict[str, dict]:
    """item -> catalog row, for the products in ``wanted`` (the interacted ones).

    Shared with the 2014 loader (``parse`` = ``ast.literal_eval`` there, ``categories`` a list
    of paths of which the first is taken, ``description`` a string, ``imUrl`` the image).
    """
    meta: dict[str, dict] = {}
    for lineno, rec in parse_records(path, report, parse, kind):
        asin = meta_id(rec.get("asin"), "asin", wanted, meta, report, path, lineno)
        if asin is None:
            continue
        if "categories" in rec:  # 2014: a list of paths; the first is the primary one
            paths = rec.get("categories") or []
            # a corrupt value (a number, a mapping) is not indexed: clean_category counts it
            nested = isinstance(paths, list) and paths and isinstance(paths[0], list)
            path_levels = paths[0] if nested else paths
        else:
            path_levels = rec.get("category") or []
        meta[asin] = catalog_row(
            asin,
            title=clean(rec.get("title"), report, "html_in_title", path, lineno),
            brand=clean(rec.get("brand"), report, "html_in_text", path, lineno),
            category=clean_category(path_levels, report, path, lineno),
            description=(clean(rec.get("description"), report, "html_in_text", path, lineno)
                         or clean(rec.get("feature"), report, "html_in_text", path, lineno)),
            image=first_image(rec.get("imageURLHighRes"), rec.get("image"), rec.get("imUrl")),
        )
    return meta


def load(root: Path, category: str, report: DataReport, *, allow_download: bool = True,
         timeout: float = 30) -> RawLog:
    root = Path(root)
    reviews_spec, meta_spec = FILES(category)
    full = f"amazon2018/{category}/{category}.json.gz"  # the full (not 5-core) review file
    if present(root, reviews_spec.relpath) is None and (root / full).is_file():
        reviews_spec = RemoteFile(full, f"{BASE}/categoryFiles/{category}.json.gz", None)
    rel = present(root, reviews_spec.relpath)
    if rel is not None and rel != reviews_spec.relpath:
        reviews_spec = RemoteFile(rel, None, None)
    fetched = ensure_files(root, [reviews_spec], allow_download=allow_download, timeout=timeout)
    report.stat("reviews_file", reviews_spec.relpath)
    events = Events()
    read_reviews(fetched[reviews_spec.relpath], report, events, json.loads,
                 user="reviewerID", item="asin", time="unixReviewTime")
    meta_path, meta_sum = optional_file(root, meta_spec, allow_download, report, timeout)
    fetched.sha256.update(meta_sum)
    meta = read_meta(meta_path, report, set(events.items)) if meta_path is not None else None
    return finish(f"amazon2018/{category}", events, meta, report, fetched,
                  has_text=meta is not None, has_timestamps=True, meta_file=meta_path or "")
