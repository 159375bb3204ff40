"""Where a number was made: the code revision, interpreter, packages, processor, device, allocator and
bf16 support that every record, search file and measurement carries (``environment``), and the peak
memory of a run (``PeakMemory``). No hostname: records are shared."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
import threading
from pathlib import Path

from benchmark import allocator

# distributions reported by environment(); a missing one is reported as None
PACKAGES: tuple[str, ...] = (
    "torch", "transformers", "faiss-cpu", "faiss-gpu", "numpy", "pandas", "hydra-core", "bm25s", "karma-bench",
)

# paths that do not make a checkout "dirty": generated outputs of the benchmark itself
_CLEAN_IGNORED = ("results/", "leaderboard.md")

_REPO_DIR = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    """stdout of a read-only git command run in this package's checkout; None when git or the repo is absent."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # never take the index lock just to report status
    try:
        out = subprocess.run(["git", *args], cwd=_REPO_DIR, capture_output=True, text=True, timeout=20,
                             env=env, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _is_dirty(porcelain: str) -> bool:
    for line in porcelain.splitlines():
        if len(line) < 4:
            continue
        paths = line[3:].split(" -> ")  # renames: "R  old -> new"
        if any(not (p.strip('"').startswith(_CLEAN_IGNORED[0]) or p.strip('"') == _CLEAN_IGNORED[1])
               for p in paths):
            return True
    return False


def git_state() -> tuple[str, bool | None]:
    """(revision, dirty). ("unknown", None) outside a git checkout."""
    rev = _git("rev-parse", "HEAD")
    if rev is None or not rev.strip():
        return "unknown", None
    status = _git("status", "--porcelain", "--untracked-files=normal")
    return rev.strip(), (None if status is None else _is_dirty(status))


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    name = platform.processor()
    if not name or name in ("x86_64", "aarch64"):
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return name or platform.machine() or "unknown"


def device_string() -> str:
    """"cuda: <GPU name> x<count>" when CUDA is available, else "cpu: <processor> x<n cores>"."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except ImportError:
        pass
    return f"cpu: {_cpu_name()} x{os.cpu_count()}"


def environment() -> dict:
    """Code revision, interpreter, platform, package versions and device. No hostname (records are shared)."""
    rev, dirty = git_state()
    versions = {name: _package_version(name) for name in PACKAGES}
    cpu, gpu = versions.pop("faiss-cpu"), versions.pop("faiss-gpu")
    versions["faiss"] = cpu or gpu
    return {
        "git_revision": rev,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": dict(sorted(versions.items())),
        "device": device_string(),
        "cpu": _cpu_name(),  # the processor even where CUDA is available (a run's record adds compute_device)
        "allocator": allocator.in_use(),  # mimalloc makes CPU training about 20% faster (benchmark.allocator)
        **_cpu_bf16(),
    }


def _cpu_bf16() -> dict:
    """Whether this CPU computes bf16 in hardware (``native``) or PyTorch emulates it (``emulated``): bf16
    records made on the two differ in their bits and severalfold in their speed (benchmark.device.native_bf16).
    Read only where torch is already loaded, so a record of a model without torch does not import it."""
    if "torch" not in sys.modules:
        return {}
    from benchmark.device import native_bf16

    return {"cpu_bf16": "native" if native_bf16() else "emulated"}


def peak_memory_mb() -> float:
    """Peak RSS of this process (Linux ru_maxrss is KiB) plus peak CUDA memory allocated by torch, in MiB."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # macOS reports bytes
        rss_kib /= 1024
    total = rss_kib / 1024.0
    torch = sys.modules.get("torch")  # if torch was never imported, no CUDA memory was used
    if torch is not None:
        try:
            if torch.cuda.is_available():
                total += torch.cuda.max_memory_allocated() / 2**20
        except Exception:  # noqa: BLE001 - a broken CUDA runtime must not lose the record
            pass
    return float(total)


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled from /proc every 0.1 s).

    ``ru_maxrss`` is a lifetime peak and cannot be reset, so a suite that runs many models in one
    process needs a per-run sampler; falls back to ``peak_memory_mb()`` where /proc is missing.
    """

    _active: list[PeakMemory] = []  # the samplers open now, innermost last (the trainer reads the run's)

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self._sampled = 0.0
        self._carried = 0.0  # the peak of earlier processes of the same run, from its checkpoint

    @property
    def peak_mb(self) -> float:
        return max(self._sampled, self._carried)

    def include(self, earlier_mb: float) -> None:
        """Count a peak this process did not see: a resumed run's earlier processes (``benchmark.trainer``)."""
        self._carried = max(self._carried, float(earlier_mb))

    @classmethod
    def innermost(cls) -> PeakMemory | None:
        return cls._active[-1] if cls._active else None

    @staticmethod
    def _rss_mb() -> float | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self._rss_mb()
            if rss is not None:
                self._sampled = max(self._sampled, rss)

    def __enter__(self) -> PeakMemory:
        self._stop = threading.Event()
        self._sampled = self._rss_mb() or 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        PeakMemory._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        PeakMemory._active.remove(self)
        self._stop.set()
        self._thread.join()
        rss = self._rss_mb()
        self._sampled = peak_memory_mb() if rss is None else max(self._sampled, rss)
