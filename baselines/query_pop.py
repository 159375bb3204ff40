"""Query-group popularity: the no-learning reference that says what the query alone gives away.

Three tiers, each ranked by training popularity: the items that would get the same query as a
target (``catalog["query"]``: with the full path, the items whose category path is the query's);
then those whose category path holds every query term (a boolean AND search,
``benchmark.data.adapt.query_matches``); then those whose text holds every term (a typed query may
name an attribute, "red mugs"); then every other item. No history, no training; the user's history is masked by
the evaluator as for every model. With an empty query (mode ``none``) it is the popularity row.

Why it is on the board: public logs have no queries, so the adapter builds them from a category
path (``benchmark.data.adapt``). On ``unisrec/Scientific`` with the full path (``hem``) this rule
scored test HR@10 0.724, above every learned model of suite v1: a model can only be credited with
what it adds over this row. Written as a dot product so the common evaluator ranks it over the
full catalog: item embedding = three match columns (same query, path, text) per distinct query of
the log, scaled above any popularity, plus the popularity column; user embedding = its query's
three indicator columns plus 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmark.data.adapt import query_matches
from benchmark.data.schema import SearchLog
from benchmark.model import NothingToTrain


@dataclass
class QueryPopConfig:
    match_weight: float = 1e3  # above log(1 + clicks) of any item, so a match always ranks first

    def __post_init__(self) -> None:  # checked when the config is composed, before any run
        if self.match_weight <= 0:
            raise ValueError(f"model.query_pop.match_weight must be > 0, got {self.match_weight}")


class QueryPop(NothingToTrain, nn.Module):
    def __init__(self, n_items: int, config: QueryPopConfig):
        super().__init__()
        self.config = config
        self.n_items = n_items
        self._index: tuple[int, dict[str, int], np.ndarray] | None = None  # (id of log, query -> column, matches)

    def _columns(self, log: SearchLog) -> tuple[dict[str, int], np.ndarray]:
        if self._index is None or self._index[0] != id(log.impressions):
            queries = sorted(set(log.impressions["query"].astype(str)) - {""})
            texts = log.catalog["text"].fillna("").astype(str).tolist() if log.has_text else [""] * log.n_items
            in_text = query_matches(texts, queries)
            in_path = query_matches([" ".join(c) for c in log.catalog["category"]], queries)
            own = log.catalog["query"].astype(str).to_numpy()
            # columns 3j, 3j + 1, 3j + 2: same query (weight 4), path match (2), text match (1) for query j
            table = np.zeros((log.n_items, 3 * len(queries)), dtype=np.float32)
            for j, q in enumerate(queries):
                table[:, 3 * j], table[:, 3 * j + 1], table[:, 3 * j + 2] = 4.0 * (own == q), 2.0 * in_path[q], in_text[q]
            self._index = (id(log.impressions), {q: j for j, q in enumerate(queries)}, table)
        return self._index[1], self._index[2]

    def item_embeddings(self, log: SearchLog) -> torch.Tensor:
        _, table = self._columns(log)
        pop = np.log1p(log.catalog["train_count"].to_numpy(dtype=np.float32))
        emb = np.concatenate([self.config.match_weight * table, pop[:, None]], axis=1)
        return torch.from_numpy(emb)

    def user_embeddings(self, log: SearchLog, impressions: pd.DataFrame) -> torch.Tensor:
        columns, _ = self._columns(log)
        out = np.zeros((len(impressions), 3 * len(columns) + 1), dtype=np.float32)
        out[:, -1] = 1.0
        for row, query in enumerate(impressions["query"].astype(str)):
            if query:
                if query not in columns:
                    raise KeyError(f"query {query!r} is not one of the log's queries: pass impressions of this log")
                out[row, 3 * columns[query]:3 * columns[query] + 3] = 1.0
        return torch.from_numpy(out)
