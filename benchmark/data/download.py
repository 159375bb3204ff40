"""Where the raw data lives, and how a missing raw file gets there (cached, checksummed, atomic).

Every loader names its files as ``RemoteFile``s (path under the data root, official URL, sha256
when known) and calls ``ensure_files``. A file already under the root is used as is (after its
checksum is checked); a missing one is downloaded to ``<name>.partial`` next to its final place,
checked, then renamed, so an interrupted or corrupt download never leaves a file that looks
complete. When a file cannot be had (no URL, no network) one ``DataError`` lists every missing
file with the full path it is expected at, so an offline user can put it there or pass
``--data-dir``. Downloads use a socket timeout, so an offline machine fails in seconds.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmark.data.report import DataError

DATA_ENV = "KARMA_BENCH_DATA"  # environment variable naming the data root
CHUNK = 1 << 20  # bytes per read, for hashing and downloading
USER_AGENT = "karma-bench (+https://github.com/; research benchmark data fetch)"


CACHE_ENV = "KARMA_BENCH_CACHE"  # environment variable naming the cache root (processed data, model caches)


def cache_root() -> Path:
    """Where derived files go (processed logs, generated images, model caches): $KARMA_BENCH_CACHE,
    else the user cache dir. Never the data root, which may be a read-only mirror."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("karma-bench")) / "cache"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root: the explicit argument (``--data-dir``), else $KARMA_BENCH_DATA, else the
    per-user cache folder (``platformdirs.user_cache_dir("karma-bench")/data``)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs  # imported here: only the fallback needs it

    return Path(platformdirs.user_cache_dir("karma-bench")) / "data"


@dataclass(frozen=True)
class RemoteFile:
    relpath: str  # path under the data root, e.g. "amazon2018/Gift_Cards/Gift_Cards_5.json.gz"
    url: str | None  # official download address (None: must be supplied by hand)
    sha256: str | None  # expected checksum of the file as downloaded (None: not known)


class FetchedFiles(dict):
    """What ``ensure_files`` hands back: a ``dict`` relpath -> local Path, plus ``.sha256``
    (relpath -> sha256 of the bytes actually present), for ``RawLog.raw_files``."""

    def __init__(self, paths: dict[str, Path], sha256: dict[str, str]):
        super().__init__(paths)
        self.sha256 = dict(sha256)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def seal(path: str | os.PathLike) -> None:
    """Write ``<file>.sha256`` beside a cache file that was just written whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.sha256.tmp")
    tmp.write_text(sha256_file(path) + "\n")
    tmp.replace(path.with_name(path.name + ".sha256"))


def is_sealed(path: str | os.PathLike) -> bool:
    """Whether a cache file is the one that was written: its ``.sha256`` exists and matches. A
    truncated or altered file, or one written before caches were sealed, is not (so it is rebuilt)."""
    path = Path(path)
    stamp = path.with_name(path.name + ".sha256")
    try:
        return path.is_file() and stamp.read_text().strip() == sha256_file(path)
    except OSError:
        return False


def _check(path: Path, expected: str | None) -> str:
    got = sha256_file(path)
    if expected and got.lower() != expected.lower():
        raise DataError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {got}. "
            "The file is corrupt or a different version; delete it to download it again, "
            "or put the right file there."
        )
    return got


def _download(url: str, dest: Path, expected: str | None, timeout: float) -> str:
    """Download ``url`` to ``dest`` through ``dest.partial``; return its sha256.

    The partial file is removed on any failure (network, checksum, interrupt), and the final
    name only ever appears through an atomic ``os.replace`` of a verified file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        # ``timeout`` bounds the connect and every blocking read, so a dead server cannot hang us.
        with urllib.request.urlopen(request, timeout=timeout) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
            expected_size = response.headers.get("Content-Length")
            # urllib does not notice a connection closed early when reading in chunks: check size.
            if expected_size and expected_size.isdigit() and out.tell() != int(expected_size):
                raise http.client.IncompleteRead(b"", int(expected_size) - out.tell())
        got = sha256_file(partial)
        if expected and got.lower() != expected.lower():
            raise DataError(
                f"checksum mismatch for {dest.name} downloaded from {url}: expected sha256 {expected}, "
                f"got {got}; the download was discarded."
            )
        os.replace(partial, dest)
        return got
    finally:
        if partial.exists():
            partial.unlink()


def ensure_files(
    root: str | os.PathLike,
    files: list[RemoteFile],
    *,
    allow_download: bool = True,
    timeout: float = 30,
) -> FetchedFiles:
    """Make every file present under ``root`` and verified; return paths and checksums read.

    Present files are checksum-checked (a mismatch raises at once, naming file, expected and
    got). Missing ones are downloaded when allowed; those that cannot be had are collected and
    reported together in one ``DataError``.
    """
    root = Path(root)
    paths: dict[str, Path] = {}
    sums: dict[str, str] = {}
    missing: list[tuple[RemoteFile, Path, str]] = []  # (file, expected path, why)
    for spec in files:
        path = root / spec.relpath
        if path.is_file():
            sums[spec.relpath] = _check(path, spec.sha256)
            paths[spec.relpath] = path
            continue
        if not allow_download:
            missing.append((spec, path, "downloads disabled"))
            continue
        if not spec.url:
            missing.append((spec, path, "no public download address"))
            continue
        try:
            sums[spec.relpath] = _download(spec.url, path, spec.sha256, timeout)
            paths[spec.relpath] = path
        except DataError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:  # offline, cut, HTTP
            reason = getattr(exc, "reason", None) or exc
            missing.append((spec, path, f"download failed: {reason}"))
    if missing:
        lines = [f"{len(missing)} data file(s) missing and not downloadable:"]
        for spec, path, why in missing:
            lines.append(f"  - {path}\n      from {spec.url or '(no URL: obtain it by hand)'} ({why})")
        lines.append(
            f"Put the file there or pass --data-dir DIR (or set ${DATA_ENV}=DIR) where DIR holds the "
            f"same layout (data root now: {root})."
        )
        raise DataError("\n".join(lines))
    return FetchedFiles(paths=paths, sha256=sums)
