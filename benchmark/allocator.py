"""The memory allocator: mimalloc (from the ``cmeel-mimalloc`` wheel), preloaded by the entry points.

Each training step of the LLM family frees and re-allocates the same large activations. glibc's
malloc returns such blocks to the OS and faults them in again on the next step: py-spy on a suite
run (``unisrec/Scientific@1020users``, one thread) put 16-24% of its samples in glibc's malloc and
``c10::alloc_cpu``. An allocator that keeps freed memory removes that cost without changing a bit.
Measured on this kind of machine (AMD EPYC, one thread, 12 ``karma:karma`` training steps after an
untimed one, median seconds per step; losses bit-identical in every case): glibc 6.43-6.59, glibc
with ``MALLOC_MMAP_MAX_=0`` and a large trim threshold 6.51, jemalloc 6.65-7.06, mimalloc with its
default purging 7.62-7.99, mimalloc with ``MIMALLOC_PURGE_DELAY=-1`` (never return freed pages)
5.10-5.24, tcmalloc 5.02-5.32. mimalloc ships on PyPI (tcmalloc does not), so it is the one the project installs.

An allocator is chosen by ``LD_PRELOAD`` before the interpreter starts, so each command-line entry
point calls :func:`preload` first: it re-executes the same command once with the library preloaded
(what ``torch.backends.xeon.run_cpu`` does for its launches; it looks for tcmalloc, jemalloc and
iomp only, in a few fixed folders). Nothing else changes, so a machine without the wheel runs the
same code on the C library's malloc, slower. ``KARMA_BENCH_ALLOCATOR=system`` keeps that malloc; a
path there preloads that library instead (e.g. Debian's ``libtcmalloc_minimal.so.4``). Every record
says which allocator ran (``environment.allocator``).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

ENV = "KARMA_BENCH_ALLOCATOR"
PRELOADED = "KARMA_BENCH_PRELOADED"  # set in the re-executed process, so it never re-executes again
KNOWN = ("mimalloc", "tcmalloc", "jemalloc")  # the allocators :func:`in_use` recognises
# mimalloc's default returns freed pages to the OS after 10 ms: the cost this module removes
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1"}


def find_mimalloc() -> str | None:
    """The shared library the ``cmeel-mimalloc`` wheel installed, None without the wheel."""
    try:
        files = importlib.metadata.files("cmeel-mimalloc") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return min((str(f.locate()) for f in files if Path(str(f)).name.startswith("libmimalloc.so")), default=None)


def in_use(maps: str | None = None) -> str:
    """The allocator mapped into this process (``maps``: the text of /proc/self/maps), or "system" (the C
    library's malloc); "unknown" where /proc is missing."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "unknown"
    libraries = {Path(line.split()[-1]).name for line in maps.splitlines() if ".so" in line}
    for name in KNOWN:
        if any(lib.startswith(f"lib{name}") for lib in libraries):
            return name
    return "system"


def preload() -> None:
    """Re-execute this command with mimalloc (or ``$KARMA_BENCH_ALLOCATOR``'s library) preloaded, once;
    return at once where that is off, not possible (not Linux, no library) or already done. Call it
    first thing in an entry point's ``__main__`` block, never from library code: it replaces the
    running process."""
    choice = os.environ.get(ENV, "mimalloc")
    if sys.platform != "linux" or choice == "system" or os.environ.get(PRELOADED) or in_use() != "system":
        return
    library = find_mimalloc() if choice == "mimalloc" else choice
    if library is None:
        return
    if not Path(library).is_file():
        raise SystemExit(f"error: {ENV}={choice!r}: no such library file; use 'mimalloc', 'system' or the path "
                         "of an allocator's .so")
    settings = MIMALLOC_SETTINGS if "mimalloc" in Path(library).name else {}
    env = {**settings, **os.environ, PRELOADED: library,
           "LD_PRELOAD": os.pathsep.join(p for p in (library, os.environ.get("LD_PRELOAD")) if p)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
