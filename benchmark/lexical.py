"""The one lexical ranker of the project: BM25 (``bm25s``, its default Lucene variant, English
stop-words) of a query against every catalog item's text. The adapter draws the logs' exposures
with it, the BM25 baseline scores with it and the funnel's pre-ranker and recall channel use it, so
the three agree on what "lexical match" means."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


class BM25Scorer:
    """BM25 scores of a query against every catalog text: ``scores(queries) -> (B, N) float32``.

    Index: ``bm25s.BM25()`` over ``bm25s.tokenize(texts, stopwords="en")`` (as the adapter). A query
    is tokenized the same way; terms absent from the catalog contribute 0. Rows of distinct queries
    are cached (least recently used, at most ``cache`` rows) because queries repeat heavily.
    """

    def __init__(self, texts: Sequence[str], cache: int = 256):
        import bm25s

        self._bm25s = bm25s
        self.n_items = len(texts)
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False),
                             show_progress=False)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._limit = cache

    def row(self, query: str) -> np.ndarray:
        q = str(query or "")
        hit = self._cache.get(q)
        if hit is not None:
            self._cache.move_to_end(q)
            return hit
        toks = self.tokens(q)
        s = (np.asarray(self.retriever.get_scores(toks), dtype=np.float32) if toks
             else np.zeros(self.n_items, dtype=np.float32))
        self._cache[q] = s
        if len(self._cache) > self._limit:
            self._cache.popitem(last=False)
        return s

    def tokens(self, query: str) -> list[str]:
        """The query's terms as the index sees them (lower-cased, English stop-words removed)."""
        q = str(query or "")
        toks = self._bm25s.tokenize([q], stopwords="en", return_ids=False, show_progress=False)[0] if q else []
        return [t for t in toks if t]

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        if len(queries) == 0:
            return np.zeros((0, self.n_items), dtype=np.float32)
        return np.stack([self.row(q) for q in queries])

    def top(self, queries: Sequence[str], k: int) -> list[np.ndarray]:
        """The ``k`` best items of each query, best first (one retrieval call over the queries)."""
        if not queries:
            return []
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        docs, _ = self.retriever.retrieve(tokens, k=min(k, self.n_items), show_progress=False, n_threads=1)
        return [np.asarray(row, dtype=np.int64) for row in docs]
