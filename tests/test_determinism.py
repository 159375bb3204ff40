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


def test_the_bounded_onednn_kernel_cache_gives_the_same_bits_as_an_unbounded_one():
    """benchmark/__init__.py caps oneDNN's kernel cache (a memory fix): a bf16 layer run over many shapes,
    twice each (the second time after its kernel may have been evicted), gives the same bits as with the
    default capacity."""
    script = ("import hashlib, torch\n"
              "import benchmark\n"  # the project's setting (or the variable exported below)
              "torch.manual_seed(0); torch.set_num_threads(1)\n"
              "layer = torch.nn.Linear(64, 96)\n"
              "digest = hashlib.sha256()\n"
              "for rows in [*range(1, 40), *range(1, 40)]:\n"
              "    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(rows))\n"
              "    with torch.autocast('cpu', dtype=torch.bfloat16):\n"
              "        digest.update(layer(x).detach().float().numpy().tobytes())\n"
              "print(digest.hexdigest())\n")
    digests = set()
    for capacity in ("1", "1024", None):  # evict every time; the library default; the project's 64
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
        if capacity is not None:
            env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = capacity
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1])
        digests.add(out.stdout.strip())
    assert len(digests) == 1
