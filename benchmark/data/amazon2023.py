"""Amazon Reviews 2023 (Hou et al., 2024), in whichever of three layouts is present.

Files under ``<root>/amazon2023/<Cat>/``; the layout used is recorded as ``report.stats["layout"]``:
- ``official_split``: the published benchmark split ``<Cat>.{train,valid,test}.csv[.gz]``
  (user_id, parent_asin, rating, timestamp in ms[, history]) + ``meta_<Cat>.jsonl.gz``. The
  split file of each row becomes the ``split`` column. This is what ``FILES`` downloads.
- ``third_party_split``: the same split CSVs + ``filterd_meta_items.csv`` (title, description,
  price, details as a Python-literal dict, parent_asin), as in the shared All_Beauty copy.
  ``details`` is parsed with ``ast.literal_eval`` (never ``eval``); brand = details["Brand"].
- ``official_raw``: ``<Cat>.jsonl.gz`` reviews (user_id, parent_asin, timestamp in ms) +
  ``meta_<Cat>.jsonl.gz``; no published split.
Items are ``parent_asin`` (variants merged, as the 2023 benchmark does). Timestamps are turned
from milliseconds into seconds. Unlike 2018, ``categories`` is often empty in 2023; it is kept
as is (``main_category`` is one value per corpus and would make every query the same).
"""

from __future__ import annotations

import ast
import csv
import io
import json
from pathlib import Path

from benchmark.data.download import RemoteFile, ensure_files
from benchmark.data.loading import (
    Events,
    catalog_row,
    check_split_order,
    clean,
    clean_category,
    finish,
    first_image,
    meta_id,
    open_binary,
    optional_file,
    parse_records,
    present,
    read_lines,
    read_reviews,
    to_int,
)
from benchmark.data.report import DataError, DataReport
from benchmark.data.schema import RawLog

BASE = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023"
SPLITS = ("train", "valid", "test")
SPLIT_COLUMNS = ("user_id", "parent_asin", "timestamp")  # required; rating and history are not used
THIRD_PARTY_META = "filterd_meta_items.csv"  # sic: the third party's file name


def _rel(category: str, name: str) -> str:
    return f"amazon2023/{category}/{name}"


def FILES(category: str, layout: str = "official_split") -> list[RemoteFile]:  # noqa: N802
    """Official files: the 0-core last-out benchmark split (with histories) + metadata, or with
    ``layout="official_raw"`` the raw reviews + metadata. No checksums are published (and the
    shared copy is a third party's, not these files), so they are fetched unchecked."""
    meta = RemoteFile(_rel(category, f"meta_{category}.jsonl.gz"),
                      f"{BASE}/raw/meta_categories/meta_{category}.jsonl.gz", None)
    if layout == "official_raw":
        return [RemoteFile(_rel(category, f"{category}.jsonl.gz"),
                           f"{BASE}/raw/review_categories/{category}.jsonl.gz", None), meta]
    if layout != "official_split":
        raise ValueError(f"unknown amazon2023 layout {layout!r}; valid: official_split, official_raw")
    return [RemoteFile(_rel(category, f"{category}.{s}.csv.gz"),
                       f"{BASE}/benchmark/0core/last_out_w_his/{category}.{s}.csv.gz", None)
            for s in SPLITS] + [meta]


def _decode_whole(path: Path, report: DataReport) -> str:
    """A whole (small) file as text; non-UTF-8 bytes replaced and counted with their line."""
    try:
        with open_binary(path) as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc} (truncated or corrupt file?)") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.issue("non_utf8", path, data.count(b"\n", 0, exc.start) + 1, f"byte {exc.start}")
        return data.decode("utf-8", errors="replace")


