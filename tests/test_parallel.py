"""``--jobs N``: independent runs side by side (Hydra multirun, joblib launcher) and concurrent writers."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmark import records as R
from benchmark.run import main

REPO = Path(__file__).resolve().parents[1]
# the cheapest models, both query modes, two seeds and a 2-trial search (seed 0 reuses the selected
# trial); one thread per run in both suites (torch's float reductions depend on the thread count)
CHEAP = ["synthetic.n_items=120", "synthetic.n_users=80", "synthetic.image_size=16", "train.max_epochs=2",
         "model.sasrec.hidden=8", "train.progress=false", "funnel.ctr_epochs=1",
         "funnel.n_boot=50", "seeds=[0,1]", "threads=1",
         "search.enabled=true", "search.trials=2", "+search.grids.sasrec={model.sasrec.lr:[0.01,0.001]}"]
NOT_RESULTS = ("timing", "created", "environment")  # how long, when and where: not what


def _args(tmp_path: Path, results: str) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / results),
            f"leaderboard={tmp_path / results / 'leaderboard.md'}"]


def _results(root: Path) -> dict:
    """Every record (less timing, creation time and environment; paths made relative to ``root``)
    with its per-impression arrays, by path."""
    out = {}
    for path in sorted((root / "records").rglob("*.json")):
        record = json.loads(path.read_text().replace(str(root), "<results>"))
        R.validate_record(record)
        for key in NOT_RESULTS:
            record.pop(key)
        for trial in (record.get("search") or {}).get("trials", []):
            trial.pop("train_s"), trial.pop("peak_memory_mb")
        out[path.relative_to(root).as_posix()] = (record, R.read_per_impression(R.per_impression_path(path)))
    return out


def test_parallel_suite_writes_the_records_of_a_sequential_one(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # hydra's multirun folders go here
    (tmp_path / "tmp").mkdir()
    models = "models=[popularity,query_pop,bm25,sasrec]"
    assert main(["--suite", "smoke", "--jobs", "1", *_args(tmp_path, "seq"), *CHEAP, models]) == 0
    assert main(["--suite", "smoke", "--jobs", "2", *_args(tmp_path, "par"), *CHEAP, models]) == 0
    out = "".join(capfd.readouterr())
    assert "4 units to run, 2 at a time" in out and "Joblib.Parallel(n_jobs=2" in out
    seq, par = _results(tmp_path / "seq"), _results(tmp_path / "par")
    assert len(seq) == 8 and sorted(par) == sorted(seq)  # 4 models x 2 seeds, none duplicated or missing
    for name, (record, arrays) in seq.items():
        other, other_arrays = par[name]
        for key in record:
            assert other[key] == record[key], f"{name}: {key} differs"
        assert sorted(other) == sorted(record)
        assert sorted(other_arrays) == sorted(arrays)
        for key, values in arrays.items():  # bit for bit
            assert other_arrays[key].dtype == values.dtype and np.array_equal(other_arrays[key], values), (name, key)
    sasrec = par["records/smoke/synthetic/none/sasrec__default__seed0.json"][0]
    assert sasrec["search"]["selected"] in [{"model.sasrec.lr": lr} for lr in (0.01, 0.001)]
    searches = [json.loads((tmp_path / suite / "search" / "smoke" / "synthetic" / "none" / "sasrec__default.json")
                           .read_text())["trials"] for suite in ("seq", "par")]
    assert [[(t["overrides"], t["valid"], t["best_epoch"]) for t in trials] for trials in searches][0] == \
        [(t["overrides"], t["valid"], t["best_epoch"]) for t in searches[1]] and len(searches[1]) == 2
    assert (tmp_path / "par" / "leaderboard.md").read_text().count("| sasrec") >= 1
    assert not list((tmp_path / "tmp").glob("karma-bench-jobs-*"))  # hydra's multirun folders were removed
    assert not list((tmp_path / "par").rglob("*.tmp"))


def test_a_failed_job_fails_the_suite_and_the_others_still_write_their_records(tmp_path, capfd):
    # a missing data root is not the failure here: break one unit only (its record folder is a file)
    blocked = tmp_path / "par" / "records" / "smoke" / "synthetic" / "coarse"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    cheap = [o for o in CHEAP if not o.startswith(("seeds=", "threads=", "search.", "+search."))]
    code = main(["--suite", "smoke", "--jobs", "2", *_args(tmp_path, "par"), *cheap, "funnel.enabled=false",
                 "models=[popularity,bm25]"])
    err = capfd.readouterr().err
    # the broken unit's run fails inside its job, which reports it; the suite exits 1 with the list
    assert code == 1 and "runs that failed or were skipped:" in err and "bm25" in err
    assert R.read_record(tmp_path / "par" / "records" / "smoke" / "synthetic" / "none" / "popularity__default__seed0.json")


def test_concurrent_suites_over_one_results_dir_never_duplicate_a_run(tmp_path):
    """Two independent suite processes over the same results dir: every run, and every search trial, is
    done once; each record is written once and valid."""
    command = [sys.executable, "-m", "benchmark.run", "--suite", "smoke", *_args(tmp_path, "shared"), *CHEAP,
               "models=[popularity,bm25,sasrec]"]
    procs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    root = tmp_path / "shared"
    paths = sorted((root / "records").rglob("*.json"))
    assert len(paths) == 6 and all(R.read_record(p) for p in paths)  # 3 models x 2 seeds, all valid
    assert all(R.per_impression_path(p).exists() for p in paths)
    trained = sum(out.count("test NDCG@10=") for out in outs)
    assert trained == len(paths), outs  # no run trained twice
    trials = sum(out.count("search sasrec:default") for out in outs)
    assert trials == 2, outs  # the second process read the search's trials back
    search = json.loads((root / "search" / "smoke" / "synthetic" / "none" / "sasrec__default.json").read_text())
    assert sorted(t["overrides"]["model.sasrec.lr"] for t in search["trials"]) == [0.001, 0.01]
    assert not list(root.rglob("*.tmp"))
