"""Pieces every raw loader shares: line reading with counted decoding errors, field cleaning,
and the one place where interactions are ordered, de-duplicated and turned into a ``RawLog``.

The rules, identical for every source (each broken rule is a ``DataReport`` issue, so strict
mode stops at the first one with its file and line):
- ``non_utf8``: a line that is not valid UTF-8 is decoded with U+FFFD replacements and kept.
- ``duplicate_event``: a repeated (user, item) pair keeps its chronologically first event.
- ``timestamp_tie``: an event with the same timestamp as the user's previous one keeps the
  file's order (the ``order`` column), only counted where the source has real timestamps.
- ``item_without_meta``: an interacted item absent from the metadata keeps a catalog row
  with empty text (only counted where the source has a metadata file at all).
The catalog holds every interacted item exactly once, in first-interaction order.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.data.download import FetchedFiles, RemoteFile
from benchmark.data.report import DataError, DataReport
from benchmark.data.schema import RAW_CATALOG_COLUMNS, RAW_INTERACTION_COLUMNS, RawLog
from benchmark.data.text import strip_html

GZIP_MAGIC = b"\x1f\x8b"


def open_binary(path: Path) -> io.BufferedIOBase:
    """Open a file for reading bytes, gunzipping it when it starts with the gzip magic number
    (the suffix is not trusted: mirrors gzip files without renaming and vice versa)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == GZIP_MAGIC:
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_lines(path: Path, report: DataReport) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without its newline), skipping blank lines.

    Non-UTF-8 bytes are replaced (U+FFFD) and counted as ``non_utf8``; a truncated or corrupt
    gzip stream becomes a ``DataError`` naming the file, not a traceback from zlib.
    """
    lineno = 0
    try:
        with open_binary(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    line = raw.decode("utf-8", errors="replace")
                    report.issue("non_utf8", path, lineno, f"byte {exc.start}: {raw[exc.start:exc.start + 4]!r}")
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"cannot read {path}: file not found") from exc
        raise DataError(f"cannot read {path} after line {lineno}: {exc} (truncated or corrupt file?)") from exc


def local_variants(root: Path, files: list[RemoteFile]) -> list[RemoteFile]:
    """Accept a present gzip'd or gunzipped copy in place of a missing file (``x`` vs ``x.gz``).

    The variant's checksum is unknown (it is not the published file), so it is not checked;
    what was read is still recorded in ``RawLog.raw_files``.
    """
    out = []
    for spec in files:
        if (root / spec.relpath).is_file():
            out.append(spec)
            continue
        alt = spec.relpath[:-3] if spec.relpath.endswith(".gz") else spec.relpath + ".gz"
        out.append(RemoteFile(alt, None, None) if (root / alt).is_file() else spec)
    return out


def present(root: Path, relpath: str) -> str | None:
    """``relpath`` or its ``.gz`` / gunzipped variant if one is a file under root, else None."""
    for cand in (relpath, relpath[:-3] if relpath.endswith(".gz") else relpath + ".gz"):
        if (root / cand).is_file():
            return cand
    return None


# ---------------------------------------------------------------- field cleaning


def clean(text, report: DataReport | None = None, kind: str = "html_in_text", file: Path | str = "",
          line: int | None = None) -> str:
    """A metadata string, HTML tags and entities removed, whitespace collapsed.

    Besides complete tags, the 2018 dumps hold tag *fragments* (``<span class="a-size-medium``
    cut before its ``>``, or ``Magazines" />``): an unclosed ``<tag ...`` runs to the end of the
    string and a dangling ``... />`` / ``">`` tail starts it, so both are dropped whole.
    A repaired value is counted as ``kind`` when a report is given.
    """
    if text is None:
        return ""
    if isinstance(text, (list, tuple)):
        text = " ".join(str(t) for t in text if t)
    text = str(text)
    out = strip_html(text)
    cut = _open_tag_start(out)
    if cut is not None:
        out = out[:cut].strip()
    for tail in ('" />', '"/>', "/>", '">'):
        if tail in out:
            out = out[out.rindex(tail) + len(tail):].strip()
    if report is not None and out != " ".join(text.split()):
        report.issue(kind, file, line, f"{text[:80]!r} -> {out[:80]!r}")
    return out


def _open_tag_start(text: str) -> int | None:
    """Index of a ``<`` that opens a tag never closed (``<span class=...`` to the end)."""
    i = text.find("<")
    while i != -1:
        nxt = text[i + 1:i + 2]
        if (nxt.isalpha() or nxt == "/") and ">" not in text[i:]:
            return i
        i = text.find("<", i + 1)
    return None


def clean_category(levels, report: DataReport | None = None, file: Path | str = "",
                   line: int | None = None) -> list[str]:
    """A category path (root first): levels cleaned of HTML, empty ones and repeats dropped."""
    if not levels:
        return []
    if isinstance(levels, str):
        levels = [levels]
    if not isinstance(levels, (list, tuple)):  # a number or a mapping where a path belongs: counted, not a path
        if report is not None:
            report.issue("bad_field", file, line, f"category path is a {type(levels).__name__}")
        return []
    out: list[str] = []
    for level in levels:
        if isinstance(level, (list, tuple)):  # 2014 nests paths: [["Beauty", "Makeup"], ...]
            continue
        value = clean(level, report, "html_in_text", file, line)
        if value and value not in out:
            out.append(value)
    return out


def first_image(*candidates) -> str | None:
    """The first non-empty image URL among lists/strings, else None."""
    for cand in candidates:
        if isinstance(cand, str) and cand.strip():
            return cand.strip()
        if isinstance(cand, (list, tuple)):
            for c in cand:
                if isinstance(c, str) and c.strip():
                    return c.strip()
                if isinstance(c, dict):  # 2023: {"thumb", "large", "hi_res", "variant"}
                    for key in ("large", "hi_res", "thumb"):
                        if isinstance(c.get(key), str) and c[key].strip():
                            return c[key].strip()
    return None


def catalog_row(item_id: str, title: str = "", brand: str = "", category: list[str] | None = None,
                description: str = "", image: str | None = None) -> dict:
    return {"item_id": item_id, "title": title, "brand": brand, "category": list(category or []),
            "description": description, "image": image}


# ---------------------------------------------------------------- interactions -> RawLog


@dataclass
class Events:
    """Positive interactions as read, with where each came from (for issue reports)."""

    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)

    def add(self, user: str, item: str, ts: int, file: Path | str, line: int, split: str | None = None):
        self.users.append(user)
        self.items.append(item)
        self.times.append(int(ts))
        self.files.append(str(file))
        self.lines.append(line)
        if split is not None:
            self.splits.append(split)

    def __len__(self) -> int:
        return len(self.users)


def finish(
    name: str,
    events: Events,
    meta: dict[str, dict] | None,
    report: DataReport,
    fetched: FetchedFiles,
    *,
    has_text: bool,
    has_timestamps: bool,
    meta_file: Path | str = "",
) -> RawLog:
    """Order, de-duplicate and count the events, build the catalog, and return the ``RawLog``.

    ``meta`` maps item_id -> ``catalog_row`` for the items the metadata describes, or None when
    the source has no metadata at all (no ``item_without_meta`` is counted then).
    """
    if not len(events):
        raise DataError(f"[{name}] no usable interactions in {', '.join(sorted(fetched)) or 'the input'}")
    if events.splits and len(events.splits) != len(events):
        raise DataError(f"[{name}] internal error: split labels for only some events")
    report.stat("raw_rows", len(events))
    df = pd.DataFrame({
        "user_id": events.users, "item_id": events.items,
        "timestamp": pd.array(events.times, dtype="int64"),
        "order": pd.array(range(len(events)), dtype="int64"),
    })
    if events.splits:
        df["split"] = events.splits
    df = df.sort_values(["user_id", "timestamp", "order"], kind="stable").reset_index(drop=True)
    dup = df.duplicated(["user_id", "item_id"], keep="first").to_numpy()
    for i in dup.nonzero()[0]:
        o = int(df.at[i, "order"])
        report.issue("duplicate_event", events.files[o], events.lines[o],
                     f"user {df.at[i, 'user_id']} item {df.at[i, 'item_id']} again (first kept)")
    df = df[~dup].reset_index(drop=True)
    if has_timestamps:
        same_user = (df["user_id"] == df["user_id"].shift()).to_numpy()
        tie = same_user & (df["timestamp"] == df["timestamp"].shift()).to_numpy()
        for i in tie.nonzero()[0]:
            o = int(df.at[i, "order"])
            report.issue("timestamp_tie", events.files[o], events.lines[o],
                         f"user {df.at[i, 'user_id']} timestamp {df.at[i, 'timestamp']} (file order kept)")
    # Catalog: every interacted item once, in first-interaction (file) order.
    first_seen = df.sort_values("order", kind="stable")["item_id"].drop_duplicates().tolist()
    rows = []
    for item in first_seen:
        row = meta.get(item) if meta is not None else None
        if row is None:
            if meta is not None:
                report.issue("item_without_meta", meta_file, None, f"item {item} (kept with empty text)")
            row = catalog_row(item)
        rows.append(row)
    catalog = pd.DataFrame(rows, columns=RAW_CATALOG_COLUMNS)
    columns = RAW_INTERACTION_COLUMNS + (["split"] if events.splits else [])
    interactions = df[columns]
    report.stat("users", int(interactions["user_id"].nunique()))
    report.stat("items", len(catalog))
    report.stat("interactions", len(interactions))
    if meta is not None:
        report.stat("items_with_meta", int(sum(item in meta for item in first_seen)))
    return RawLog(name=name, catalog=catalog, interactions=interactions, has_text=has_text,
                  has_timestamps=has_timestamps,
                  raw_files=dict(sorted(fetched.sha256.items())), report=report)


# ---------------------------------------------------------------- one-record-per-line files


def parse_records(path: Path, report: DataReport, parse, kind: str = "bad_json") -> Iterator[tuple[int, dict]]:
    """Yield (line, record) for a JSON-lines (or Python-literal-lines) file; a line ``parse``
    rejects or that is not an object is counted as ``kind`` and skipped."""
    for lineno, line in read_lines(path, report):
        try:
            record = parse(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            report.issue(kind, path, lineno, f"{type(exc).__name__}: {line[:60]!r}")
            continue
        if not isinstance(record, dict):
            report.issue(kind, path, lineno, f"not an object: {line[:60]!r}")
            continue
        yield lineno, record


def read_reviews(path: Path, report: DataReport, events: Events, parse, *, user: str, item: str,
                 time: str, time_scale: int = 1, kind: str = "bad_json") -> None:
    """Append one event per review line; ``time`` is an integer field (divided by ``time_scale``,
    1000 for milliseconds). A review lacking a field is ``missing_field``; a timestamp that is
    not an integer is ``bad_timestamp``."""
    for lineno, rec in parse_records(path, report, parse, kind):
        u, i, t = rec.get(user), rec.get(item), rec.get(time)
        lacking = [k for k, v in ((user, u), (item, i), (time, t)) if v is None or str(v).strip() == ""]
        if lacking:
            report.issue("missing_field", path, lineno, f"no {', '.join(lacking)}")
            continue
        ts = to_int(t)
        if ts is None or not 0 <= ts // time_scale <= MAX_TIMESTAMP:
            report.issue("bad_timestamp", path, lineno, f"{time}={t!r}" + (
                "" if ts is None else f" (outside 1970..2100 in seconds, after dividing by {time_scale})"))
            continue
        events.add(str(u).strip(), str(i).strip(), ts // time_scale, path, lineno)


MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01 UTC in seconds: a later (or negative) review time is corrupt


def to_int(value) -> int | None:
    """An integer from an int, an integral float or a numeric string, within int64; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")) or number != int(number):
        return None
    return int(number) if -(2**63) <= number < 2**63 else None


def optional_file(root: Path, spec: RemoteFile, allow_download: bool, report: DataReport,
                  timeout: float = 30) -> tuple[Path | None, dict[str, str]]:
    """Fetch a file the loader can do without (metadata): (path, {relpath: sha}) or (None, {}).

    Its absence is not an issue (the dataset is then ID-only); it is recorded in the stats.
    """
    from benchmark.data.download import ensure_files

    rel = present(root, spec.relpath)
    spec = spec if rel in (None, spec.relpath) else RemoteFile(rel, None, None)
    if rel is None and not allow_download:
        report.stat("meta_file", "absent")
        return None, {}
    try:
        got = ensure_files(root, [spec], allow_download=allow_download, timeout=timeout)
    except DataError as exc:
        if "checksum mismatch" in str(exc):
            raise
        report.stat("meta_file", "absent (download failed)")
        return None, {}
    report.stat("meta_file", spec.relpath)
    return got[spec.relpath], got.sha256


def check_split_order(log: RawLog, report: DataReport, file: Path | str = "") -> None:
    """Count users whose published split is not chronological (a valid/test event dated before
    one of their train events, or test before valid) as ``split_not_chronological``."""
    inter = log.interactions
    if "split" not in inter.columns or inter.empty:
        return
    rank = inter["split"].map({"train": 0, "valid": 1, "test": 2})
    # interactions are sorted by (user, timestamp, order): the rank must never go down
    down = (rank.diff() < 0) & (inter["user_id"] == inter["user_id"].shift())
    for user in inter.loc[down, "user_id"].unique():
        report.issue("split_not_chronological", file, None, f"user {user}")


def meta_id(value, key: str, wanted: set[str], seen: dict, report: DataReport, path: Path, lineno: int) -> str | None:
    """The id of a metadata record worth reading: present, interacted with, and not seen before
    (a missing id and a repeated one are counted); None otherwise."""
    item = str(value or "").strip()
    if not item:
        report.issue("missing_field", path, lineno, f"no {key}")
        return None
    if item not in wanted:
        return None
    if item in seen:
        report.issue("duplicate_meta", path, lineno, f"{key} {item} again (first kept)")
        return None
    return item
