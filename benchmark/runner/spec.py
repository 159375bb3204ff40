"""A run's identity, as one typed object handed down the runner (instead of a dict every module reads)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.data import adapt as A


@dataclass(frozen=True)
class RunSpec:
    """One (dataset, query mode, model, variant, seed) of a suite's plan."""

    dataset: str
    mode: str  # benchmark.data.adapt.QUERY_MODES
    model: str  # a key of benchmark.models.MODELS
    variant: str
    seed: int
    record: Path  # where its record goes (benchmark.records.record_path)
    done: bool = False  # its record exists and is current
    stale: bool = False  # its record exists but no longer matches the suite
    tuned: dict = field(default_factory=dict, hash=False)  # config field -> value chosen by the tuning search

    @property
    def unit(self) -> tuple[str, str, str, str]:
        """The unit a run belongs to (its search and its seeds run in order, in one process)."""
        return self.dataset, self.mode, self.model, self.variant

    @property
    def label(self) -> str:
        return f"{self.dataset} [{self.mode}] {self.model}:{self.variant} seed {self.seed}"


def mode_config(cfg, mode: str):
    """The suite's config with the adaptation's query mode set to ``mode`` (every run is in one mode)."""
    if mode not in A.QUERY_MODES:
        raise ValueError(f"unknown query mode {mode!r}; valid: {', '.join(A.QUERY_MODES)}")
    return dataclasses.replace(cfg, adapt=dataclasses.replace(cfg.adapt, query=mode))
