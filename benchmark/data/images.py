"""Item images as local files: a ``--data-dir`` folder by item id, the embedded catalog's renders, or
image URLs fetched into the cache (KARMA's visual head, issue "Multimodal KARMA").

Resolution order for each catalog item (first hit wins):

1. ``<data root>/<family>/<category>/images/<item_id>.<ext>`` (jpg, jpeg, png, webp): a data folder that
   holds images by item id works with no network at all;
2. the catalog's ``image`` value when it is already a local file (the embedded catalog's renders);
3. a file fetched earlier into ``<cache>/images/<family>__<category>/`` whose sha256 still matches the
   manifest written when it was fetched (a corrupted or edited file is fetched again, or dropped);
4. only when fetching is on: the catalog's image URL, downloaded with a socket timeout through the
   same atomic ``.partial`` path as the datasets (:func:`benchmark.data.download._download`). After
   ``max_failures`` consecutive network errors fetching stops (an offline machine fails in seconds,
   not once per item).

Items left without a file get ``None``: the visual loss masks them out and the data report counts them.
"""

from __future__ import annotations

import json
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from benchmark.data.download import _download, sha256_file

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MANIFEST = "manifest.json"


@dataclass
class ImageStats:
    items: int = 0
    local_folder: int = 0  # found under the data folder by item id
    catalog_file: int = 0  # the catalog already named a local file
    cached: int = 0  # fetched by an earlier run, checksum verified
    fetched: int = 0  # downloaded now
    failed: int = 0  # had a URL, but the fetch failed (or fetching stopped)
    no_image: int = 0  # no file and no URL
    fetch_stopped: str = ""  # why fetching stopped early, if it did
    manifest: dict = field(default_factory=dict, repr=False)

    @property
    def with_image(self) -> int:
        return self.local_folder + self.catalog_file + self.cached + self.fetched

    def summary(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "manifest"}
        out["with_image"] = self.with_image
        return out


def _is_url(value) -> bool:
    return isinstance(value, str) and urlparse(value).scheme in ("http", "https")


def _suffix(url: str) -> str:
    ext = Path(urlparse(url).path).suffix.lower()
    return ext if ext in EXTENSIONS else ".jpg"


def resolve_images(item_ids: list[str], images: list, local_dir: Path | None, cache_dir: Path, *,
                   fetch: bool = False, timeout: float = 10.0, max_failures: int = 3) -> tuple[list[str | None], ImageStats]:
    """One local image path (or None) per item; see the module docstring for the order."""
    if len(item_ids) != len(images):
        raise ValueError(f"{len(item_ids)} item ids but {len(images)} image entries")
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    stats = ImageStats(items=len(item_ids))
    by_id = {}
    if local_dir is not None and Path(local_dir).is_dir():
        by_id = {p.stem: p for p in Path(local_dir).iterdir() if p.suffix.lower() in EXTENSIONS}
    out: list[str | None] = []
    failures = 0
    for item_id, image in zip(item_ids, images, strict=True):
        item_id = str(item_id)
        if item_id in by_id:
            stats.local_folder += 1
            out.append(str(by_id[item_id]))
            continue
        if isinstance(image, str) and not _is_url(image) and Path(image).is_file():
            stats.catalog_file += 1
            out.append(image)
            continue
        if not _is_url(image):
            stats.no_image += 1
            out.append(None)
            continue
        entry = manifest.get(item_id)
        if entry and entry.get("url") == image:
            path = cache_dir / entry["file"]
            if path.is_file() and sha256_file(path) == entry["sha256"]:
                stats.cached += 1
                out.append(str(path))
                continue
        if not fetch or stats.fetch_stopped:
            stats.failed += 1
            out.append(None)
            continue
        dest = cache_dir / f"{item_id}{_suffix(image)}"
        try:
            digest = _download(image, dest, None, timeout)
        except (urllib.error.URLError, OSError, ValueError) as err:
            stats.failed += 1
            out.append(None)
            failures += 1
            if failures >= max_failures:
                stats.fetch_stopped = f"{failures} consecutive fetch errors, last: {type(err).__name__}: {err}"
            continue
        failures = 0
        manifest[item_id] = {"url": image, "file": dest.name, "sha256": digest}
        stats.fetched += 1
        out.append(str(dest))
    if stats.fetched:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=0, sort_keys=True))
        tmp.replace(manifest_path)
    stats.manifest = manifest
    return out, stats
