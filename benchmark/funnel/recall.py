"""Recall: the embedding channel beside the lexical one, merged with fixed quotas (paper: +2.51 HR@5000)."""

from __future__ import annotations

import numpy as np

from benchmark.data.schema import SearchLog
from benchmark.evaluate import retrieve_topk
from benchmark.funnel.common import _arrays, candidate_mask
from benchmark.lexical import BM25Scorer
from benchmark.stats import paired_delta_over_users


# ============================================================================ recall
def topk_from_scores(scores: np.ndarray, k: int, valid: np.ndarray | None = None,
                     positive_only: bool = False) -> np.ndarray:
    """Top-k ids per row ordered by (score descending, item index ascending), -1 padded.

    Entries off ``valid``, non-finite, or (``positive_only``) with score <= 0 are never returned.
    """
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s) if valid is None else (np.asarray(valid, bool) & np.isfinite(s))
    if positive_only:
        ok &= s > 0
    b, n = s.shape
    out = np.full((b, k), -1, dtype=np.int64)
    idx = np.arange(n)
    for r in range(b):
        cand = idx[ok[r]]
        order = np.lexsort((cand, -s[r, cand]))[:k]
        out[r, :order.size] = cand[order]
    return out


def merge_channels(lexical_ids: np.ndarray, emb_ids: np.ndarray, quota: tuple[int, int]) -> np.ndarray:
    """Merge two recall channels with a fixed quota each: ``(q_lex, q_emb)`` -> (B, q_lex + q_emb) ids.

    Row by row: the first ``q_lex`` valid lexical ids (id >= 0, in channel order), then the
    embedding channel's ids in its order, skipping any id already taken, until ``q_emb`` new ids are
    added (an item in both channels is credited to the lexical channel: lexical first when tied).
    A channel that runs out leaves its unused slots empty (-1); quota is never moved between channels.
    Pass ``emb_ids`` at least ``q_lex + q_emb`` deep so de-duplication cannot starve its quota.
    """
    q_lex, q_emb = (int(q) for q in quota)
    lex = np.atleast_2d(np.asarray(lexical_ids, dtype=np.int64))
    emb = np.atleast_2d(np.asarray(emb_ids, dtype=np.int64))
    if lex.shape[0] != emb.shape[0]:
        raise ValueError(f"channels differ in rows: {lex.shape[0]} vs {emb.shape[0]}")
    out = np.full((lex.shape[0], q_lex + q_emb), -1, dtype=np.int64)
    for r in range(lex.shape[0]):
        taken = list(dict.fromkeys(int(i) for i in lex[r] if i >= 0))[:q_lex]
        seen, added = set(taken), 0
        for i in emb[r]:
            if added == q_emb:
                break
            if i >= 0 and int(i) not in seen:
                seen.add(int(i))
                taken.append(int(i))
                added += 1
        out[r, :len(taken)] = taken
    return out


