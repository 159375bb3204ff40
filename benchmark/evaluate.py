"""Full-catalog evaluator (DESIGN.md §4): exact ranks, gAUC, JS@K from embeddings.

Input is what every model exposes (DESIGN.md §3): item embeddings for the whole catalog and
one user / next-interest embedding per impression. Scores are float32 inner products.

- Ranks: exact, from the score matrix computed in blocks of ``block_size`` impressions
  (memory ~ ``block_size * n_items * 5`` bytes), history masked, the target never masked,
  pessimistic ties (``benchmark.metrics`` module docstring states the one rule).
- gAUC: the target's score against the impression's ``exposures`` (raw, unmasked scores;
  an exposure equal to the target is dropped); impressions without exposures get NaN.
- JS@K: top-K lists from an exact faiss ``IndexFlatIP``, searching ``K + history length``
  and dropping masked items; exactly-tied scores are ordered by item index ascending (ties
  at the cut-off are resolved exactly, not by faiss's internal order).

No module of a later stage is imported here (data flows loaders -> ... -> evaluator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
import pandas as pd

from benchmark import metrics as M

__all__ = ["EvalResult", "evaluate", "retrieve_topk", "summarize"]


@dataclass
class EvalResult:
    """Summary metrics plus per-impression arrays (for slices and paired tests)."""

    # "HR@<k>", "NDCG@<k>" for every k, "MRR", "gAUC", "JS@<js_k>", "n"
    metrics: dict[str, float]
    # "rank" (int64, 1-based), "auc" (float64, NaN without exposures), "js" (float64, NaN without text)
    per_impression: dict[str, np.ndarray]
    # user index per impression (aligned with per_impression), for ``summarize`` on slices
    users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # (n, js_k) item ids of the top-K lists (-1 padded), None when topk_lists=False
    topk: np.ndarray | None = None


def _as_f32(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, d), got shape {x.shape}")
    return x


def _as_idx(seq: Sequence, n_items: int, name: str) -> list[np.ndarray]:
    out = []
    for h in seq:
        a = np.asarray(h if h is not None else [], dtype=np.int64).ravel()
        if a.size and (a.min() < 0 or a.max() >= n_items):
            raise ValueError(f"{name} holds an item index outside [0, {n_items})")
        out.append(a)
    return out


def _flat(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Row index and value of every element of a ragged list (rows 0..len-1)."""
    lens = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    rows = np.repeat(np.arange(len(lists), dtype=np.int64), lens)
    vals = np.concatenate(lists) if len(lists) and lens.sum() else np.zeros(0, dtype=np.int64)
    return rows, vals.astype(np.int64, copy=False)


