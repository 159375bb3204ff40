"""Same seed and same thread count give the same bits: two processes, two threads each, one record."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.test_cli import TINY_LLM

RESULT_KEYS = ("metrics", "selection", "data_fingerprint", "config_hash")


def _run(root: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "benchmark.run", "--suite", "smoke", "--data-dir", str(root / "data"),
            "--results-dir", str(root / "results"), f"leaderboard={root / 'leaderboard.md'}",
            *[a for a in TINY_LLM if not a.startswith("models=")], "models=[karma:karma]", "threads=2",
            "funnel.enabled=false"]
    env = {**os.environ, "KARMA_BENCH_CACHE": str(root / "cache")}  # nothing shared between the two runs
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_with_two_threads_give_bitwise_identical_records(tmp_path):
    roots = [tmp_path / "a", tmp_path / "b"]
    procs = [_run(root) for root in roots]  # side by side: a busy machine must not change a bit
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    records = [root / "results" / "records" / "smoke" / "synthetic" / "coarse" / "karma__karma__seed0.json"
               for root in roots]
    a, b = (json.loads(r.read_text()) for r in records)
    for key in RESULT_KEYS:
        assert a[key] == b[key], key
    assert a["selection"]["history"] and a["metrics"]["test"]["HR@10"] == b["metrics"]["test"]["HR@10"]
    with np.load(records[0].with_suffix(".npz")) as x, np.load(records[1].with_suffix(".npz")) as y:
        assert sorted(x.files) == sorted(y.files)
        for name in x.files:
            assert x[name].tobytes() == y[name].tobytes(), name
