"""Property-based fuzzing of every loader's line reader (hypothesis, derandomized so the suite is
deterministic): arbitrary lines, and lines that almost parse, give a row or a counted skip, never a
crash and never a silent drop or a wrong row."""

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.data import amazon2014, amazon2023, s3rec
from benchmark.data.loading import MAX_TIMESTAMP, Events, read_reviews
from benchmark.data.report import DataError, DataReport

FUZZ = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**25), max_value=10**25),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.lists(st.integers(), max_size=3))
NO_NEWLINE = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" "))


def _record_lines(fields: list[str]) -> st.SearchStrategy[bytes]:
    """JSON objects over the reader's own field names with values of any type, or raw bytes."""
    records = st.dictionaries(st.sampled_from(fields), VALUES, max_size=len(fields)).map(
        lambda d: json.dumps(d).encode())
    return st.one_of(records, NO_NEWLINE)


def _write(path: Path, lines: list[bytes]) -> int:
    """Write the lines; return how many the readers see (non-blank once decoded)."""
    path.write_bytes(b"\n".join(lines))
    return sum(1 for raw in path.read_bytes().split(b"\n")
               if raw.decode("utf-8", errors="replace").rstrip("\r\n").strip())


def _clear_error_or_read(read, path: Path) -> bool:
    """Run ``read()``: True when it read the file, False when it refused it with an error that names
    the file (e.g. bytes that start like a gzip stream); anything else fails the test."""
    try:
        read()
    except DataError as err:
        assert str(path) in str(err)
        return False
    return True


def _skipped(report: DataReport) -> int:
    return sum(n for kind, n in report.counts.items() if kind != "non_utf8")  # non_utf8 annotates, keeps the line


@FUZZ
@given(lines=st.lists(_record_lines(["reviewerID", "asin", "unixReviewTime", "overall"]), max_size=12))
def test_review_lines_give_a_row_or_a_counted_skip(tmp_path, lines):
    path = tmp_path / "reviews.json"
    seen = _write(path, lines)
    report, events = DataReport("fuzz"), Events()
    if not _clear_error_or_read(lambda: read_reviews(path, report, events, json.loads, user="reviewerID",
                                                     item="asin", time="unixReviewTime"), path):
        return
    assert len(events) + _skipped(report) == seen
    for user, item, ts, line in zip(events.users, events.items, events.times, events.lines, strict=True):
        record = json.loads(path.read_bytes().split(b"\n")[line - 1])
        assert user == str(record["reviewerID"]).strip() and item == str(record["asin"]).strip()
        assert user and item and 0 <= ts <= MAX_TIMESTAMP


@FUZZ
@given(lines=st.lists(_record_lines(["user_id", "parent_asin", "timestamp"]), max_size=12))
def test_millisecond_review_lines_stay_in_range(tmp_path, lines):
    path = tmp_path / "reviews.jsonl"
    seen = _write(path, lines)
    report, events = DataReport("fuzz"), Events()
    if not _clear_error_or_read(lambda: read_reviews(path, report, events, json.loads, user="user_id",
                                                     item="parent_asin", time="timestamp", time_scale=1000), path):
        return
    assert len(events) + _skipped(report) == seen
    assert all(0 <= ts <= MAX_TIMESTAMP for ts in events.times)


@FUZZ
@given(lines=st.lists(st.one_of(_record_lines(["reviewerID", "asin", "unixReviewTime"]).map(
    lambda b: b.replace(b"null", b"None").replace(b"true", b"True").replace(b"false", b"False")), NO_NEWLINE),
    max_size=12))
def test_python_literal_lines_of_the_2014_format(tmp_path, lines):
    path = tmp_path / "reviews.txt"
    seen = _write(path, lines)
    report, events = DataReport("fuzz"), Events()
    if not _clear_error_or_read(lambda: read_reviews(path, report, events, amazon2014._literal, user="reviewerID",
                                                     item="asin", time="unixReviewTime", kind="bad_literal"), path):
        return
    assert len(events) + _skipped(report) == seen


ID_TOKENS = st.text(alphabet="abcXYZ019_.:-", min_size=1, max_size=4)
SEQUENCE_LINES = st.one_of(st.lists(ID_TOKENS, max_size=5).map(lambda t: " ".join(t).encode()), NO_NEWLINE,
                           st.lists(ID_TOKENS, max_size=3).map(lambda t: "\t".join(t).encode()))


