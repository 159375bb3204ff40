"""A suite killed with SIGKILL and run again ends with the records of an uninterrupted run (the
smoke suite on a tiny embedded catalog, killed at several points: mid-training, after a record)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["synthetic.n_items=120", "synthetic.n_users=80", "synthetic.image_size=16", "train.max_epochs=4",
        "train.patience=4", "model.sasrec.hidden=8", "train.progress=false", "models=[popularity,sasrec]", "threads=1"]


def _command(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmark.run", "--suite", "smoke", "--data-dir", str(root / "data"),
            "--results-dir", str(root / "results"), f"leaderboard={root / 'leaderboard.md'}", *TINY, *extra]


def _env(root: Path) -> dict:
    return {**os.environ, "KARMA_BENCH_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}


def _records(root: Path) -> dict[str, dict]:
    """What must not depend on an interruption: the metrics, the selection and the settings."""
    out = {}
    for path in sorted((root / "results" / "records").rglob("*.json")):
        record = json.loads(path.read_text())
        out[path.name] = {"metrics": record["metrics"], "selection": record["selection"],
                          "config_hash": record["config_hash"], "data": record["data_fingerprint"]}
    return out


def _run_killed_when(root: Path, pattern: str, *extra: str, timeout: float = 300) -> bool:
    """Start the suite and SIGKILL it as soon as a file matching ``pattern`` (under ``root``)
    exists. Returns whether it was killed (False: it finished before the point was reached)."""
    proc = subprocess.Popen(_command(root, *extra), env=_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(root.glob(pattern)):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("reference")
    subprocess.run(_command(root), env=_env(root), check=True, capture_output=True)
    return _records(root)


@pytest.mark.parametrize("kill_at", ["cache/checkpoints/**/*.pt", "results/records/**/popularity__default__seed0.json"])
def test_a_suite_killed_and_run_again_ends_with_the_uninterrupted_records(tmp_path, uninterrupted, kill_at):
    interrupted = tmp_path / "interrupted"
    assert _run_killed_when(interrupted, kill_at), f"the suite ended before {kill_at} appeared"
    subprocess.run(_command(interrupted), env=_env(interrupted), check=True, capture_output=True)
    assert uninterrupted and _records(interrupted) == uninterrupted
    assert not list((interrupted / "cache" / "checkpoints").rglob("*.pt"))  # finished runs leave none


def test_a_run_killed_on_one_machine_resumes_on_another_from_a_carried_checkpoint_dir(tmp_path, uninterrupted):
    """``checkpoint_dir`` outside the cache: the machine (its cache) is gone, the folder is carried over,
    and the run resumes mid-training there, to the records of an uninterrupted run."""
    root = tmp_path / "moved"
    carried = f"checkpoint_dir={root / 'carried'}"
    assert _run_killed_when(root, "carried/**/sasrec__*.pt", carried), "the suite ended before a checkpoint"
    assert not list((root / "cache").rglob("checkpoints/**/*.pt"))  # nothing went to the cache
    shutil.rmtree(root / "cache")  # a fresh machine: no cache, only the carried folder
    done = subprocess.run(_command(root, carried), env=_env(root), check=True, capture_output=True, text=True)
    assert "resumed after epoch" in done.stdout
    assert _records(root) == uninterrupted
    assert not list((root / "carried").rglob("*.pt"))  # finished runs leave none


def test_a_checkpoint_identity_ignores_progress_bars_but_not_a_setting_that_changes_the_run():
    import dataclasses

    from benchmark import records as R
    from benchmark.runner.execute import checkpoint_identity
    from benchmark.runner.spec import RunSpec
    from benchmark.trainer import TrainConfig

    run = RunSpec("synthetic", "coarse", "sasrec", "default", 0, Path("r.json"))
    quiet = TrainConfig(max_epochs=3, progress=False)
    identity = checkpoint_identity(run, quiet, None, "data")
    # a run started without bars (as the suite's long runs are) resumes with them, and back
    assert checkpoint_identity(run, dataclasses.replace(quiet, progress=True), None, "data") == identity
    # the stamp of checkpoints written before: the whole train config as it was then, bars off (a field added
    # since enters only when it is set away from the value that keeps the old behaviour)
    before = {k: v for k, v in dataclasses.asdict(quiet).items() if k not in ("lr_schedule", "warmup_ratio")}
    assert identity == R.config_hash(json.loads(json.dumps(
        {"run": run.label, "tuned": run.tuned, "train": before, "model_config": {},
         "data": "data"}, default=str)))
    assert checkpoint_identity(run, dataclasses.replace(quiet, lr_schedule="cosine"), None, "data") != identity
    assert checkpoint_identity(run, dataclasses.replace(quiet, warmup_ratio=0.1), None, "data") != identity
    assert checkpoint_identity(run, dataclasses.replace(quiet, weight_decay=0.5), None, "data") != identity
    assert checkpoint_identity(run, quiet, None, "other data") != identity
    assert checkpoint_identity(dataclasses.replace(run, seed=1), quiet, None, "data") != identity
