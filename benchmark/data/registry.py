"""Which datasets exist, how to load each, and which are present under a data root.

A dataset name is ``<family>/<Category>`` (for example ``amazon2018/Gift_Cards``) or, for a generated
family, its name alone (``synthetic``). Each family is one ``Family`` object (its loader module, with
``FILES(category)`` and ``load``, the files that show it is present, what they carry, its card and
terms); nothing else in the project branches on a family's name. ``discover`` lists the real sets
found under a data root, so the full suite runs on whatever the user has.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from benchmark.data.report import DataError


@dataclass(frozen=True)
class Family:
    """What is known of a dataset family before loading it: its loader module, the files that show a
    category is present, what its files carry, its card and its terms. File names are templates of the
    category (``{c}``); a ``.gz`` copy counts as the file."""

    name: str
    module: str  # the loader: FILES(category) and load(root, category, report, allow_download=...)
    present: tuple[str, ...]  # any of these in <root>/<family>/<Category>/: the set can load offline
    text: bool | tuple[str, ...]  # item text: always, never, or when one of these metadata files is there
    paths: bool | tuple[str, ...] | None  # category paths (the search modes need them); None: as text
    timestamps: bool  # False: the file order stands in for time
    image_urls: bool  # the text metadata lists image URLs (fetched with images.fetch=true)
    card: str  # datasets/<card>
    terms: str  # licence / terms of use, as the card states them
    # generated: no files and no category; its loader builds the log from the suite's config section of
    # the family's name (``load(cache_root, config, report)``) and renders every item's image itself
    generated: bool = False

    def is_present(self, root: Path, category: str) -> bool:
        """True when the set can load without network: a generated one always can; a real one needs
        one of its ``present`` files in ``<root>/<family>/<Category>/``."""
        if self.generated:
            return True
        folder = root / self.name / category
        if not folder.is_dir():
            return False
        names = {f.name.removesuffix(".gz") for f in folder.iterdir() if f.is_file()}
        return any(n.format(c=category) in names for n in self.present)

    def image_folder(self, root: Path, category: str) -> Path | None:
        """Where item images named by item id are looked up; None for a generated set (it draws its own)."""
        return None if self.generated else root / self.name / category / "images"

    def _any(self, folder: Path, category: str, names: tuple[str, ...]) -> bool:
        return any((folder / (n.format(c=category) + gz)).exists() for n in names for gz in ("", ".gz"))

    def has_text(self, folder: Path, category: str) -> bool:
        return self.text if isinstance(self.text, bool) else self._any(folder, category, self.text)

    def has_paths(self, folder: Path, category: str) -> bool:
        if self.paths is None:
            return self.has_text(folder, category)
        return self.paths if isinstance(self.paths, bool) else self._any(folder, category, self.paths)


RESEARCH_ONLY = "no formal licence; research use; do not redistribute"
# One entry per family; the CLI's choices come from here.
FAMILY_LIST = [
    Family("amazon2018", "benchmark.data.amazon2018", ("{c}_5.json", "{c}.json"), ("meta_{c}.json",), None,
           timestamps=True, image_urls=True, card="amazon2018.md", terms=RESEARCH_ONLY),
    Family("amazon2023", "benchmark.data.amazon2023", ("{c}.jsonl", "{c}.train.csv"), True, ("meta_{c}.jsonl",),
           timestamps=True, image_urls=True, card="amazon2023.md", terms=RESEARCH_ONLY),
    Family("amazon2014", "benchmark.data.amazon2014", ("reviews_{c}_5.json",), ("meta_{c}.json",), None,
           timestamps=True, image_urls=True, card="amazon2014.md", terms=RESEARCH_ONLY),
    Family("s3rec", "benchmark.data.s3rec", ("user_sequence.txt",), False, False,
           timestamps=False, image_urls=False, card="s3rec.md", terms=RESEARCH_ONLY + " (derived from Amazon 2014)"),
    Family("unisrec", "benchmark.data.unisrec", ("{c}.train.inter",), True, True,
           timestamps=False, image_urls=False, card="unisrec.md", terms=RESEARCH_ONLY + " (derived from Amazon 2018)"),
    Family("synthetic", "benchmark.data.synthetic", (), True, True, timestamps=True, image_urls=False,
           card="synthetic.md", terms="Apache-2.0, like the code (generated here)", generated=True),
]
FAMILY = {f.name: f for f in FAMILY_LIST}


@dataclass(frozen=True)
class DatasetName:
    family: str
    category: str
    users: int = 0  # > 0: the fixed subsample of this many users (``<family>/<Category>@<N>users``)

    @property
    def name(self) -> str:
        base = self.family if FAMILY[self.family].generated else f"{self.family}/{self.category}"
        return f"{base}@{self.users}users" if self.users else base


def parse(name: str) -> DatasetName:
    """A generated family's name (``synthetic``), ``<family>/<Category>``, or either with ``@<N>users``: a
    fixed subsample of N users (:func:`benchmark.data.adapt.sample_users`), a view of its own with its
    own records."""
    base, _, view = name.partition("@")
    users = 0
    if view:
        match = re.fullmatch(r"([1-9][0-9]*)users", view)
        if match is None:
            raise DataError(f"bad dataset view {name!r}: the part after '@' must be <N>users, e.g. @3000users")
        users = int(match.group(1))
    if base in FAMILY and FAMILY[base].generated:
        return DatasetName(base, "", users)
    family, _, category = base.partition("/")
    if family not in FAMILY or FAMILY[family].generated or not category:
        generated = sorted(f.name for f in FAMILY_LIST if f.generated)
        real = sorted(f.name for f in FAMILY_LIST if not f.generated)
        raise DataError(f"unknown dataset {name!r}; valid: {generated}, or <family>/<Category> with family in "
                        f"{real} (e.g. amazon2018/Gift_Cards), optionally with @<N>users, or '*' "
                        "for every set under the data root")
    return DatasetName(family, category, users)


def loader(family: str):
    return importlib.import_module(FAMILY[family].module)


def is_present(root: Path, name: str) -> bool:
    """True when ``name`` can load without network (its family's files are under ``root``)."""
    spec = parse(name)
    return FAMILY[spec.family].is_present(root, spec.category)


def discover(root: Path) -> list[str]:
    """Every real dataset found under ``root``, sorted by name (generated sets are named, not found)."""
    found = []
    for family in sorted(FAMILY_LIST, key=lambda f: f.name):
        base = root / family.name
        if not family.generated and base.is_dir():
            found += [f"{family.name}/{d.name}" for d in sorted(base.iterdir()) if family.is_present(root, d.name)]
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
    """Whether item images can be had without loading: a generated set renders its own; a real set
    needs an ``images/`` folder (files named by item id) or, with fetching on, item text metadata
    (where the image URLs are)."""
    spec = parse(name)
    family = FAMILY[spec.family]
    folder = family.image_folder(root, spec.category)
    if folder is None:
        return True
    return (folder.is_dir() and any(folder.iterdir())) or (fetch and family.image_urls and has_text(root, name))


def has_text(root: Path, name: str) -> bool:
    """Whether the dataset has item text (LLM models need it); decided from the files, without loading."""
    spec = parse(name)
    return FAMILY[spec.family].has_text(root / spec.family / spec.category, spec.category)


def query_modes(root: Path, name: str) -> list[str]:
    """The query modes a dataset supports, decided from the files without loading: the search modes
    need item category paths (``benchmark.data.adapt.search_modes`` checks the loaded catalog too)."""
    spec = parse(name)
    has_paths = FAMILY[spec.family].has_paths(root / spec.family / spec.category, spec.category)
    return ["none", "coarse", "hem"] if has_paths else ["none"]
