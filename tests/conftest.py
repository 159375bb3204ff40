from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _two_threads_and_a_private_cache(tmp_path, monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setenv("KARMA_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
