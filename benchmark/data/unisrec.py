"""UniSRec / RecBole atomic files (Hou et al., KDD 2022), e.g. the Amazon 2018 "Scientific" set.

Files under ``<root>/unisrec/<Cat>/`` (each may also be gzip'd, ``.gz`` added):
- ``<Cat>.text``: header ``item_id:token<TAB>text:token_seq``, then raw ASIN TAB
  "title. category path. brand." (one string; an empty part leaves its slot, "title. . brand.").
  Titles and brands hold ". " too, so the parts are found by the category path: its segment starts
  with the catalog's root category (the most common first two words of the second-to-last segment,
  "Industrial &" on Scientific), or is empty. The path's levels are joined by spaces in the source
  and cannot be split, so ``category`` is one flat element. A string with no such segment keeps the
  old reading (title = text before the first ". ", no category, the whole string as description)
  and is counted as ``unparsed_text``. Without the path the query would fall back to the title's
  leading terms (brand and model number), which names the target; see ``benchmark.data.adapt``;
- ``<Cat>.{train,valid,test}.inter``: header, then user_idx TAB space-separated history
  item_idx TAB target item_idx; train holds one row per prefix, valid/test the last two targets;
- ``<Cat>.item2index`` / ``<Cat>.user2index``: raw id TAB index (no header).

There are no timestamps: each user's sequence is rebuilt from the rows and ``timestamp`` is the
position (``has_timestamps`` False). Histories are cut to the last 50 items (RecBole's
MAX_ITEM_LIST_LENGTH), so "longest history + target" loses the start of long sequences;
instead the rows are chained: the earliest row's history, then every row's target in order
(train by history length, then valid, then test), and each row's history is checked to be the
window just before its target (``inconsistent_history`` otherwise, and that user falls back to
the longest history + target). The valid and test targets keep their split in ``split``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from benchmark.data.download import RemoteFile, ensure_files
from benchmark.data.loading import (
    Events,
    catalog_row,
    check_split_order,
    finish,
    local_variants,
    read_lines,
)
from benchmark.data.report import DataError, DataReport
from benchmark.data.schema import RawLog

# The UniSRec release is on Google Drive; CoWPiRec's repository re-hosts the Scientific files
# unchanged, so its pinned commit is the download address (checksums: of the uncompressed files).
# 2: the category path and brand are parsed out of the text (1: the whole text was the description)
PARSER_VERSION = 2
BASE = "https://raw.githubusercontent.com/ysh-1998/CoWPiRec/97b0c8e80346c1e5ac43257b420accd620a44d15/dataset"
SHA256 = {
    "Scientific.text": "95887e6bda76e54f59b71b566320520d5da74e21d3b6ff8f20bfb6e8e84aa831",
    "Scientific.train.inter": "7284f6489d956fa20c9b64ffc84569264320edba5c3bc2fcb22db2ea083a1163",
    "Scientific.valid.inter": "5f37c84d3b54617cdc46638c89dfe8741c7efc4987acd5eb64de2cbd4311f46c",
    "Scientific.test.inter": "546da7e5f44002b4518d7fd58066684bc09613f76c240914e16976d57cfe7083",
    "Scientific.item2index": "896ab1017508cf20834d3d0537da9f8f624324223a835af272a98ba16f8c087a",
    "Scientific.user2index": "f0162b1a3a0c6b7e816f86208e7b36f65d6787923126f9558fbc6d368e4c4974",
}
SPLITS = ("train", "valid", "test")
SUFFIXES = ("text", "train.inter", "valid.inter", "test.inter", "item2index", "user2index")


def FILES(category: str) -> list[RemoteFile]:  # noqa: N802 (the loader protocol's name)
    names = [f"{category}.{s}" for s in SUFFIXES]
    url = BASE if category == "Scientific" else None  # other UniSRec sets: obtain by hand
    return [RemoteFile(f"unisrec/{category}/{n}", f"{url}/{category}/{n}" if url else None, SHA256.get(n))
            for n in names]


def _index(text: str) -> int:
    """A RecBole index: ASCII digits. ``int`` alone would also take "+1", "1_0" and other scripts'
    digits (or crash on "²", which ``isdigit`` passes), reading a corrupt field as some index."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"not an index: {text[:20]!r}")
    return int(text)


def _read_index(path: Path, report: DataReport) -> dict[int, str]:
    """index -> raw id, from a ``raw TAB index`` file."""
    out: dict[int, str] = {}
    for lineno, line in read_lines(path, report):
        parts = line.split("\t")
        try:
            if len(parts) != 2 or not parts[0].strip():
                raise ValueError("not raw id TAB index")
            idx = _index(parts[1])
        except ValueError as exc:
            report.issue("bad_row", path, lineno, f"{exc}: {line[:60]!r}")
            continue
        if idx in out:
            report.issue("duplicate_index", path, lineno, f"index {idx} again (first kept)")
            continue
        out[idx] = parts[0].strip()
    return out


def _root_category(texts: list[str]) -> str:
    """The most common first two words of the "category path" slot (the second-to-last ". " segment)."""
    slots = (t.rsplit(". ", 2) for t in texts)
    heads = Counter(" ".join(s[-2].split()[:2]) for s in slots if len(s) == 3)
    heads.pop("", None)
    return heads.most_common(1)[0][0] if heads else ""


