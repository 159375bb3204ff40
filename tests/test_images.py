"""Item images as local files: data folder by item id, catalog files, verified cache, bounded fetching."""

import json
import urllib.error

import pytest

from benchmark.data import images as I


def _png(path, color=(1, 2, 3)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color=color).save(path)
    return path


def test_local_folder_by_item_id_and_catalog_files_need_no_network(tmp_path, monkeypatch):
    monkeypatch.setattr(I, "_download", lambda *a, **k: pytest.fail("no network may be used"))
    folder = tmp_path / "images"
    _png(folder / "a.jpg")
    own = _png(tmp_path / "render" / "b.png")
    files, stats = I.resolve_images(["a", "b", "c", "d"], ["http://x/a.jpg", str(own), None, "http://x/d.jpg"],
                                    folder, tmp_path / "cache", fetch=False)
    assert files == [str(folder / "a.jpg"), str(own), None, None]
    assert (stats.local_folder, stats.catalog_file, stats.no_image, stats.failed, stats.with_image) == (1, 1, 1, 1, 2)


def test_fetched_images_are_cached_with_checksums_and_refetched_when_corrupted(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dest, expected, timeout):
        calls.append((url, timeout))
        _png(dest, color=(len(calls), 0, 0))
        return I.sha256_file(dest)

    monkeypatch.setattr(I, "_download", fake_download)
    cache = tmp_path / "cache"
    files, stats = I.resolve_images(["a"], ["https://x/a.png"], None, cache, fetch=True, timeout=3.0)
    assert stats.fetched == 1 and calls == [("https://x/a.png", 3.0)] and files == [str(cache / "a.png")]
    manifest = json.loads((cache / I.MANIFEST).read_text())
    assert manifest["a"]["sha256"] == I.sha256_file(cache / "a.png")
    _, stats = I.resolve_images(["a"], ["https://x/a.png"], None, cache, fetch=True)  # hit: no download
    assert stats.cached == 1 and len(calls) == 1
    (cache / "a.png").write_bytes(b"corrupt")
    _, stats = I.resolve_images(["a"], ["https://x/a.png"], None, cache, fetch=True)  # checksum mismatch
    assert stats.fetched == 1 and len(calls) == 2
    (cache / "a.png").write_bytes(b"corrupt")
    files, stats = I.resolve_images(["a"], ["https://x/a.png"], None, cache, fetch=False)  # offline: dropped
    assert files == [None] and stats.failed == 1 and len(calls) == 2


def test_fetching_stops_after_consecutive_network_errors(tmp_path, monkeypatch):
    calls = []

    def offline(url, dest, expected, timeout):
        calls.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(I, "_download", offline)
    ids = [f"i{k}" for k in range(10)]
    files, stats = I.resolve_images(ids, [f"https://x/{i}.jpg" for i in ids], None, tmp_path / "c", fetch=True,
                                    max_failures=3)
    assert files == [None] * 10 and len(calls) == 3 and stats.failed == 10 and "3 consecutive" in stats.fetch_stopped


def test_mismatched_lengths_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="2 item ids but 1"):
        I.resolve_images(["a", "b"], [None], None, tmp_path)