def _exact_topk_rows(
    item_emb: np.ndarray,
    queries: np.ndarray,
    histories: list[np.ndarray],
    k: int,
    hint_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k with numpy for some rows: order (-score, item index), history masked.

    Used where faiss's list ends inside a run of tied scores. ``hint_ids`` (rows, k) are the
    k unmasked ids faiss kept for each row (-1 padded); the smallest numpy score among them,
    ``m``, is the k-th largest score whenever fewer than k candidates score above ``m`` (the
    usual case: a tie run), which avoids a partition. O(n_items) per row.
    """
    s = queries @ item_emb.T  # (B, N) float32
    rows, cols = _flat(histories)
    s[rows, cols] = -np.inf
    b = s.shape[0]
    out_s = np.full((b, k), -np.inf, dtype=np.float32)
    out_i = np.full((b, k), -1, dtype=np.int64)
    for r in range(b):  # only rows whose faiss list ended inside a tie
        row = s[r]
        hint = hint_ids[r][hint_ids[r] >= 0]
        above = np.flatnonzero(row > row[hint].min()) if hint.size == k else None
        if above is not None and above.size < k:
            tau = row[hint].min()  # the k-th largest score
        else:
            finite = np.flatnonzero(~np.isneginf(row))
            if finite.size <= k:
                tau = -np.inf
            else:
                pool = row[above] if above is not None else row[finite]
                tau = np.partition(pool, pool.size - k)[pool.size - k]
        gt = np.flatnonzero(row > tau)
        eq = np.flatnonzero(row == tau)[: k - gt.size] if np.isfinite(tau) else np.zeros(0, np.int64)
        ids = np.concatenate([gt, eq])
        sc = row[ids]
        order = np.lexsort((ids, -sc))
        out_i[r, : ids.size] = ids[order]
        out_s[r, : ids.size] = sc[order]
    return out_s, out_i


def retrieve_topk(
    item_emb: np.ndarray,
    user_emb: np.ndarray,
    histories: list[np.ndarray],
    k: int,
    *,
    chunk_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product with faiss ``IndexFlatIP``, masking each row's history.

    Returns ``(scores, ids)``, both ``(n, k)``: float32 scores and int64 item ids, ordered by
    score descending and, among exactly-tied scores, by item index ascending. Rows with fewer
    than k unmasked items are padded with id -1 and score -inf.

    Each row is searched for ``k + len(history)`` results (rows are processed in chunks sorted
    by history length, so one long history does not inflate every search); masked ids are
    dropped and the first k kept. If the k-th kept score equals the last searched score, tied
    items may lie beyond the searched list: that row is recomputed exactly with numpy.
    """
    item_emb = _as_f32(item_emb, "item_emb")
    user_emb = _as_f32(user_emb, "user_emb")
    n_items, d = item_emb.shape
    n = user_emb.shape[0]
    if user_emb.shape[1] != d:
        raise ValueError(f"dimension mismatch: items {d}, users {user_emb.shape[1]}")
    if len(histories) != n:
        raise ValueError(f"{len(histories)} histories for {n} user rows")
    if k < 1:
        raise ValueError("k must be >= 1")
    histories = _as_idx(histories, n_items, "history")
    out_s = np.full((n, k), -np.inf, dtype=np.float32)
    out_i = np.full((n, k), -1, dtype=np.int64)
    if n == 0:
        return out_s, out_i
    index = faiss.IndexFlatIP(d)
    index.add(item_emb)
    lens = np.fromiter((len(h) for h in histories), dtype=np.int64, count=n)
    order = np.argsort(lens, kind="stable")
    for start in range(0, n, chunk_size):
        sel = order[start : start + chunk_size]
        b = sel.size
        ks = int(min(n_items, k + lens[sel].max()))
        sc, ids = index.search(user_emb[sel], ks)  # (b, ks) each
        ids = ids.astype(np.int64, copy=False)
        hist = [histories[i] for i in sel]
        hrows, hcols = _flat(hist)
        masked = np.isin(np.arange(b)[:, None] * n_items + ids, hrows * n_items + hcols)
        valid = ~masked & (ids >= 0)
        # order within a row: valid first, then score descending, then item index ascending
        o = np.lexsort((ids, -sc, ~valid), axis=-1)
        sc = np.take_along_axis(sc, o, axis=1)
        ids = np.take_along_axis(ids, o, axis=1)
        valid = np.take_along_axis(valid, o, axis=1)
        m = min(k, ks)
        top_s = np.where(valid[:, :m], sc[:, :m], -np.inf).astype(np.float32)
        top_i = np.where(valid[:, :m], ids[:, :m], -1)
        n_valid = valid.sum(axis=1)
        # ties at the cut-off: the k-th kept score equals the smallest score faiss returned
        boundary = np.zeros(b, dtype=bool)
        if ks < n_items:
            kth = sc[np.arange(b), np.minimum(n_valid, k) - 1]
            last = np.where(valid | masked, sc, np.inf).min(axis=1)
            boundary = (n_valid >= 1) & (kth <= last)
        out_s[sel, :m] = top_s
        out_i[sel, :m] = top_i
        if boundary.any():
            rows = np.flatnonzero(boundary)
            step = max(1, (1 << 24) // n_items)  # bounded memory for the exact pass
            for r0 in range(0, rows.size, step):
                rr = rows[r0 : r0 + step]
                es, ei = _exact_topk_rows(item_emb, user_emb[sel[rr]], [hist[r] for r in rr], k, top_i[rr])
                out_s[sel[rr]] = es
                out_i[sel[rr]] = ei
    return out_s, out_i


def summarize(
    per_impression: dict[str, np.ndarray],
    users: np.ndarray,
    ks: Sequence[int] = (10, 20, 50),
    js_k: int = 50,
) -> dict[str, float]:
    """Summary metrics from per-impression arrays (pass ``{k: v[mask]}``, ``users[mask]`` for a slice).

    HR@k, NDCG@k (every k), MRR: plain means over impressions. gAUC: ``metrics.gauc`` (impressions
    without exposures excluded). JS@js_k: mean over impressions with a value (NaN if none).
    ``n``: number of impressions.
    """
    rank = np.asarray(per_impression["rank"])
    n = int(rank.size)
    nan = float("nan")
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(M.hit_rate(rank, k).mean()) if n else nan
    for k in ks:
        out[f"NDCG@{k}"] = float(M.ndcg(rank, k).mean()) if n else nan
    out["MRR"] = float(M.mrr(rank).mean()) if n else nan
    auc = per_impression.get("auc")
    out["gAUC"] = M.gauc(auc, users) if auc is not None and n else nan
    js = per_impression.get("js")
    if js is not None and n and not np.isnan(js).all():
        out[f"JS@{js_k}"] = float(np.nanmean(js))
    else:
        out[f"JS@{js_k}"] = nan
    out["n"] = float(n)
    return out


def evaluate(
    item_emb: np.ndarray,
    user_emb: np.ndarray,
    impressions: pd.DataFrame,
    *,
    ks: Sequence[int] = (10, 20, 50),
    js_k: int = 50,
    item_terms: list[set[str]] | None = None,
    block_size: int = 2048,
    topk_lists: bool = True,
) -> EvalResult:
    """Evaluate one model's embeddings on ``impressions`` (rows of ``SearchLog.impressions``).

    ``item_emb``: (n_items, d), row i = catalog item i. ``user_emb``: (n_impressions, d), row i =
    the user / next-interest embedding of impression row i (same order as ``impressions``).
    ``item_terms``: per catalog item its term set (``benchmark.data.text.terms``); None -> JS NaN.
    ``topk_lists=False`` skips the faiss retrieval (JS is then NaN and ``topk`` None).
    """
    item_emb = _as_f32(item_emb, "item_emb")
    user_emb = _as_f32(user_emb, "user_emb")
    n_items, d = item_emb.shape
    n = len(impressions)
    if user_emb.shape != (n, d):
        raise ValueError(f"user_emb must be ({n}, {d}) (one row per impression), got {user_emb.shape}")
    if n_items < 1:
        raise ValueError("empty catalog")
    if item_terms is not None and len(item_terms) != n_items:
        raise ValueError(f"item_terms has {len(item_terms)} entries for {n_items} items")
    targets = impressions["target"].to_numpy().astype(np.int64)
    if n and (targets.min() < 0 or targets.max() >= n_items):
        raise ValueError(f"target outside [0, {n_items})")
    histories = _as_idx(impressions["history"], n_items, "history")
    exposures = (
        _as_idx(impressions["exposures"], n_items, "exposures")
        if "exposures" in impressions
        else [np.zeros(0, dtype=np.int64)] * n
    )
    users = impressions["user"].to_numpy() if "user" in impressions else np.arange(n)

    rank = np.zeros(n, dtype=np.int64)
    auc = np.full(n, np.nan, dtype=np.float64)
    # rows per block, bounded so one block's score matrix stays <= ~256 MB
    bs = max(1, min(block_size, (1 << 26) // max(1, n_items)))
    for s0 in range(0, n, bs):
        s1 = min(n, s0 + bs)
        b = s1 - s0
        tgt = targets[s0:s1]
        S = user_emb[s0:s1] @ item_emb.T  # (b, N) float32
        st = S[np.arange(b), tgt]  # (b,) target scores
        # gAUC: raw scores of the exposures (an exposure equal to the target is dropped)
        erows, ecols = _flat(exposures[s0:s1])
        keep = ecols != tgt[erows]
        erows, ecols = erows[keep], ecols[keep]
        if erows.size:
            es = S[erows, ecols]
            et = st[erows]
            wins = np.bincount(erows, weights=(es < et) + 0.5 * (es == et), minlength=b)
            cnt = np.bincount(erows, minlength=b)
            has = cnt > 0
            auc[s0:s1][has] = wins[has] / cnt[has]
        # mask the history (never the target)
        hrows, hcols = _flat(histories[s0:s1])
        keep = hcols != tgt[hrows]
        hrows, hcols = hrows[keep], hcols[keep]
        candidates = np.ones((b, n_items), dtype=bool)
        candidates[hrows, hcols] = False
        rank[s0:s1] = M.pessimistic_ranks(S, tgt, candidates)  # the one tie rule (NaN target: |C|)

    js = np.full(n, np.nan, dtype=np.float64)
    topk = None
    if topk_lists and n:
        # the target is never masked, in the lists as in the ranks
        mask_lists = [h[h != t] for h, t in zip(histories, targets, strict=True)]
        _, topk = retrieve_topk(item_emb, user_emb, mask_lists, js_k)
        if item_terms is not None:
            sets = [t if isinstance(t, (set, frozenset)) else set(t) for t in item_terms]
            for i in range(n):
                row = topk[i]
                js[i] = M.jaccard_at_k(sets[targets[i]], [sets[j] for j in row[row >= 0]])

    per = {"rank": rank, "auc": auc, "js": js}
    return EvalResult(
        metrics=summarize(per, users, ks, js_k),
        per_impression=per,
        users=np.asarray(users),
        topk=topk,
    )
