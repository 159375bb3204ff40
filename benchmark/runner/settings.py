"""A run's settings as the suite defines them: the trainer's, and every field a record stores that its
tuning search does not choose (what staleness compares)."""

from __future__ import annotations

import dataclasses
import json

from benchmark.funnel.runs import PASS_FIELDS as FUNNEL_PASS_FIELDS
from benchmark.models import model_config, tuned_source
from benchmark.runner.grids import grid_for
from benchmark.trainer import TrainConfig


def train_config(cfg, model_cfg) -> TrainConfig:
    """The trainer's settings for one model: the suite's, with the model's own epoch cap."""
    train_cfg = cfg.train
    if getattr(model_cfg, "max_epochs", 0):  # a model family's own epoch cap
        train_cfg = dataclasses.replace(train_cfg, max_epochs=min(model_cfg.max_epochs, train_cfg.max_epochs))
    return train_cfg


# Settings that never change a result: where caches live, and whether bars are drawn.
NOT_RESULT_SETTINGS = {"cache_dir", "progress"}


def untuned_settings(cfg, model: str, variant: str) -> dict:
    """A run's settings as the suite defines them, less those its tuning search chooses."""
    source = tuned_source(model, variant) or (model, variant)
    skip = NOT_RESULT_SETTINGS | {key.rsplit(".", 1)[-1] for trial in grid_for(cfg, *source) for key in trial}
    model_cfg = model_config(model, variant, cfg.model)
    skip |= model_cfg.inert_fields() if hasattr(model_cfg, "inert_fields") else set()  # e.g. action-only's decode budget
    skip |= set(FUNNEL_PASS_FIELDS)  # the funnel pass reads them, after the run, from its stored embeddings
    resolved = dataclasses.asdict(cfg)
    settings = {"model_config": dataclasses.asdict(model_cfg),
                "train": dataclasses.asdict(train_config(cfg, model_cfg)),
                "eval": resolved["eval"], "adapt": resolved["adapt"], "funnel": resolved["funnel"]}
    return json.loads(json.dumps({part: {k: v for k, v in values.items() if k not in skip}
                                  for part, values in settings.items()}, default=str))  # tuples -> lists
