"""The allocator preload: which allocator a process runs, the one re-execution, and that mimalloc
changes no result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import allocator

REPORT = """
import json, os, sys
from benchmark import allocator
allocator.preload()
print(json.dumps({"argv": sys.argv[1:], "preloaded": os.environ.get("KARMA_BENCH_PRELOADED"),
                  "purge_delay": os.environ.get("MIMALLOC_PURGE_DELAY"),
                  "ld_preload": os.environ.get("LD_PRELOAD", ""), "in_use": allocator.in_use()}))
"""

# a few optimiser steps of a small model: prints the trained weights' bytes as hex
TRAIN = """
import hashlib, torch
from benchmark import allocator
allocator.preload()
torch.manual_seed(0)
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
for _ in range(20):
    x = torch.randn(512, 64)
    loss = (net(x) - x[:, :8]).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
print(allocator.in_use(), hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest())
"""

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD and /proc/self/maps are Linux's")


def run_script(tmp_path: Path, text: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(text)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("LD_PRELOAD", allocator.ENV, allocator.PRELOADED, *allocator.MIMALLOC_SETTINGS)}
    root = str(Path(__file__).resolve().parents[1])  # this checkout's benchmark package, not an installed one
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                          env={**clean, "PYTHONPATH": root, **env}, cwd=root)


def test_in_use_reads_the_mapped_libraries():
    libc = "7f00-7f01 r-xp 00000000 fe:00 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n7f02-7f03 rw-p 0 0:0 0 [heap]\n"
    assert allocator.in_use(libc) == "system"
    tc = libc + "7f04-7f05 r-xp 00000000 fe:00 2 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"
    assert allocator.in_use(tc) == "tcmalloc"
    je = libc + "7f06-7f07 r-xp 00000000 fe:00 3 /opt/lib/libjemalloc.so.2\n"
    assert allocator.in_use(je) == "jemalloc"
    assert allocator.in_use("") == "system"


@linux_only
def test_preload_reexecutes_once_with_the_same_arguments(tmp_path):
    # a library every process has already mapped: preloading it changes nothing but the environment
    libc = next(p for p in Path("/proc/self/maps").read_text().split() if Path(p).name.startswith("libc.so"))
    out = run_script(tmp_path, REPORT, "a", "--b=1", **{allocator.ENV: libc})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1  # the first process never reached its print: it was replaced
    got = json.loads(lines[0])
    assert got["argv"] == ["a", "--b=1"]
    assert got["preloaded"] == libc and got["ld_preload"].split(":")[0] == libc


@linux_only
def test_system_keeps_the_c_library_malloc(tmp_path):
    out = run_script(tmp_path, REPORT, **{allocator.ENV: "system"})
    got = json.loads(out.stdout)
    assert got["preloaded"] is None and got["ld_preload"] == "" and got["in_use"] == "system"


@linux_only
def test_a_missing_library_is_a_clear_error(tmp_path):
    out = run_script(tmp_path, REPORT, **{allocator.ENV: str(tmp_path / "libnothere.so")})
    assert out.returncode == 1
    assert "no such library file" in out.stderr and out.stdout == ""


@linux_only
@pytest.mark.skipif(allocator.find_mimalloc() is None, reason="the cmeel-mimalloc wheel is not installed")
def test_mimalloc_is_preloaded_and_changes_no_bit(tmp_path):
    got = json.loads(run_script(tmp_path, REPORT).stdout)
    assert got["in_use"] == "mimalloc" and got["purge_delay"] == "-1"
    with_mimalloc = run_script(tmp_path, TRAIN).stdout.split()
    system = run_script(tmp_path, TRAIN, **{allocator.ENV: "system"}).stdout.split()
    assert with_mimalloc[0] == "mimalloc" and system[0] == "system"
    assert with_mimalloc[1] == system[1]