def _split_text(text: str, root: str) -> tuple[str, str, str] | None:
    """"title. category path. brand." -> (title, category path, brand), or None when no segment after
    the first is the category (starts with ``root``) or the empty slot."""
    segments = text.split(". ")
    for j in range(1, len(segments)):
        if segments[j] == "" or (root and segments[j].startswith(root + " ")):
            brand = ". ".join(segments[j + 1:]).strip().rstrip(".").strip()
            return ". ".join(segments[:j]).rstrip(".").strip(), segments[j].rstrip(".").strip(), brand
    return None


def _read_text(path: Path, report: DataReport) -> dict[str, dict]:
    rows: list[tuple[str, str, int]] = []
    for lineno, line in read_lines(path, report):
        if lineno == 1 and line.startswith("item_id"):
            continue
        item, sep, text = line.partition("\t")
        item, text = item.strip(), " ".join(text.split())
        if not sep or not item or not text:
            report.issue("missing_field", path, lineno, f"{line[:60]!r}")
            continue
        rows.append((item, text, lineno))
    root = _root_category([text for _, text, _ in rows])
    meta: dict[str, dict] = {}
    for item, text, lineno in rows:
        if item in meta:
            report.issue("duplicate_meta", path, lineno, f"item {item} again (first kept)")
            continue
        parts = _split_text(text, root)
        if parts is None:
            report.issue("unparsed_text", path, lineno, f"no category slot after the title: {text[:60]!r}")
            meta[item] = catalog_row(item, title=text.split(". ", 1)[0].rstrip(".").strip(), description=text)
            continue
        title, category, brand = parts
        meta[item] = catalog_row(item, title=title, brand=brand, category=[category] if category else [])
    return meta


def _read_inter(path: Path, split: str, report: DataReport, rows: dict) -> None:
    """rows[user_idx] += (split, history, target, file, line). A file none of whose rows parses (a
    missing column, another format) is a DataError naming it, not a split silently left empty."""
    good, first_bad = 0, None
    for lineno, line in read_lines(path, report):
        if lineno == 1 and line.startswith("user_id"):
            continue
        parts = line.split("\t")
        try:
            if len(parts) != 3:
                raise ValueError(f"{len(parts)} fields, expected 3")
            user, target = _index(parts[0]), _index(parts[2])
            history = [_index(x) for x in parts[1].split()]
        except ValueError as exc:
            report.issue("bad_row", path, lineno, f"{exc}: {line[:60]!r}")
            first_bad = first_bad or f"line {lineno}: {exc}"
            continue
        rows[user].append((split, history, target, path, lineno))
        good += 1
    if not good:
        raise DataError(f"{path}: no row parses as user_id<TAB>item_id_list<TAB>item_id"
                        + (f" ({first_bad})" if first_bad else " (empty file)"))


def _chain(user_rows: list) -> list[tuple[int, str, Path, int]] | None:
    """[(item_idx, split, file, line)] in order, or None when the rows do not chain."""
    rank = {"train": 0, "valid": 1, "test": 2}
    ordered = sorted(user_rows, key=lambda r: (rank[r[0]], len(r[1]), -r[4]))
    first = ordered[0]
    seq = [(i, "train", first[3], first[4]) for i in first[1]]
    for split, history, target, file, line in ordered:
        before = [s[0] for s in seq]
        if history != before[max(0, len(before) - len(history)):] or (not history and before):
            return None
        seq.append((target, split, file, line))
    return seq


def load(root: Path, category: str, report: DataReport, *, allow_download: bool = True,
         timeout: float = 30) -> RawLog:
    root = Path(root)
    specs = local_variants(root, FILES(category))
    fetched = ensure_files(root, specs, allow_download=allow_download, timeout=timeout)
    text_p, train_p, valid_p, test_p, item_p, user_p = (fetched[s.relpath] for s in specs)
    items = _read_index(item_p, report)
    users = _read_index(user_p, report)
    meta = _read_text(text_p, report)
    rows: dict[int, list] = defaultdict(list)
    for split, path in zip(SPLITS, (train_p, valid_p, test_p), strict=True):
        _read_inter(path, split, report, rows)
    events = Events()
    for user_idx in sorted(rows):
        user_rows = rows[user_idx]
        user = users.get(user_idx)
        if user is None:
            report.issue("unknown_index", user_p, None, f"user index {user_idx} (its rows dropped)")
            continue
        seq = _chain(user_rows)
        if seq is None:
            _, _, _, file, line = user_rows[0]
            report.issue("inconsistent_history", file, line, f"user {user} (longest history + target used)")
            split, history, target, file, line = max(
                user_rows, key=lambda r: (len(r[1]), {"train": 0, "valid": 1, "test": 2}[r[0]]))
            seq = [(i, "train", file, line) for i in history] + [(target, split, file, line)]
        for position, (item_idx, split, file, line) in enumerate(seq):
            item = items.get(item_idx)
            if item is None:
                report.issue("unknown_index", file, line, f"item index {item_idx} (event dropped)")
                continue
            events.add(user, item, position, file, line, split)
    if not events.users:
        raise DataError(f"[unisrec/{category}] no usable rows in {train_p}, {valid_p}, {test_p}")
    log = finish(f"unisrec/{category}", events, meta, report, fetched, has_text=True,
                 has_timestamps=False, meta_file=text_p)
    check_split_order(log, report, f"{category}.*.inter")
    return log
