"""The model registry: a plain dict, whose keys are the CLI's choices (DiT style).

Each entry builds a model from the catalog size and its typed config (``cfg.model.<key>``).
"""

from __future__ import annotations

from baselines.popularity import Popularity
from baselines.sasrec import SASRec

MODELS = {
    "popularity": Popularity,  # sanity floor: training click counts
    "sasrec": SASRec,  # Kang & McAuley 2018, CE or sampled softmax
}


def build(name: str, n_items: int, model_configs):
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return MODELS[name](n_items, getattr(model_configs, name))
