"""Bring your own model: an external class named by its import path, and the Python entry point."""

import hashlib
import json
from pathlib import Path

from benchmark.run import main
from examples.item_knn import ItemKNN

# the funnel's CTR model is the slow part of a smoke run and has its own tests
TINY = ["synthetic.n_items=120", "synthetic.n_users=80", "synthetic.image_size=16", "train.max_epochs=2",
        "train.progress=false", "funnel.enabled=false"]


def _args(tmp_path: Path) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
            f"leaderboard={tmp_path / 'leaderboard.md'}"]


def test_an_external_model_runs_from_the_command_line_and_from_python_alike(tmp_path):
    from benchmark.byo import evaluate_model

    assert main(["--suite", "smoke", *_args(tmp_path), *TINY, "models=[examples.item_knn.ItemKNN]"]) == 0
    path = tmp_path / "results" / "records" / "smoke" / "synthetic" / "none" / "examples.item_knn.ItemKNN__default__seed0.json"
    record = json.loads(path.read_text())  # query-blind (query_use "ignored"): it ran in mode none
    source = record["model_source"]
    assert source["import_path"] == "examples.item_knn.ItemKNN"
    assert source["sha256"] == hashlib.sha256(Path(source["file"]).read_bytes()).hexdigest()
    assert record["config"]["model_config"] == {"max_history": 20} and 0 < record["metrics"]["test"]["HR@10"] <= 1
    board = (tmp_path / "leaderboard.md").read_text()
    assert "examples.item_knn.ItemKNN" in board
    assert f"`examples.item_knn.ItemKNN` (item_knn.py, sha256 {source['sha256'][:12]})" in board  # its provenance
    # a later regeneration that does not name it still shows it (its records join the plan)
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY, "models=[popularity]", "--leaderboard-only"]) == 0
    assert "examples.item_knn.ItemKNN" in (tmp_path / "leaderboard.md").read_text()
    # the Python entry point gives the same record's numbers with the same protocol
    again = evaluate_model(lambda log: ItemKNN(log.n_items, ItemKNN.Config()), "synthetic", suite="smoke",
                           mode="none", overrides=(f"data_dir={tmp_path / 'data'}", *TINY),
                           results_dir=str(tmp_path / "py"))
    assert again["metrics"]["test"] == record["metrics"]["test"] and again["model"] == "examples.item_knn.ItemKNN"


def test_a_bad_import_path_names_the_problem(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="cannot import model 'examples.nope.Missing'"):
        main(["--suite", "smoke", "--dry-run", *_args(tmp_path), "models=[examples.nope.Missing]"])
