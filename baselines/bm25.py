"""Query-only lexical baseline: BM25 of the impression's query against each item's text.

Why it is on the board: no public log has queries, so the adapter builds each query from the *target*
item's own category path (HEM; ``benchmark.data.adapt``). A model that reads the query therefore gets
part of its score from lexical matching alone. This row measures that part: it reads the query and
nothing else (no history, no training), so the gap between it and the LLM family is what history and
learning add on top of the query.

Score of item i for a query q: ``BM25(q, text_i) + popularity_weight * log(1 + pop_i)``, with BM25 from
``benchmark.lexical.BM25Scorer`` (bm25s, as the adapter's exposures and the funnel's pre-ranker) and
``pop_i`` the train-split clicks; the popularity term only orders the many items BM25 scores 0 or
equal. Written as a dot product so the common evaluator ranks it over the full catalog: item
embedding = one column of per-term BM25 scores for every distinct query term of the log plus the
popularity column; user embedding = the query's term counts plus 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmark.data.schema import SearchLog, train_popularity
from benchmark.lexical import BM25Scorer
from benchmark.model import NothingToTrain


@dataclass
class BM25Config:
    popularity_weight: float = 1e-3  # tie-break among equal BM25 scores (most items match no query term)

    def __post_init__(self) -> None:  # checked when the config is composed, before any run
        if self.popularity_weight < 0:  # a negative weight would rank the least clicked first
            raise ValueError(f"model.bm25.popularity_weight must be >= 0, got {self.popularity_weight}")


class BM25(NothingToTrain, nn.Module):
    def __init__(self, n_items: int, config: BM25Config):
        super().__init__()
        self.config = config
        self.n_items = n_items
        self._index: tuple[int, BM25Scorer, dict[str, int]] | None = None  # (id of catalog, scorer, term -> column)


    def _terms(self, log: SearchLog) -> tuple[BM25Scorer, dict[str, int]]:
        if not log.has_text:
            raise ValueError(f"{log.name} has no item text, so no queries: BM25 does not apply")
        if self._index is None or self._index[0] != id(log.catalog):
            scorer = BM25Scorer(log.catalog["text"].fillna("").astype(str).tolist())
            vocab = sorted({t for q in log.impressions["query"].unique() for t in scorer.tokens(q)})
            self._index = (id(log.catalog), scorer, {t: j for j, t in enumerate(vocab)})
        return self._index[1], self._index[2]

    def item_embeddings(self, log: SearchLog) -> torch.Tensor:
        scorer, terms = self._terms(log)
        emb = np.zeros((log.n_items, len(terms) + 1), dtype=np.float32)
        for term, j in terms.items():
            emb[:, j] = scorer.row(term)
        emb[:, -1] = self.config.popularity_weight * np.log1p(train_popularity(log))
        return torch.from_numpy(emb)

    def user_embeddings(self, log: SearchLog, impressions: pd.DataFrame) -> torch.Tensor:
        scorer, terms = self._terms(log)
        rows = {}  # distinct query -> its row (queries repeat heavily)
        for query in impressions["query"].unique():
            row = np.zeros(len(terms) + 1, dtype=np.float32)
            row[-1] = 1.0
            for term in scorer.tokens(query):  # a repeated term counts twice, as in BM25Scorer
                if term not in terms:
                    raise KeyError(f"query term {term!r} is not in the log's queries: pass impressions of this log")
                row[terms[term]] += 1.0
            rows[query] = row
        out = np.array([rows[q] for q in impressions["query"]], dtype=np.float32)
        return torch.from_numpy(out.reshape(len(impressions), len(terms) + 1))  # (0, D) when empty
