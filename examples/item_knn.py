"""Item-kNN (Sarwar et al., 2001) as an external model: a user scores item i by the summed cosine
similarity of i to the items in their history, co-occurrence counted over training histories.

    python -m benchmark.run --suite smoke "models=[popularity,examples.item_knn.ItemKNN]"
"""

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.model import NothingToTrain


class ItemKNN(NothingToTrain):
    query_use = "ignored"  # query-blind: runs once, in mode none

    @dataclass
    class Config:
        max_history: int = 20  # most recent history items that vote

    def __init__(self, n_items: int, config: "ItemKNN.Config"):
        self.n_items, self.config = n_items, config

    def train_dataset(self, log, generator):  # fit the similarities on the training split; no gradient steps
        counts = np.zeros((self.n_items, self.n_items), dtype=np.float32)
        for history, target in zip(log.split("train")["history"], log.split("train")["target"], strict=True):
            for item in history[-self.config.max_history:]:
                counts[item, target] += 1.0
        norms = np.sqrt(np.maximum(counts.sum(1, keepdims=True) * counts.sum(0, keepdims=True), 1.0))
        self.similarity = torch.from_numpy(counts / norms)
        return None

    def item_embeddings(self, log):  # one-hot items, so a user's vector is their scores
        return torch.eye(self.n_items)

    def user_embeddings(self, log, impressions):
        # the harness hands read-only histories; index with a tensor of our own
        rows = [self.similarity[torch.tensor(h[-self.config.max_history:], dtype=torch.long)].sum(0)
                for h in impressions["history"]]
        return torch.stack(rows) if rows else torch.zeros(0, self.n_items)
