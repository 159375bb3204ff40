"""The tuning budget: each model's grid of trials, cut to the suite's equal number of trials."""

from __future__ import annotations

import itertools

from benchmark.config import with_dotted
from benchmark.models import MODELS


def grid_for(cfg, model: str, variant: str) -> list[dict]:
    """The trials of one model/variant: its grid cut to ``search.trials`` points, as dotted overrides."""
    if not cfg.search.enabled:
        return []
    grids = cfg.search.grids
    grid = grids.get(f"{model}:{variant}", grids.get(model))
    return [] if grid is None else grid_trials(grid, int(cfg.search.trials))


def grid_trials(grid: dict[str, list], trials: int) -> list[dict]:
    """The product of a grid's values, or, when it has more points than ``trials``, the balanced
    fraction of it: for two-level axes, the points whose level indices sum to an even number (the
    2^(k-1) half fraction, defining relation C = A x B for three axes: every level of every axis
    appears in half the trials, and every pair of axes is crossed in full). So a family whose members
    add an axis (a decodability weight) keeps the same number of trials and the same levels of the
    shared axes. Any other size mismatch is an error: the tuning budget must be equal."""
    keys = sorted(grid)
    levels = [range(len(grid[k])) for k in keys]
    points = list(itertools.product(*levels))
    if len(points) > trials and all(len(grid[k]) == 2 for k in keys) and len(points) == 2 * trials:
        points = [p for p in points if sum(p) % 2 == 0]
    if len(points) != trials:
        raise ValueError(f"search grid {grid} gives {len(points)} trials, not search.trials={trials}: every "
                         "model gets the same tuning budget (a two-level grid of twice the size is halved)")
    return [{k: grid[k][i] for k, i in zip(keys, p, strict=True)} for p in points]


def with_overrides(cfg, model: str, overrides: dict):
    """Split a trial's dotted overrides: ``model.<node>.<field>`` ones are applied after the variant's
    own settings (so a search can tune a variant's loss weight); the rest go into the config."""
    prefix = f"model.{MODELS[model].config}."
    tuned = {k[len(prefix):]: v for k, v in overrides.items() if k.startswith(prefix)}
    rest = [(k, v) for k, v in overrides.items() if not k.startswith(prefix)]
    for key, value in rest:
        cfg = with_dotted(cfg, key, value)
    return cfg, tuned

