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
from benchmark.model import NothingToTrain


@dataclass
class PopularityConfig:
    pass  # nothing to configure; kept so every model has a config


class Popularity(NothingToTrain, nn.Module):
    def __init__(self, n_items: int, config: PopularityConfig):
        super().__init__()
        self.config = config
        self.n_items = n_items


    def item_embeddings(self, log: SearchLog) -> torch.Tensor:
        counts = log.catalog["train_count"].to_numpy(dtype=np.float32)
        return torch.from_numpy(np.log1p(counts))[:, None]

    def user_embeddings(self, log: SearchLog, impressions: pd.DataFrame) -> torch.Tensor:
        return torch.ones(len(impressions), 1)