def read_split(path: Path, split: str, report: DataReport, events: Events) -> None:
    """One benchmark split CSV: a header, then one interaction per line (no quoted newlines)."""
    header = None
    for lineno, line in read_lines(path, report):
        try:
            fields = next(csv.reader([line]))
        except csv.Error as exc:  # e.g. a bare carriage return inside a line
            if header is None:
                raise DataError(f"{path}:{lineno}: unreadable header ({exc})") from exc
            report.issue("bad_row", path, lineno, f"{exc}: {line[:60]!r}")
            continue
        if header is None:
            header = [f.strip() for f in fields]
            lacking = [c for c in SPLIT_COLUMNS if c not in header]
            if lacking:
                raise DataError(f"{path}:{lineno}: header lacks column(s) {', '.join(lacking)} "
                                f"(found {', '.join(header)})")
            col = {c: header.index(c) for c in SPLIT_COLUMNS}
            continue
        if len(fields) < len(header) - 1:  # a trailing empty history may be cut by some writers
            report.issue("bad_row", path, lineno, f"{len(fields)} fields, expected {len(header)}")
            continue
        user, item, t = (fields[col[c]].strip() if col[c] < len(fields) else "" for c in SPLIT_COLUMNS)
        lacking = [c for c, v in zip(SPLIT_COLUMNS, (user, item, t), strict=True) if not v]
        if lacking:
            report.issue("missing_field", path, lineno, f"no {', '.join(lacking)}")
            continue
        ts = to_int(t)
        if ts is None:
            report.issue("bad_timestamp", path, lineno, f"timestamp={t!r}")
            continue
        events.add(user, item, ts // 1000, path, lineno, split)
    if header is None:
        raise DataError(f"{path} is empty (no header)")


def read_meta_jsonl(path: Path, report: DataReport, wanted: set[str]) -> dict[str, dict]:
    """Official 2023 metadata (JSON lines keyed by parent_asin) -> catalog rows."""
    meta: dict[str, dict] = {}
    for lineno, rec in parse_records(path, report, json.loads):
        item = meta_id(rec.get("parent_asin"), "parent_asin", wanted, meta, report, path, lineno)
        if item is None:
            continue
        details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
        meta[item] = catalog_row(
            item,
            title=clean(rec.get("title"), report, "html_in_title", path, lineno),
            brand=clean(rec.get("store") or details.get("Brand"), report, "html_in_text", path, lineno),
            category=clean_category(rec.get("categories"), report, path, lineno),
            description=(clean(rec.get("description"), report, "html_in_text", path, lineno)
                         or clean(rec.get("features"), report, "html_in_text", path, lineno)),
            image=first_image(rec.get("images")),
        )
    return meta


def read_meta_csv(path: Path, report: DataReport, wanted: set[str]) -> dict[str, dict]:
    """The third party's ``filterd_meta_items.csv`` -> catalog rows (no category, no image). A row
    the csv module rejects (a bare carriage return) or whose fields do not line up with the header
    (the columns would shift) is ``bad_row``, at the line the row ends on."""
    rows = csv.reader(io.StringIO(_decode_whole(path, report)))
    try:
        header = next(rows, [])
    except csv.Error as exc:
        raise DataError(f"{path}:1: unreadable header ({exc})") from exc
    if "parent_asin" not in header or "title" not in header:
        raise DataError(f"{path}:1: header lacks parent_asin/title (found {header})")
    meta: dict[str, dict] = {}
    while True:
        try:
            fields = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:
            report.issue("bad_row", path, rows.line_num, str(exc))
            continue
        lineno = rows.line_num
        if not fields:  # a blank line
            continue
        if len(fields) != len(header):
            report.issue("bad_row", path, lineno, f"{len(fields)} fields, expected {len(header)}")
            continue
        rec = dict(zip(header, fields, strict=True))
        item = meta_id(rec.get("parent_asin"), "parent_asin", wanted, meta, report, path, lineno)
        if item is None:
            continue
        details: dict = {}
        raw_details = (rec.get("details") or "").strip()
        if raw_details:
            try:
                parsed = ast.literal_eval(raw_details)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                parsed = None
            if isinstance(parsed, dict):
                details = parsed
            else:
                report.issue("bad_literal", path, lineno, f"details {raw_details[:60]!r}")
        meta[item] = catalog_row(
            item,
            title=clean(rec.get("title"), report, "html_in_title", path, lineno),
            brand=clean(details.get("Brand"), report, "html_in_text", path, lineno),
            description=clean(rec.get("description"), report, "html_in_text", path, lineno),
        )
    return meta


def _split_files(root: Path, category: str) -> list[str] | None:
    found = [present(root, _rel(category, f"{category}.{s}.csv.gz")) for s in SPLITS]
    return found if all(found) else None


def load(root: Path, category: str, report: DataReport, *, allow_download: bool = True,
         timeout: float = 30) -> RawLog:
    root = Path(root)
    events = Events()
    split_rels = _split_files(root, category)
    raw_rel = present(root, _rel(category, f"{category}.jsonl.gz"))
    meta_spec = FILES(category)[-1]
    third_party = root / _rel(category, THIRD_PARTY_META)
    if split_rels is None and raw_rel is not None:
        layout = "official_raw"
        fetched = ensure_files(root, [RemoteFile(raw_rel, None, None)], allow_download=False)
        read_reviews(fetched[raw_rel], report, events, json.loads,
                     user="user_id", item="parent_asin", time="timestamp", time_scale=1000)
    else:
        if split_rels is None:  # nothing local: fetch the official split
            specs = FILES(category)[:3]
        else:
            specs = [RemoteFile(rel, None, None) for rel in split_rels]
        fetched = ensure_files(root, specs, allow_download=allow_download, timeout=timeout)
        for split, spec in zip(SPLITS, specs, strict=True):
            read_split(fetched[spec.relpath], split, report, events)
        layout = "official_split"
    wanted = set(events.items)
    meta: dict[str, dict] | None
    meta_file: Path | str = ""
    if present(root, meta_spec.relpath) is None and third_party.is_file():
        layout = "third_party_split" if layout == "official_split" else layout
        extra = ensure_files(root, [RemoteFile(_rel(category, THIRD_PARTY_META), None, None)],
                             allow_download=False)
        fetched.update(extra)
        fetched.sha256.update(extra.sha256)
        meta, meta_file = read_meta_csv(third_party, report, wanted), third_party
    else:
        meta_path, meta_sum = optional_file(root, meta_spec, allow_download, report, timeout)
        fetched.sha256.update(meta_sum)
        meta = read_meta_jsonl(meta_path, report, wanted) if meta_path is not None else None
        meta_file = meta_path or ""
    report.stat("layout", layout)
    log = finish(f"amazon2023/{category}", events, meta, report, fetched,
                 has_text=meta is not None, has_timestamps=True, meta_file=meta_file)
    check_split_order(log, report, f"{category}.*.csv")
    return log
