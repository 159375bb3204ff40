"""Most-popular baseline: the sanity floor. Scores an item by its training click count.

Item embedding = [log(1 + train count)], user embedding = [1]: the dot product is the
popularity, the same for every user (history items are still masked by the evaluator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmark.data.schema import SearchLog


@dataclass
class PopularityConfig:
    pass  # nothing to configure; kept so every model has a config


class Popularity(nn.Module):
    def __init__(self, n_items: int, config: PopularityConfig):
        super().__init__()
        self.config = config
        self.n_items = n_items

    def train_dataset(self, log: SearchLog, generator: torch.Generator):
        return None  # counts come straight from the log; nothing to optimise

    def collate(self, examples):
        raise NotImplementedError("Popularity has no training batches")

    def losses(self, batch, generator):
        raise NotImplementedError("Popularity has no training losses")

    def item_embeddings(self, log: SearchLog) -> torch.Tensor:
        counts = log.catalog["train_count"].to_numpy(dtype=np.float32)
        return torch.from_numpy(np.log1p(counts))[:, None]

    def user_embeddings(self, log: SearchLog, impressions: pd.DataFrame) -> torch.Tensor:
        return torch.ones(len(impressions), 1)
