"""Published splits: a search log exported as a ``datasets`` DatasetDict reads back as the same log."""

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.data import export as E
from benchmark.data.report import DataError

SMALL = ["synthetic.n_items=120", "synthetic.n_users=60", "synthetic.image_size=16"]


@pytest.fixture
def exported(tmp_path):
    from benchmark.data.download import data_root
    from benchmark.run import compose_config
    from benchmark.runner import load_log
    from benchmark.runner.spec import mode_config

    cfg = mode_config(compose_config("smoke", [f"data_dir={tmp_path}", *SMALL]), "coarse")
    log = load_log("synthetic", cfg, data_root(cfg.data_dir))
    E.export(log, tmp_path / "out", suite=cfg.suite, suite_version=cfg.suite_version, mode="coarse",
             card=E.card_path("synthetic"))
    return log, tmp_path / "out"


def test_round_trip_gives_the_same_log_and_fingerprint(exported):
    log, folder = exported
    back = E.load(folder)
    assert back.fingerprint == log.fingerprint
    assert E.content_digest(back) == E.content_digest(log)
    pd.testing.assert_frame_equal(back.catalog.drop(columns="category"), log.catalog.drop(columns="category"),
                                  check_dtype=False)
    assert back.catalog["category"].tolist() == log.catalog["category"].map(list).tolist()
    assert back.impressions["split"].tolist() == log.impressions["split"].tolist()
    for column in ("history", "exposures"):
        assert all(np.array_equal(a, b) and a.dtype == np.int64
                   for a, b in zip(back.impressions[column], log.impressions[column], strict=True))
    manifest = json.loads((folder / E.MANIFEST).read_text())
    assert manifest["mode"] == "coarse" and manifest["suite"] == "smoke"
    assert manifest["impressions"] == {s: int((log.impressions["split"] == s).sum()) for s in ("train", "valid", "test")}
    assert (folder / "README.md").read_text() == E.card_path("synthetic").read_text()


def test_the_export_is_a_plain_datasetdict(exported):
    from datasets import load_from_disk

    log, folder = exported
    parts = load_from_disk(str(folder))
    assert set(parts) == {"catalog", "users", "train", "valid", "test"}
    test = parts["test"]
    first = log.impressions[log.impressions["split"] == "test"].iloc[0]
    assert test[0]["target"] == first["target"] and test[0]["history"] == first["history"].tolist()


def test_an_altered_file_is_refused(exported):
    _, folder = exported
    arrow = sorted((folder / "test").glob("*.arrow"))[0]
    data = bytearray(arrow.read_bytes())
    data[-9] ^= 0xFF
    arrow.write_bytes(bytes(data))
    with pytest.raises(DataError, match="altered"):
        E.load(folder)


def test_altered_content_under_a_rewritten_checksum_is_refused(exported):
    """Rewriting a split consistently (and its checksum) still fails the content digest."""
    from datasets import load_from_disk

    from benchmark.data.download import sha256_file

    _, folder = exported
    parts = load_from_disk(str(folder))
    shifted = parts["test"].map(lambda row: {"target": row["target"] + 1})
    moved = folder.with_name("moved")
    parts["test"] = shifted
    parts.save_to_disk(str(moved))
    manifest = json.loads((folder / E.MANIFEST).read_text())
    manifest["files"] = {str(p.relative_to(moved)): sha256_file(p) for p in sorted(moved.rglob("*")) if p.is_file()}
    (moved / E.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="content digest"):
        E.load(moved)


def test_an_existing_folder_is_never_overwritten(exported):
    log, folder = exported
    with pytest.raises(FileExistsError):
        E.export(log, folder, suite="smoke", suite_version="1", mode="coarse")


def test_the_command_line_exports_and_refuses_a_bad_mode(tmp_path, capsys):
    args = ["--suite", "smoke", "--data-dir", str(tmp_path), "--dataset", "synthetic"]
    assert E.main([*args, "--mode", "none", "--out", str(tmp_path / "none"), *SMALL]) == 0
    log = E.load(tmp_path / "none")
    assert (log.impressions["query"] == "").all()  # mode none: no query
    assert E.main([*args, "--mode", "fuzzy", "--out", str(tmp_path / "bad"), *SMALL]) == 2
    assert "unknown query mode" in capsys.readouterr().err and not (tmp_path / "bad").exists()