@FUZZ
@given(lines=st.lists(SEQUENCE_LINES, max_size=12))
def test_sequence_lines_are_users_or_counted_skips(tmp_path, lines):
    path = tmp_path / "user_sequence.txt"
    seen = _write(path, lines)
    report, events = DataReport("fuzz"), Events()
    if not _clear_error_or_read(lambda: s3rec.read_sequences(path, report, events), path):
        return
    assert len(set(events.lines)) + _skipped(report) == seen  # one user per kept line
    for user, item, line in zip(events.users, events.items, events.lines, strict=True):
        tokens = path.read_bytes().split(b"\n")[line - 1].decode().split()
        assert tokens[0] == user and item in tokens[1:]


CSV_LINES = st.lists(st.one_of(st.text(alphabet="ab1,\" -", max_size=8), VALUES.map(str)), max_size=5).map(
    lambda f: ",".join(f).encode())


@FUZZ
@given(rows=st.lists(st.one_of(CSV_LINES, NO_NEWLINE), max_size=10))
def test_2023_split_rows_are_events_or_counted_skips(tmp_path, rows):
    path = tmp_path / "train.csv"
    seen = _write(path, [b"user_id,parent_asin,rating,timestamp,history", *rows])
    report, events = DataReport("fuzz"), Events()
    if not _clear_error_or_read(lambda: amazon2023.read_split(path, "train", report, events), path):
        return
    assert len(events) + _skipped(report) == seen - 1  # the header
    assert all(u and i for u, i in zip(events.users, events.items, strict=True))


@FUZZ
@given(header=NO_NEWLINE)
def test_a_2023_split_with_a_bad_header_is_a_clear_error(tmp_path, header):
    path = tmp_path / "train.csv"
    _write(path, [header, b"u1,i1,5,1600000000000,"])
    report = DataReport("fuzz")
    _clear_error_or_read(lambda: amazon2023.read_split(path, "train", report, Events()), path)


WANTED = {"A1", "A2"}
META_IDS = st.one_of(st.sampled_from(["A1", "A2", "B9", ""]), VALUES)


def _meta_lines(id_key: str, fields: list[str]) -> st.SearchStrategy[bytes]:
    """Metadata records: an id that is often a wanted one, other fields of any type; or raw bytes."""
    records = st.fixed_dictionaries({id_key: META_IDS}, optional={f: VALUES for f in fields}).map(
        lambda d: json.dumps(d).encode())
    return st.one_of(records, NO_NEWLINE)


def _check_catalog_rows(meta: dict, lines: list[bytes], report: DataReport, id_key: str) -> None:
    assert set(meta) <= WANTED
    for item, row in meta.items():
        assert row["item_id"] == item and isinstance(row["title"], str) and isinstance(row["brand"], str)
        assert isinstance(row["category"], list) and all(isinstance(level, str) for level in row["category"])
    # every wanted id that appears in a well-formed record is a row or a counted repeat, never dropped
    firsts = set()
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and str(rec.get(id_key) or "").strip() in WANTED:
            firsts.add(str(rec[id_key]).strip())
    assert set(meta) == firsts or report.counts  # a wanted record is lost only with a counted reason


def _read_and_check(tmp_path, name: str, read, lines: list[bytes], id_key: str) -> None:
    """Write the lines, read them with ``read(path, report, WANTED)``, check the catalog rows."""
    path = tmp_path / name
    _write(path, lines)
    report = DataReport("fuzz")
    meta = {}
    if _clear_error_or_read(lambda: meta.update(read(path, report, WANTED)), path):
        _check_catalog_rows(meta, lines, report, id_key)


@FUZZ
@given(lines=st.lists(_meta_lines("asin", ["title", "brand", "category", "description", "feature",
                                           "imageURLHighRes", "image"]), max_size=10))
def test_2018_metadata_lines_give_catalog_rows_or_counted_skips(tmp_path, lines):
    from benchmark.data import amazon2018

    _read_and_check(tmp_path, "meta.json", amazon2018.read_meta, lines, "asin")


@FUZZ
@given(lines=st.lists(_meta_lines("parent_asin", ["title", "store", "details", "categories", "description",
                                                  "features", "images"]), max_size=10))
def test_2023_metadata_lines_give_catalog_rows_or_counted_skips(tmp_path, lines):
    _read_and_check(tmp_path, "meta.jsonl", amazon2023.read_meta_jsonl, lines, "parent_asin")
