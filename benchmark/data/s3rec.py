"""The S3-Rec / P5 sequence file: ``user_sequence.txt[.gz]``, one line per user, the user id then
their item ids in chronological order, separated by spaces. ID-only (no text: ``has_text``
False, no query, no BM25) and without a clock: ``timestamp`` is the position in the sequence
(``has_timestamps`` False, so no global time split and no ``timestamp_tie``).

Files under ``<root>/s3rec/<Cat>/``. The Beauty file is the Amazon 2014 Beauty 5-core in the
layout P5 published and later work (e.g. GRAM) re-hosts; its original is on Google Drive, so the
URL is the GRAM copy, and its checksum is that of the uncompressed file.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmark.data.download import RemoteFile, ensure_files
from benchmark.data.loading import Events, finish, local_variants, read_lines
from benchmark.data.report import DataReport
from benchmark.data.schema import RawLog

ID = re.compile(r"[A-Za-z0-9_.:-]+")  # a user or item id token
BASE = "https://raw.githubusercontent.com/skleee/GRAM/main/rec_datasets"
# sha256 of the uncompressed user_sequence.txt (the shared mirror gzip'd it; see datasets/s3rec.md)
SHA256 = {"Beauty": "47197cbee7bdc1896926e10d96b807dce0aecb9a1f0c2ccc887c21090237c9b7"}


def FILES(category: str) -> list[RemoteFile]:  # noqa: N802 (the loader protocol's name)
    return [RemoteFile(f"s3rec/{category}/user_sequence.txt", f"{BASE}/{category}/user_sequence.txt",
                       SHA256.get(category))]


def read_sequences(path: Path, report: DataReport, events: Events) -> None:
    """One user per line, ``user item item ...`` (space-separated ids, in order); any other line is
    counted (``bad_row``, ``empty_sequence``, ``duplicate_user``) and skipped."""
    seen: set[str] = set()
    for lineno, line in read_lines(path, report):
        tokens = line.split()
        if "\t" in line or not all(ID.fullmatch(t) for t in tokens):  # JSON, TSV or other text: not this format
            report.issue("bad_row", path, lineno, f"not space-separated ids: {line[:60]!r}")
            continue
        user, *items = tokens
        if not items:
            report.issue("empty_sequence", path, lineno, f"user {user} has no items")
            continue
        if user in seen:
            report.issue("duplicate_user", path, lineno, f"user {user} again (first line kept)")
            continue
        seen.add(user)
        for position, item in enumerate(items):
            events.add(user, item, position, path, lineno)


def load(root: Path, category: str, report: DataReport, *, allow_download: bool = True,
         timeout: float = 30) -> RawLog:
    root = Path(root)
    (spec,) = local_variants(root, FILES(category))
    fetched = ensure_files(root, [spec], allow_download=allow_download, timeout=timeout)
    path = fetched[spec.relpath]
    events = Events()
    read_sequences(path, report, events)
    return finish(f"s3rec/{category}", events, None, report, fetched, has_text=False, has_timestamps=False)
