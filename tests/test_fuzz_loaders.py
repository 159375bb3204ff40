"""Property-based fuzzing of every loader's line reader (hypothesis, derandomized so the suite is
deterministic): arbitrary lines, and lines that almost parse, give a row or a counted skip, never a
crash and never a silent drop or a wrong row."""

import ast
import csv
import io
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.data import amazon2014, amazon2018, amazon2023, s3rec, unisrec
from benchmark.data.loading import MAX_TIMESTAMP, Events, clean, read_reviews
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


def _skipped(report: DataReport, kept: tuple[str, ...] = ("non_utf8",)) -> int:
    """Lines skipped with a counted reason; the ``kept`` kinds annotate a line that is still read."""
    return sum(n for kind, n in report.counts.items() if kind not in kept)


def _decoded(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines, decoded as the readers decode them."""
    out = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if text.strip():
            out.append((lineno, text))
    return out


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


OTHER_COLUMNS = st.sampled_from(["rating", "history", "user", "asin", "time", "USER_ID", "user id", "item_id", ""])


@st.composite
def _bad_headers(draw) -> tuple[bytes, list[str]]:
    """A header line lacking at least one required column, and the columns it lacks: the required
    names minus one or more (the kept ones padded with spaces, which the reader strips), plus other
    names; or raw bytes (which never spell the three names)."""
    required = list(amazon2023.SPLIT_COLUMNS)
    kept = draw(st.lists(st.sampled_from(required), unique=True, max_size=len(required) - 1))
    names = [draw(st.sampled_from(["", " "])) + c + draw(st.sampled_from(["", " "])) for c in kept]
    names = draw(st.permutations(names + draw(st.lists(OTHER_COLUMNS, max_size=3))))
    if not ",".join(names).strip():  # a blank line is no header: the reader skips it
        names.append("rating")
    structured = (",".join(names).encode(), [c for c in required if c not in kept])
    raw = NO_NEWLINE.filter(lambda b: b.decode("utf-8", errors="replace").strip() and not b.startswith(b"\x1f\x8b")
                            and b"parent_asin" not in b)
    raw = raw.map(lambda b: (b, None))
    return draw(st.one_of(st.just(structured), raw))


@FUZZ
@given(header=_bad_headers())
def test_a_2023_split_with_a_bad_header_is_a_clear_error(tmp_path, header):
    line, lacking = header
    path = tmp_path / "train.csv"
    _write(path, [line, b"u1,i1,5,1600000000000,"])
    with pytest.raises(DataError) as err:  # never a split read with the wrong columns, nor a counted skip
        amazon2023.read_split(path, "train", DataReport("fuzz"), Events())
    message = str(err.value)
    assert message.startswith(f"{path}:1: ")  # the file and the header's line
    if lacking is None:
        assert "header" in message
    else:  # names exactly the missing columns
        named = re.search(r"header lacks column\(s\) (.*?) \(found", message).group(1).split(", ")
        assert named == lacking


WANTED = {"A1", "A2"}
META_IDS = st.one_of(st.sampled_from(["A1", "A2", "B9", ""]), VALUES)


def _meta_lines(id_key: str, fields: list[str]) -> st.SearchStrategy[bytes]:
    """Metadata records: an id that is often a wanted one, other fields of any type; or raw bytes."""
    records = st.fixed_dictionaries({id_key: META_IDS}, optional={f: VALUES for f in fields}).map(
        lambda d: json.dumps(d).encode())
    return st.one_of(records, NO_NEWLINE)


def _check_catalog_rows(meta: dict, lines: list[bytes], report: DataReport, id_key: str, parse=json.loads) -> None:
    assert set(meta) <= WANTED
    for item, row in meta.items():
        assert row["item_id"] == item and isinstance(row["title"], str) and isinstance(row["brand"], str)
        assert isinstance(row["category"], list) and all(isinstance(level, str) for level in row["category"])
    # every wanted id that appears in a well-formed record is a row or a counted repeat, never dropped
    firsts = set()
    for raw in lines:
        try:
            rec = parse(raw.decode("utf-8", errors="replace"))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(rec, dict) and str(rec.get(id_key) or "").strip() in WANTED:
            firsts.add(str(rec[id_key]).strip())
    assert set(meta) == firsts or report.counts  # a wanted record is lost only with a counted reason


def _read_and_check(tmp_path, name: str, read, lines: list[bytes], id_key: str, parse=json.loads) -> None:
    """Write the lines, read them with ``read(path, report, WANTED)``, check the catalog rows."""
    path = tmp_path / name
    _write(path, lines)
    report = DataReport("fuzz")
    meta = {}
    if _clear_error_or_read(lambda: meta.update(read(path, report, WANTED)), path):
        _check_catalog_rows(meta, lines, report, id_key, parse)


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


LITERAL_VALUES = st.one_of(VALUES, st.lists(st.lists(st.text(max_size=6), max_size=3), max_size=2),
                           st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@FUZZ
@given(lines=st.lists(st.one_of(
    st.fixed_dictionaries({"asin": META_IDS}, optional={f: LITERAL_VALUES for f in [
        "title", "brand", "categories", "description", "imUrl", "salesRank"]}).map(lambda d: repr(d).encode()),
    NO_NEWLINE), max_size=10))
def test_2014_metadata_literal_lines_give_catalog_rows_or_counted_skips(tmp_path, lines):
    """The 2014 metadata: Python literals, ``categories`` a list of paths (of any type when corrupt)."""

    def read(path, report, wanted):
        return amazon2018.read_meta(path, report, wanted, parse=amazon2014._literal, kind="bad_literal")

    _read_and_check(tmp_path, "meta.txt", read, lines, "asin", parse=ast.literal_eval)


# ---------------------------------------------------------------- the 2023 third-party metadata CSV

CSV_HEADER = ["", "index", "title", "description", "price", "details", "parent_asin"]  # as in the shared copy
CSV_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8)


@st.composite
def _meta_csv_rows(draw) -> tuple[str, str, object, str, bool]:
    """(parent_asin, title, brand or None, the row as csv.writer writes it, whether its fields line up
    with the header): some rows lack the price or hold one field too many, which shifts the columns."""
    item = draw(st.one_of(st.sampled_from(["A1", "A2", " A1 ", "B9", ""]), CSV_TEXT))
    title = draw(CSV_TEXT)
    brand = draw(st.one_of(st.none(), VALUES))
    details = draw(st.one_of(st.just(""), CSV_TEXT, st.just(repr({"Brand": brand}))))
    fields = ["0", "7", title, draw(CSV_TEXT), draw(CSV_TEXT), details, item]
    shape = draw(st.sampled_from(["ok", "ok", "short", "long"]))
    if shape == "short":
        del fields[4]
    elif shape == "long":
        fields.insert(3, draw(CSV_TEXT))
    out = io.StringIO()
    csv.writer(out).writerow(fields)
    return item.strip(), title, brand if details == repr({"Brand": brand}) else None, out.getvalue(), shape == "ok"


@FUZZ
@given(rows=st.lists(_meta_csv_rows(), max_size=8))
def test_2023_metadata_csv_rows_are_read_as_written(tmp_path, rows):
    """Rows csv.writer wrote (quoted commas, quotes, newlines, carriage returns): each wanted item is
    its first row's title and brand; a repeat, a missing id and a row whose fields do not line up
    with the header (never read with shifted columns) are counted, at the line the row ends on."""
    path = tmp_path / "filterd_meta_items.csv"
    text = io.StringIO()
    csv.writer(text).writerow(CSV_HEADER)
    path.write_bytes((text.getvalue() + "".join(r[3] for r in rows)).encode())
    report = DataReport("fuzz")
    meta = amazon2023.read_meta_csv(path, report, WANTED)
    good = [r for r in rows if r[4]]
    expected = {}
    for item, title, brand, _, _ in good:
        if item in WANTED and item not in expected:
            expected[item] = (clean(title), clean(brand))
    assert {k: (v["title"], v["brand"]) for k, v in meta.items()} == expected
    repeats = sum(1 for n, r in enumerate(good) if r[0] in WANTED and r[0] in [q[0] for q in good[:n]])
    assert report.counts["duplicate_meta"] == repeats
    assert report.counts["missing_field"] == sum(1 for r in good if not r[0])
    assert report.counts["bad_row"] == len(rows) - len(good)
    ends = [1 + sum(r[3].count("\n") for r in rows[:n + 1]) for n in range(len(rows))]  # physical lines
    bad_at = [f"{path.name}:{end}:" for end, r in zip(ends, rows, strict=True) if not r[4]]
    assert [e.split(" ")[2] for e in report.examples.get("bad_row", [])] == bad_at[:5]


@FUZZ
@given(lines=st.lists(st.one_of(_meta_csv_rows().map(lambda r: r[3].encode()), NO_NEWLINE,
                                CSV_LINES), max_size=10))
def test_2023_metadata_csv_lines_give_catalog_rows_or_a_clear_error(tmp_path, lines):
    """Any bytes (a bare carriage return, an unclosed quote, ...): catalog rows or a clear error."""
    path = tmp_path / "filterd_meta_items.csv"
    _write(path, [",".join(CSV_HEADER).encode(), *lines])
    report = DataReport("fuzz")
    meta = {}
    if _clear_error_or_read(lambda: meta.update(amazon2023.read_meta_csv(path, report, WANTED)), path):
        assert set(meta) <= WANTED
        for item, row in meta.items():
            assert row["item_id"] == item and all(isinstance(row[k], str) for k in ("title", "brand", "description"))


# ---------------------------------------------------------------- UniSRec / RecBole atomic files

INDICES = st.one_of(st.integers(0, 10**6).map(str), st.sampled_from(
    ["007", " 3 ", "+1", "-2", "1_0", "1.0", "\u00b2", "\u0661\u0662", "", "x"]))  # ², Arabic-Indic 12
ASCII_INDEX = re.compile(r"\s*([0-9]+)\s*")


def _index(text: str) -> int | None:
    """The index a RecBole file means by ``text`` (ASCII digits, spaces around), else None."""
    match = ASCII_INDEX.fullmatch(text)
    return int(match.group(1)) if match else None


INDEX_LINES = st.one_of(st.tuples(st.one_of(ID_TOKENS, st.text(max_size=4)), INDICES).map(
    lambda p: "\t".join(p).encode()), NO_NEWLINE)


@FUZZ
@given(lines=st.lists(INDEX_LINES, max_size=12))
def test_unisrec_index_lines_are_pairs_or_counted_skips(tmp_path, lines):
    path = tmp_path / "Sci.item2index"
    seen = _write(path, lines)
    report = DataReport("fuzz")
    out = {}
    if not _clear_error_or_read(lambda: out.update(unisrec._read_index(path, report)), path):
        return
    expected = {}
    for _, text in _decoded(path):
        parts = text.split("\t")
        idx = _index(parts[-1]) if len(parts) == 2 and parts[0].strip() else None
        if idx is not None:
            expected.setdefault(idx, parts[0].strip())  # the first line of an index wins
    assert out == expected
    assert len(out) + _skipped(report) == seen


INTER_HEADER = b"user_id:token\titem_id_list:token_seq\titem_id:token"
INTER_LINES = st.one_of(
    st.tuples(INDICES, st.lists(INDICES, max_size=4).map(" ".join), INDICES).map(lambda p: "\t".join(p).encode()),
    st.lists(INDICES, max_size=4).map(lambda p: "\t".join(p).encode()), NO_NEWLINE)


@FUZZ
@given(lines=st.lists(INTER_LINES, max_size=12))
def test_unisrec_interaction_rows_are_parsed_or_counted(tmp_path, lines):
    path = tmp_path / "Sci.train.inter"
    seen = _write(path, [INTER_HEADER, *lines])
    expected = []
    for lineno, text in _decoded(path)[1:]:
        parts = text.split("\t")
        if len(parts) != 3:
            continue
        user, target, history = _index(parts[0]), _index(parts[2]), [_index(t) for t in parts[1].split()]
        if user is not None and target is not None and None not in history:
            expected.append((user, history, target, lineno))
    report, rows = DataReport("fuzz"), defaultdict(list)
    if not expected:  # nothing parses: an error naming the file, not an empty split
        with pytest.raises(DataError, match=re.escape(str(path))):
            unisrec._read_inter(path, "train", report, rows)
        return
    unisrec._read_inter(path, "train", report, rows)
    got = sorted((user, h, t, line) for user, user_rows in rows.items() for _, h, t, _, line in user_rows)
    assert got == sorted(expected)
    assert len(got) + _skipped(report) == seen - 1  # the header


TITLE_WORDS = st.sampled_from(["Dr", "Foo", "Kit", "3/8", "4.5", "Mr", "Fan,", "Glue", "Ind"])
CATEGORY_TAILS = st.lists(st.sampled_from(["Tools", "Tapes", "Fittings", "Pipe", "&", "Lab"]), min_size=1,
                          max_size=3)
BRANDS = st.lists(st.sampled_from(["Bosch", "TPI", "3M", "Heater"]), max_size=2).map(" ".join)


@st.composite
def _unisrec_texts(draw) -> tuple[str, str, str, str]:
    """(title, category path, brand, the text as UniSRec writes it): a title that may hold ". ", a
    category that is empty or under the root, a brand that may be empty."""
    words = draw(st.lists(TITLE_WORDS, min_size=1, max_size=4))
    title = "".join(w + draw(st.sampled_from([" ", ". "])) for w in words[:-1]) + words[-1]
    category = draw(st.one_of(st.just(""), CATEGORY_TAILS.map(lambda t: "Industrial & Scientific " + " ".join(t))))
    brand = draw(BRANDS)
    return title, category, brand, f"{title}. {category}. {brand}. "


@FUZZ
@given(texts=st.lists(_unisrec_texts(), min_size=1, max_size=8))
def test_unisrec_text_parts_are_read_as_written(tmp_path, texts):
    """Whatever mix of titles with ". ", empty category slots and empty brands: each item's title,
    category path and brand are the ones written, none counted as unparsed."""
    path = tmp_path / "Sci.text"
    _write(path, [b"item_id:token\ttext:token_seq"] + [f"I{i}\t{t[3]}".encode() for i, t in enumerate(texts)])
    report = DataReport("fuzz")
    meta = unisrec._read_text(path, report)
    got = {k: (v["title"], v["category"], v["brand"]) for k, v in meta.items()}
    assert got == {f"I{i}": (t, [c] if c else [], b) for i, (t, c, b, _) in enumerate(texts)}
    assert not report.counts


TEXT_LINES = st.one_of(
    st.tuples(st.one_of(ID_TOKENS, st.text(max_size=4)), st.one_of(_unisrec_texts().map(lambda t: t[3]),
                                                                    st.text(max_size=30))).map(
        lambda p: "\t".join(p).encode()), NO_NEWLINE)


@FUZZ
@given(lines=st.lists(TEXT_LINES, max_size=10))
def test_unisrec_text_lines_give_catalog_rows_or_counted_skips(tmp_path, lines):
    path = tmp_path / "Sci.text"
    seen = _write(path, [b"item_id:token\ttext:token_seq", *lines])
    report = DataReport("fuzz")
    meta = {}
    if not _clear_error_or_read(lambda: meta.update(unisrec._read_text(path, report)), path):
        return
    assert len(meta) + _skipped(report, kept=("non_utf8", "unparsed_text")) == seen - 1  # the header
    firsts = {}
    for _, line in _decoded(path)[1:]:
        item, _, text = line.partition("\t")
        if item.strip() and text.strip():
            firsts.setdefault(item.strip(), " ".join(text.split()))
    assert set(meta) == set(firsts)
    for item, row in meta.items():
        text = firsts[item]
        assert row["item_id"] == item and isinstance(row["brand"], str) and len(row["category"]) <= 1
        assert all(part in text for part in [row["title"], row["brand"], *row["category"]])  # cut from its text
        assert row["description"] in ("", text)