def recall_hr(ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-impression recall hit: ``1 if target in the row's id list else 0`` (float64). With the
    list of length K this is HR@K of the channel (set membership; order is irrelevant)."""
    ids = np.atleast_2d(np.asarray(ids, dtype=np.int64))
    return (ids == np.asarray(targets, dtype=np.int64)[:, None]).any(axis=1).astype(np.float64)


def k_ladder(n_items: int) -> list[int]:
    """Recall depths tried: 10 * 2^j below the catalog size."""
    out, k = [], 10
    while k < n_items:
        out.append(k)
        k *= 2
    return out or [max(1, n_items)]


def _lexical_ids(bm25: BM25Scorer | None, queries: list[str], valid: np.ndarray, k: int) -> np.ndarray:
    b25 = bm25.scores(queries) if bm25 is not None else np.zeros(valid.shape, np.float32)
    return topk_from_scores(b25, k, valid, positive_only=True)


def unsaturated_k(log: SearchLog, bm25: BM25Scorer | None, *, max_hr: float = 0.5, split: str = "valid",
                  block: int = 256) -> tuple[int, dict[int, float]]:
    """The recall depth: the largest ``k_ladder`` K at which the lexical channel alone recalls at
    most ``max_hr`` of the ``split`` targets (the smallest K when none does), so the channel is
    clearly below saturation and an embedding channel has room to add. Decided from the data and
    the visible queries alone, before any model. Returns ``(K, {K: lexical HR})``."""
    ladder = k_ladder(log.n_items)
    rows = log.split(split)
    targets = rows["target"].to_numpy().astype(np.int64)
    hist, queries = _arrays(rows["history"]), rows["query"].astype(str).tolist()
    block = max(1, min(block, (1 << 23) // max(1, log.n_items)))
    hits = np.zeros(len(ladder))
    for s in range(0, len(rows), block):
        sl = slice(s, min(len(rows), s + block))
        lex = _lexical_ids(bm25, queries[sl], candidate_mask(hist[sl], targets[sl], log.n_items), ladder[-1])
        hits += [recall_hr(lex[:, :k], targets[sl]).sum() for k in ladder]
    hr = dict(zip(ladder, (hits / max(1, len(rows))).tolist(), strict=True))
    below = [k for k in ladder if hr[k] <= max_hr]
    return (max(below) if below else ladder[0]), hr


def recall_funnel(log: SearchLog, item_emb: np.ndarray, user_emb: np.ndarray, *, split: str = "test",
                  k: int | None = None, emb_share: float = 0.5, bm25: BM25Scorer | None = None,
                  max_lexical_hr: float = 0.5, block: int = 256, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Recall stage: HR@K of the lexical channel alone vs lexical + embedding channels, same total K.

    Both channels see only what a request carries: the impression's visible query (the mode's; in
    mode ``none`` the lexical channel is empty) and the user's history. Lexical channel: items with
    BM25(query, text) > 0 (an inverted index only returns matching documents), history masked
    (target never), ordered by (BM25 desc, item index). Embedding channel: ``evaluate.retrieve_topk``
    (exact inner product, same masking). Merged: ``merge_channels(lexical, embedding, (K - q_emb,
    q_emb))`` with ``q_emb = round(emb_share * K)``. K defaults to ``unsaturated_k`` (lexical
    validation HR at most ``max_lexical_hr``). ``user_emb``: one row per impression of ``log.split(split)``.
    Returns ``{"K", "quota", "lexical_valid_hr_by_k", "HR_lexical", "HR_embedding", "HR_merged",
    "delta": paired_delta_over_users(merged, lexical)}``.
    """
    if bm25 is None and log.has_text:
        bm25 = BM25Scorer(log.catalog["text"].fillna("").astype(str).tolist())
    by_k = None
    if k is None:
        k, by_k = unsaturated_k(log, bm25, max_hr=max_lexical_hr, block=block)
    k = int(k)
    q_emb = int(round(emb_share * k))
    quota = (k - q_emb, q_emb)
    rows = log.split(split)
    targets = rows["target"].to_numpy().astype(np.int64)
    hist = _arrays(rows["history"])
    mask_lists = [h[h != t] for h, t in zip(hist, targets, strict=True)]
    _, emb_ids = retrieve_topk(item_emb, user_emb, mask_lists, min(log.n_items, k + quota[0]))
    queries = rows["query"].astype(str).tolist()
    block = max(1, min(block, (1 << 23) // max(1, log.n_items)))
    hr = {name: np.zeros(len(rows)) for name in ("lexical", "embedding", "merged")}
    for s in range(0, len(rows), block):
        sl = slice(s, min(len(rows), s + block))
        lex = _lexical_ids(bm25, queries[sl], candidate_mask(hist[sl], targets[sl], log.n_items), k)
        hr["lexical"][sl] = recall_hr(lex, targets[sl])
        hr["embedding"][sl] = recall_hr(emb_ids[sl, :k], targets[sl])
        hr["merged"][sl] = recall_hr(merge_channels(lex[:, :quota[0]], emb_ids[sl], quota), targets[sl])
    users = rows["user"].to_numpy()
    return {"K": k, "quota": quota, "lexical_valid_hr_by_k": by_k,
            "HR_lexical": float(hr["lexical"].mean()), "HR_embedding": float(hr["embedding"].mean()),
            "HR_merged": float(hr["merged"].mean()),
            "delta": paired_delta_over_users(hr["merged"], hr["lexical"], users, n_boot=n_boot, seed=seed),
            "per_impression": hr, "users": users}
