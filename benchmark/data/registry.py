"""Which datasets exist, how to load each, and which are present under a data root.

A dataset name is ``<family>/<Category>`` (for example ``amazon2018/Gift_Cards``) or
``synthetic``. Each family maps to a loader module with ``FILES(category)`` and
``load(root, category, report, allow_download=...)``. ``discover`` lists the real sets found
under a data root, so the full suite runs on whatever the user has.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from benchmark.data.report import DataError

# family -> loader module. A plain dict: the CLI's choices come from here.
FAMILIES: dict[str, str] = {
    "amazon2018": "benchmark.data.amazon2018",
    "amazon2023": "benchmark.data.amazon2023",
    "amazon2014": "benchmark.data.amazon2014",
    "s3rec": "benchmark.data.sequence",
    "unisrec": "benchmark.data.atomic",
}
EMBEDDED = "synthetic"


@dataclass(frozen=True)
class DatasetName:
    family: str
    category: str
    users: int = 0  # > 0: the fixed subsample of this many users (``<family>/<Category>@<N>users``)

    @property
    def name(self) -> str:
        base = self.family if self.family == EMBEDDED else f"{self.family}/{self.category}"
        return f"{base}@{self.users}users" if self.users else base


def parse(name: str) -> DatasetName:
    """``synthetic``, ``<family>/<Category>``, or either with ``@<N>users``: a fixed subsample of N users
    (:func:`benchmark.data.adapt.sample_users`), a view of its own with its own records."""
    base, _, view = name.partition("@")
    users = 0
    if view:
        match = re.fullmatch(r"([1-9][0-9]*)users", view)
        if match is None:
            raise DataError(f"bad dataset view {name!r}: the part after '@' must be <N>users, e.g. @3000users")
        users = int(match.group(1))
    if base == EMBEDDED:
        return DatasetName(EMBEDDED, "", users)
    family, _, category = base.partition("/")
    if family not in FAMILIES or not category:
        raise DataError(f"unknown dataset {name!r}; valid: '{EMBEDDED}', or <family>/<Category> with family in "
                        f"{sorted(FAMILIES)} (e.g. amazon2018/Gift_Cards), optionally with @<N>users, or '*' "
                        "for every set under the data root")
    return DatasetName(family, category, users)


def loader(family: str):
    return importlib.import_module(FAMILIES[family])


def _present(root: Path, family: str, category: str) -> bool:
    """True when the folder holds something the family's loader can read without network."""
    folder = root / family / category
    if not folder.is_dir():
        return False
    files = [f.name for f in folder.iterdir() if f.is_file()]
    stem = {
        "amazon2018": (f"{category}_5.json", f"{category}.json"),
        "amazon2023": (f"{category}.jsonl", f"{category}.train.csv"),
        "amazon2014": (f"reviews_{category}_5.json",),
        "s3rec": ("user_sequence.txt",),
        "unisrec": (f"{category}.train.inter",),
    }[family]
    return any(f.removesuffix(".gz") in stem for f in files)


def discover(root: Path) -> list[str]:
    """Every real dataset found under ``root``, sorted by name."""
    found = []
    for family in sorted(FAMILIES):
        base = root / family
        if base.is_dir():
            found += [f"{family}/{d.name}" for d in sorted(base.iterdir()) if _present(root, family, d.name)]
    return found


def expand(names: list[str], root: Path) -> list[str]:
    """Resolve ``*`` to the discovered sets; keep order, drop repeats, validate every name."""
    out: list[str] = []
    for name in names:
        for n in (discover(root) if name == "*" else [name]):
            parse(n)
            if n not in out:
                out.append(n)
    return out


def has_images(root: Path, name: str, fetch: bool = False) -> bool:
    """Whether item images can be had without loading: the embedded catalog renders its own; a real
    set needs an ``images/`` folder (files named by item id) or, with fetching on, item text metadata
    (where the image URLs are)."""
    spec = parse(name)
    if spec.family == EMBEDDED:
        return True
    folder = root / spec.family / spec.category / "images"
    return (folder.is_dir() and any(folder.iterdir())) or (fetch and has_text(root, name))


def has_text(root: Path, name: str) -> bool:
    """Whether the dataset has item text (LLM models need it); decided from the files, without loading."""
    spec = parse(name)
    if spec.family == EMBEDDED or spec.family in ("unisrec", "amazon2023"):
        return True
    if spec.family == "s3rec":
        return False
    folder = root / spec.family / spec.category
    return any((folder / f"meta_{spec.category}.json{gz}").exists() for gz in ("", ".gz"))


def query_modes(root: Path, name: str) -> list[str]:
    """The query modes a dataset supports, decided from the files without loading: the search modes
    need item category paths (``benchmark.data.adapt.search_modes`` checks the loaded catalog too)."""
    spec = parse(name)
    folder = root / spec.family / spec.category
    if spec.family in (EMBEDDED, "unisrec"):
        has_paths = True
    elif spec.family == "amazon2023":  # the benchmark-split CSV layout's item table has no categories
        has_paths = any((folder / f"meta_{spec.category}.jsonl{gz}").exists() for gz in ("", ".gz"))
    else:
        has_paths = has_text(root, name)  # the 2014 / 2018 metadata carry a category list
    return ["none", "coarse", "hem"] if has_paths else ["none"]
