"""Amazon Reviews 2014 (McAuley et al., SIGIR 2015; He & McAuley, WWW 2016).

Files under ``<root>/amazon2014/<Cat>/``: ``reviews_<Cat>_5.json.gz`` (JSON lines: reviewerID,
asin, overall, unixReviewTime, ...) and ``meta_<Cat>.json.gz``, whose lines are *Python
literals* (single quotes), not JSON: they are parsed with ``ast.literal_eval`` (never ``eval``)
and a line it rejects is counted as ``bad_literal``. Unlike 2018, ``categories`` is a list of
paths (the first, primary one is used) and ``description`` a string. Timestamps have day
resolution, so ties are frequent; the file order breaks them.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from benchmark.data.amazon2018 import read_meta
from benchmark.data.download import RemoteFile, ensure_files
from benchmark.data.loading import Events, finish, optional_file, present, read_reviews
from benchmark.data.report import DataReport
from benchmark.data.schema import RawLog

BASE = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"


def FILES(category: str) -> list[RemoteFile]:  # noqa: N802 (the loader protocol's name)
    """Reviews (5-core) and metadata of one category. No checksums are published, and the
    shared mirror holds no 2014 raw file, so they are fetched unchecked (recorded when read)."""
    return [RemoteFile(f"amazon2014/{category}/reviews_{category}_5.json.gz",
                       f"{BASE}/reviews_{category}_5.json.gz", None),
            RemoteFile(f"amazon2014/{category}/meta_{category}.json.gz",
                       f"{BASE}/meta_{category}.json.gz", None)]


def _literal(line: str):
    return ast.literal_eval(line)


def load(root: Path, category: str, report: DataReport, *, allow_download: bool = True,
         timeout: float = 30) -> RawLog:
    root = Path(root)
    reviews_spec, meta_spec = FILES(category)
    rel = present(root, reviews_spec.relpath)
    if rel is not None and rel != reviews_spec.relpath:
        reviews_spec = RemoteFile(rel, None, None)
    fetched = ensure_files(root, [reviews_spec], allow_download=allow_download, timeout=timeout)
    events = Events()
    read_reviews(fetched[reviews_spec.relpath], report, events, json.loads,
                 user="reviewerID", item="asin", time="unixReviewTime")
    meta_path, meta_sum = optional_file(root, meta_spec, allow_download, report, timeout)
    fetched.sha256.update(meta_sum)
    meta = (read_meta(meta_path, report, set(events.items), parse=_literal, kind="bad_literal")
            if meta_path is not None else None)
    return finish(f"amazon2014/{category}", events, meta, report, fetched,
                  has_text=meta is not None, has_timestamps=True, meta_file=meta_path or "")
