"""Funnel evaluations of paper §3.5 (DESIGN.md §4): ranking (CTR feature), pre-ranking fusion, recall.

The paper reports three offline funnel numbers from Taobao: +0.25 CTR AUC (ranking), +1.86 HR@500
(pre-ranking) and +2.51 HR@5000 (recall). This module rebuilds each stage on the canonical
``SearchLog`` with public-data stand-ins for Taobao's production components, and measures the
same deltas. Every metric comes from ``benchmark.metrics`` (one tie rule, gAUC, paired tests);
only the score arrays are produced here. No module of a later stage is imported.

Shared components
    Lexical score   BM25 (``bm25s``, its default Lucene variant, English stop-words) of the
                    impression's query against each catalog item's ``text``: the same ranker that
                    produced the adapted logs' exposures (``benchmark.data.adapt.bm25_exposures``).
    Popularity      ``pop_i`` = number of *train*-split impressions whose target is item i (train
                    clicks; valid/test clicks never leak into a feature). The features use
                    ``log(1 + pop_i)``.
    Candidate set   as in ``benchmark.metrics``: the full catalog minus the impression's history,
                    the target never masked. Ranks use the one pessimistic tie rule
                    ``rank = #{j in C : s_j >= s_t}`` (target included), a NaN target score gets ``|C|``.

K scaled to the catalog (the paper's K are for a catalog of Taobao's size; we keep their ratio)
    ``prerank_k(N) = min(N, max(10, ceil(0.01 * N)))``   (paper: HR@500)
    ``recall_k(N)  = min(N, max(10, ceil(0.10 * N)))``   (paper: HR@5000)
    Both equal the paper's K exactly at N = 50,000 items and keep its 10x ratio for N >= 1,000.

Paired intervals
    Deltas between two systems on the same impressions get a 95 % interval from
    ``metrics.paired_bootstrap_or_t(method="bootstrap")`` over *users*: each user's values are first
    averaged over that user's impressions (``per_user_mean``). The bootstrap's ``mean_diff`` is therefore
    the user-weighted mean difference; with leave-last-out splits (one test impression per user) it is
    identical to the impression-weighted difference reported as the headline number.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from benchmark import metrics as M
from benchmark.data.schema import SearchLog
from benchmark.evaluate import retrieve_topk

__all__ = [
    "prerank_k",
    "recall_k",
    "BM25Scorer",
    "train_popularity",
    "candidate_mask",
    "pessimistic_ranks",
    "per_user_mean",
    "paired_delta",
    # ranking
    "ctr_examples",
    "ctr_feature_similarity",
    "CTRModel",
    "train_ctr",
    "global_auc",
    "ctr_metrics",
    "compare_ctr",
    # pre-ranking
    "zscore_rows",
    "preranker_scores",
    "fuse",
    "hr_at_k_fused",
    "choose_weight",
    "choose_weight_blocks",
    "prerank_funnel",
    # recall
    "topk_from_scores",
    "merge_channels",
    "recall_hr",
    "recall_funnel",
]

DEFAULT_GRID = np.linspace(0.0, 1.0, 11)


# ============================================================================ shared pieces
def prerank_k(n_items: int) -> int:
    """Pre-ranking cut-off ``K = min(N, max(10, ceil(0.01 * N)))`` (the paper's HR@500 at N = 50k)."""
    return int(min(n_items, max(10, math.ceil(0.01 * n_items))))


def recall_k(n_items: int) -> int:
    """Recall cut-off ``K = min(N, max(10, ceil(0.10 * N)))`` (the paper's HR@5000 at N = 50k)."""
    return int(min(n_items, max(10, math.ceil(0.10 * n_items))))


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


def train_popularity(log: SearchLog) -> np.ndarray:
    """``pop_i`` = number of train-split impressions whose target is item i, shape (N,) int64."""
    tr = log.split("train")["target"].to_numpy().astype(np.int64)
    return np.bincount(tr, minlength=log.n_items).astype(np.int64)


def _arrays(seq) -> list[np.ndarray]:
    return [np.asarray(h if h is not None else [], dtype=np.int64).ravel() for h in seq]


def candidate_mask(histories: Sequence, targets: np.ndarray, n_items: int) -> np.ndarray:
    """(B, N) bool, True = candidate: the catalog minus the row's history, the target never masked."""
    targets = np.asarray(targets, dtype=np.int64)
    valid = np.ones((len(targets), n_items), dtype=bool)
    for r, h in enumerate(_arrays(histories)):
        valid[r, h[h != targets[r]]] = False
    return valid


def pessimistic_ranks(scores: np.ndarray, targets: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Target rank under the one tie rule of ``benchmark.metrics``: ``#{j in C : s_j >= s_t}``.

    ``scores`` (B, N); ``valid`` (B, N) marks the candidate set C (None = all items; the target is
    always a candidate). A NaN target score gets the worst rank ``|C|``. Returns int64 (B,), 1-based.
    """
    s = np.asarray(scores, dtype=np.float64)
    b, n = s.shape
    t = np.asarray(targets, dtype=np.int64)
    v = np.ones((b, n), dtype=bool) if valid is None else np.array(valid, dtype=bool, copy=True)
    v[np.arange(b), t] = True
    st = s[np.arange(b), t]
    with np.errstate(invalid="ignore"):
        r = np.count_nonzero(v & (s >= st[:, None]), axis=1)
    return np.where(np.isnan(st), v.sum(axis=1), r).astype(np.int64)


def per_user_mean(values: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` over each user's rows, NaNs ignored -> (sorted users, means; NaN if none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    uniq, inv = np.unique(np.asarray(users).ravel(), return_inverse=True)
    ok = ~np.isnan(v)
    cnt = np.bincount(inv[ok], minlength=uniq.size).astype(np.float64)
    tot = np.bincount(inv[ok], weights=v[ok], minlength=uniq.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return uniq, np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def paired_delta(a: np.ndarray, b: np.ndarray, users: np.ndarray, *, n_boot: int = 10_000,
                 seed: int = 0) -> dict[str, float]:
    """Delta ``a - b`` of two systems on the same rows, 95 % interval bootstrapped over users.

    ``d_u = mean_u(a) - mean_u(b)`` per user (``per_user_mean``), then
    ``metrics.paired_bootstrap_or_t(method="bootstrap")`` over the users. Also returns the
    impression-weighted headline ``delta = nanmean(a) - nanmean(b)`` (rows where either is NaN dropped).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    both = ~(np.isnan(a) | np.isnan(b))
    _, ua = per_user_mean(np.where(both, a, np.nan), users)
    _, ub = per_user_mean(np.where(both, b, np.nan), users)
    out = M.paired_bootstrap_or_t(ua, ub, method="bootstrap", n_boot=n_boot, seed=seed)
    out["delta"] = float(a[both].mean() - b[both].mean()) if both.any() else float("nan")
    return out


# ============================================================================ ranking: CTR feature
def ctr_examples(log: SearchLog, split: str, *, bm25: BM25Scorer | None = None,
                 popularity: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (impression, candidate): the click (label 1) and each exposed-but-unclicked item (0).

    Columns: ``impression`` (row position in ``log.impressions``), ``user``, ``item``, ``label``,
    ``history`` (int64 array, the impression's history), ``lexical`` (BM25 of the query against the
    item's text, ``BM25Scorer``; 0 when the log has no text), ``log_popularity``
    (``log(1 + pop_i)`` with train clicks; on *train* rows the row's own click is left out,
    ``log(1 + pop_i - label)``, so the feature never contains the label it predicts).
    An exposure equal to the target is dropped (as in the evaluator's gAUC).
    """
    imps = log.impressions
    pos = np.flatnonzero((imps["split"] == split).to_numpy())
    if bm25 is None and log.has_text:
        bm25 = BM25Scorer(log.catalog["text"].fillna("").astype(str).tolist())
    pop = train_popularity(log) if popularity is None else np.asarray(popularity, dtype=np.int64)
    rows = imps.iloc[pos]
    targets = rows["target"].to_numpy().astype(np.int64)
    exposures = _arrays(rows["exposures"])
    items, labels, owner = [], [], []
    for r, (t, ex) in enumerate(zip(targets, exposures, strict=True)):
        ex = ex[ex != t]
        items.append(np.concatenate([[t], ex]))
        labels.append(np.concatenate([[1], np.zeros(ex.size, dtype=np.int64)]))
        owner.append(np.full(ex.size + 1, r, dtype=np.int64))
    item = np.concatenate(items) if items else np.zeros(0, np.int64)
    label = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    own = np.concatenate(owner) if owner else np.zeros(0, np.int64)
    lexical = np.zeros(item.size, dtype=np.float32)
    if bm25 is not None and item.size:
        queries = rows["query"].astype(str).to_numpy()
        ends = np.cumsum([x.size for x in items])  # each impression's rows are contiguous
        for r, (a, b) in enumerate(zip(ends - [x.size for x in items], ends, strict=True)):
            lexical[a:b] = bm25.row(queries[r])[item[a:b]]
    clicks = pop[item] - (label if split == "train" else 0)
    histories = list(rows["history"])
    return pd.DataFrame({
        "impression": pos[own],
        "user": rows["user"].to_numpy()[own],
        "item": item,
        "label": label,
        "history": [histories[r] for r in own],
        "lexical": lexical,
        "log_popularity": np.log1p(np.maximum(clicks, 0)).astype(np.float32),
    })


def ctr_feature_similarity(item_emb: np.ndarray, histories: Sequence, candidates: np.ndarray,
                           chunk: int = 65_536) -> np.ndarray:
    """The paper's ranking feature: similarity of the user's historical items and the target item.

    ``sim(H, c) = (1 / |H|) * sum_{h in H} cos(e_h, e_c)`` with ``e`` the model's item embeddings
    (``item_embeddings(log)``); an empty history gives 0. Returns float32 (len(candidates),).
    """
    e = np.asarray(item_emb, dtype=np.float32)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    cand = np.asarray(candidates, dtype=np.int64).ravel()
    hist = _arrays(histories)
    if len(hist) != cand.size:
        raise ValueError(f"{len(hist)} histories for {cand.size} candidates")
    lens = np.fromiter((h.size for h in hist), dtype=np.int64, count=len(hist))
    rows = np.repeat(np.arange(cand.size), lens)
    flat = np.concatenate(hist) if lens.sum() else np.zeros(0, np.int64)
    tot = np.zeros(cand.size, dtype=np.float64)
    for s in range(0, flat.size, chunk):
        r, h = rows[s:s + chunk], flat[s:s + chunk]
        tot += np.bincount(r, weights=(e[h] * e[cand[r]]).sum(1), minlength=cand.size)
    return np.where(lens > 0, tot / np.maximum(lens, 1), 0.0).astype(np.float32)


class CTRModel(nn.Module):
    """A small DIN (Zhou et al., KDD 2018): ID embeddings, target attention over history, MLP.

    logit = MLP([u, c, sum_j a_j h_j, dense])   with u user, c candidate and h_j history item ID
    embeddings, ``a = softmax_j(MLP_att([h_j, c, h_j - c, h_j * c]))`` over the valid history
    positions (DIN's unnormalised weights replaced by a softmax, as in its DIEN / BST successors),
    ``dense`` the standardised dense features (train mean / std). Trained with BCE.
    """

    def __init__(self, n_users: int, n_items: int, dense: Sequence[str], dim: int = 16,
                 hidden: tuple[int, ...] = (64, 32), max_history: int = 20):
        super().__init__()
        self.n_users, self.n_items, self.dense_names, self.max_history = n_users, n_items, list(dense), max_history
        self.user = nn.Embedding(n_users + 1, dim)  # index n_users = unknown user
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=n_items)  # index n_items = padding
        self.att = nn.Sequential(nn.Linear(4 * dim, 32), nn.ReLU(), nn.Linear(32, 1))
        layers, width = [], 3 * dim + len(self.dense_names)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))
        self.register_buffer("mu", torch.zeros(len(self.dense_names)))
        self.register_buffer("sd", torch.ones(len(self.dense_names)))

    def forward(self, user, item, hist, dense):  # (B,), (B,), (B, T), (B, F)
        u, c, h = self.user(user), self.item(item), self.item(hist)  # (B, d), (B, d), (B, T, d)
        mask = hist != self.n_items  # (B, T)
        ce = c[:, None].expand_as(h)
        a = self.att(torch.cat([h, ce, h - ce, h * ce], -1)).squeeze(-1)  # (B, T)
        a = a.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)  # empty history -> 0
        pooled = torch.einsum("bt,btd->bd", a, h)
        x = torch.cat([u, c, pooled, (dense - self.mu) / self.sd], -1)
        return self.mlp(x).squeeze(-1)  # (B,) logits

    def tensors(self, ex: pd.DataFrame):
        user = torch.as_tensor(np.where(ex["user"].to_numpy() < self.n_users, ex["user"].to_numpy(),
                                        self.n_users).astype(np.int64))
        item = torch.as_tensor(np.minimum(ex["item"].to_numpy().astype(np.int64), self.n_items))
        t = self.max_history
        hist = np.full((len(ex), t), self.n_items, dtype=np.int64)  # most recent t, right-aligned
        for r, h in enumerate(ex["history"]):
            h = np.asarray(h, dtype=np.int64)[-t:]
            h = h[h < self.n_items]
            if h.size:
                hist[r, t - h.size:] = h
        dense = (torch.as_tensor(ex[self.dense_names].to_numpy(np.float32)) if self.dense_names
                 else torch.zeros(len(ex), 0))
        return user, item, torch.as_tensor(hist), dense

    @torch.no_grad()
    def predict(self, ex: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        """Logits (float64, one per row of ``ex``); monotone in the click probability."""
        self.eval()
        tens = self.tensors(ex)
        out = [self(*(x[s:s + batch_size] for x in tens)) for s in range(0, len(ex), batch_size)]
        return torch.cat(out).double().numpy() if out else np.zeros(0)


def global_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Pooled AUC over all rows (Mann-Whitney): ``(sum of positives' ranks - P(P+1)/2) / (P * N)``.

    Ranks from ``scipy.stats.rankdata`` (average ranks: a tie between a positive and a negative
    counts one half, as in ``metrics.auc_vs_negatives``). NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    p, n = int(y.sum()), int((~y).sum())
    if p == 0 or n == 0:
        return float("nan")
    r = stats.rankdata(s)
    return float((r[y].sum() - p * (p + 1) / 2.0) / (p * n))


def train_ctr(examples_train: pd.DataFrame, examples_valid: pd.DataFrame, *, extra_feature: str | None,
              seed: int, epochs: int = 10, n_users: int | None = None, n_items: int | None = None,
              dim: int = 16, lr: float = 3e-3, weight_decay: float = 1e-6, batch_size: int = 512,
              patience: int = 2, max_history: int = 20) -> CTRModel:
    """Train ``CTRModel`` with BCE, early-stopped on the pooled validation AUC (``global_auc``).

    Dense features: ``lexical``, ``log_popularity`` and, when given, ``extra_feature`` (a column of
    the example tables). Training stops after ``patience`` epochs without a better validation AUC
    and the best epoch's weights are restored. Deterministic given ``seed`` (own generators).
    """
    dense = ["lexical", "log_popularity"] + ([extra_feature] if extra_feature else [])
    for col in dense:
        if col not in examples_train or col not in examples_valid:
            raise KeyError(f"feature column {col!r} missing from the example tables")
    if n_users is None:
        n_users = int(max(examples_train["user"].max(), examples_valid["user"].max())) + 1
    if n_items is None:
        hmax = max((int(np.max(h)) for h in examples_train["history"] if len(h)), default=0)
        n_items = int(max(examples_train["item"].max(), examples_valid["item"].max(), hmax)) + 1
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = CTRModel(n_users, n_items, dense, dim=dim, max_history=max_history)
    tr = model.tensors(examples_train)
    y = torch.as_tensor(examples_train["label"].to_numpy(np.float32))
    if dense:
        model.mu.copy_(tr[3].mean(0))
        model.sd.copy_(tr[3].std(0).clamp(min=1e-6).nan_to_num(1.0))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, bad = -1.0, None, 0
    yv = examples_valid["label"].to_numpy()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), batch_size):
            idx = perm[s:s + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(*(x[idx] for x in tr)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        auc = global_auc(model.predict(examples_valid), yv)
        if np.isnan(auc) or auc > best:
            best, best_state, bad = (auc if not np.isnan(auc) else best), {
                k: v.detach().clone() for k, v in model.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.valid_auc = best
    return model


def ctr_metrics(examples: pd.DataFrame, scores: np.ndarray) -> dict:
    """Pooled AUC (``global_auc``) and gAUC (``metrics.auc_vs_negatives`` per impression, then
    ``metrics.gauc`` over users, impression-weighted). Returns ``{"AUC", "gAUC", "auc_per_impression",
    "users"}`` (the last two aligned, one entry per impression, for paired tests)."""
    s = np.asarray(scores, dtype=np.float64)
    imp = examples["impression"].to_numpy()
    lab = examples["label"].to_numpy().astype(bool)
    order = np.argsort(imp, kind="stable")
    uniq, start = np.unique(imp[order], return_index=True)
    bounds = np.append(start, imp.size)
    users = examples["user"].to_numpy()[order][start]
    per = np.full(uniq.size, np.nan)
    for g in range(uniq.size):
        sel = order[bounds[g]:bounds[g + 1]]
        pos, neg = s[sel][lab[sel]], s[sel][~lab[sel]]
        if pos.size == 1:
            per[g] = M.auc_vs_negatives(pos[0], neg)
    return {"AUC": global_auc(s, lab), "gAUC": M.gauc(per, users), "auc_per_impression": per, "users": users}


def compare_ctr(examples_train: pd.DataFrame, examples_valid: pd.DataFrame, examples_test: pd.DataFrame, *,
                extra_feature: str, seed: int, n_boot: int = 10_000, **train_kw) -> dict:
    """Train the CTR model without and with ``extra_feature`` (same seed) and compare on test.

    Returns ``{"without": {AUC, gAUC}, "with": {AUC, gAUC}, "delta_AUC", "delta_gAUC",
    "delta_gAUC_ci": paired_delta(...)}``. The AUC delta is a point estimate (pooled AUC does not
    split into per-user terms); its spread comes from repeating over seeds (``metrics.mean_ci95``).
    """
    res = {}
    for name, feat in (("without", None), ("with", extra_feature)):
        model = train_ctr(examples_train, examples_valid, extra_feature=feat, seed=seed, **train_kw)
        res[name] = ctr_metrics(examples_test, model.predict(examples_test))
    out = {k: {m: res[k][m] for m in ("AUC", "gAUC")} for k in res}
    out["delta_AUC"] = res["with"]["AUC"] - res["without"]["AUC"]
    out["delta_gAUC"] = res["with"]["gAUC"] - res["without"]["gAUC"]
    out["delta_gAUC_ci"] = paired_delta(res["with"]["auc_per_impression"], res["without"]["auc_per_impression"],
                                        res["with"]["users"], n_boot=n_boot, seed=seed)
    return out


# ============================================================================ pre-ranking fusion
def zscore_rows(scores: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-row z-score over the row's candidate set: ``z_j = (s_j - mean_C(s)) / std_C(s)``.

    Mean and (population) standard deviation over the valid entries of the row; a row with zero
    spread gets z = 0 everywhere; invalid entries become -inf. float64 (B, N).
    """
    s = np.asarray(scores, dtype=np.float64)
    v = np.isfinite(s) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(s))
    cnt = np.maximum(v.sum(axis=1, keepdims=True), 1)
    x = np.where(v, s, 0.0)
    mu = x.sum(axis=1, keepdims=True) / cnt
    sd = np.sqrt(np.where(v, (x - mu) ** 2, 0.0).sum(axis=1, keepdims=True) / cnt)
    z = np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    return np.where(v, z, -np.inf)


def preranker_scores(bm25_rows: np.ndarray, log_pop: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The stand-in pre-ranker: ``pre_j = z(BM25(q, j)) + z(log(1 + pop_j))``, both z-scored per row
    over the candidate set (``zscore_rows``), equal weights. (B, N), -inf off the candidate set."""
    lp = np.broadcast_to(np.asarray(log_pop, dtype=np.float64)[None], np.shape(bm25_rows))
    return zscore_rows(bm25_rows, valid) + zscore_rows(lp, valid)


def fuse(pre: np.ndarray, emb: np.ndarray, w: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Weighted fusion ``s = (1 - w) * z(pre) + w * z(emb)``, z-scored per impression (row) over its
    candidate set (``zscore_rows``), so the weight is scale-free. w = 0 is the pre-ranker alone,
    w = 1 the embedding score alone. -inf off the candidate set."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"fusion weight must lie in [0, 1], got {w}")
    return _combine(zscore_rows(pre, valid), zscore_rows(emb, valid), w)


def _combine(zp: np.ndarray, ze: np.ndarray, w: float) -> np.ndarray:
    ok = np.isfinite(zp) & np.isfinite(ze)
    return np.where(ok, (1.0 - w) * np.where(ok, zp, 0) + w * np.where(ok, ze, 0), -np.inf)


def hr_at_k_fused(pre: np.ndarray, emb: np.ndarray, targets: np.ndarray, w: float, k: int,
                  valid: np.ndarray | None = None) -> np.ndarray:
    """Per-impression HR@K (``metrics.hit_rate``) of the fused score ``fuse(pre, emb, w)``, ranks by
    ``pessimistic_ranks`` over the candidate set."""
    return M.hit_rate(pessimistic_ranks(fuse(pre, emb, w, valid), targets, valid), k)


def choose_weight(pre: np.ndarray, emb: np.ndarray, targets: np.ndarray, k: int, *,
                  valid: np.ndarray | None = None, grid: Sequence[float] = DEFAULT_GRID) -> tuple[float, dict]:
    """Pick the fusion weight on VALIDATION impressions only: ``argmax_w mean HR@K(fuse(pre, emb, w))``.

    Ties go to the smallest w (the pre-ranker alone wins unless the embedding helps). Returns
    ``(w, {w: HR@K})``.
    """
    return choose_weight_blocks([(pre, emb, targets, valid)], k, grid=grid)


def choose_weight_blocks(blocks, k: int, *, grid: Sequence[float] = DEFAULT_GRID) -> tuple[float, dict]:
    """``choose_weight`` over impressions given in blocks of ``(pre, emb, targets, valid)`` rows (a
    catalog-wide score matrix of every validation impression does not fit in memory)."""
    grid = [float(w) for w in grid]
    hits, n = np.zeros(len(grid)), 0
    for pre, emb, targets, valid in blocks:
        hits += [hr_at_k_fused(pre, emb, targets, w, k, valid).sum() for w in grid]
        n += len(targets)
    hr = dict(zip(grid, (hits / max(1, n)).tolist(), strict=True))
    best = max(hr.values())
    return min(w for w, v in hr.items() if v == best), hr


def _blocks(log: SearchLog, rows: pd.DataFrame, user_emb: np.ndarray, item_emb: np.ndarray,
            bm25: BM25Scorer | None, log_pop: np.ndarray, block: int):
    """Yield (slice, targets, valid, pre, emb) per block of impression rows.

    Rows per block are capped so one (rows, N) float64 array stays under ~64 MB.
    """
    block = max(1, min(block, (1 << 23) // max(1, log.n_items)))
    targets = rows["target"].to_numpy().astype(np.int64)
    queries = rows["query"].astype(str).tolist()
    hist = list(rows["history"])
    for s in range(0, len(rows), block):
        sl = slice(s, min(len(rows), s + block))
        valid = candidate_mask(hist[sl], targets[sl], log.n_items)
        b25 = bm25.scores(queries[sl]) if bm25 is not None else np.zeros(valid.shape, np.float32)
        pre = preranker_scores(b25, log_pop, valid)
        emb = np.asarray(user_emb[sl], dtype=np.float32) @ np.asarray(item_emb, dtype=np.float32).T
        yield sl, targets[sl], valid, pre, emb


def prerank_funnel(log: SearchLog, item_emb: np.ndarray, user_emb_valid: np.ndarray, user_emb_test: np.ndarray,
                   *, k: int | None = None, grid: Sequence[float] = DEFAULT_GRID, bm25: BM25Scorer | None = None,
                   block: int = 256, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Pre-ranking stage: HR@K of the pre-ranker alone vs fused with the model's score.

    ``user_emb_valid`` / ``user_emb_test``: one row per impression of ``log.split("valid")`` /
    ``log.split("test")`` (their order). The weight is chosen on valid (``choose_weight``, same
    ranks), then applied once to test. K defaults to ``prerank_k(N)``. Returns
    ``{"K", "w", "valid_hr_by_w", "HR_pre", "HR_fused", "HR_emb", "delta": paired_delta(fused, pre)}``.
    """
    k = prerank_k(log.n_items) if k is None else int(k)
    if bm25 is None and log.has_text:
        bm25 = BM25Scorer(log.catalog["text"].fillna("").astype(str).tolist())
    log_pop = np.log1p(train_popularity(log)).astype(np.float64)
    vrows = log.split("valid")
    w_star, hr_by_w = choose_weight_blocks(
        ((pre, emb, t, v) for _, t, v, pre, emb in _blocks(log, vrows, user_emb_valid, item_emb, bm25, log_pop,
                                                            block)), k, grid=grid)
    trows = log.split("test")
    per = {name: np.zeros(len(trows)) for name in ("pre", "fused", "emb")}
    for sl, t, v, pre, emb in _blocks(log, trows, user_emb_test, item_emb, bm25, log_pop, block):
        for name, w in (("pre", 0.0), ("fused", w_star), ("emb", 1.0)):
            per[name][sl] = hr_at_k_fused(pre, emb, t, w, k, v)
    users = trows["user"].to_numpy()
    return {"K": k, "w": w_star, "valid_hr_by_w": hr_by_w,
            "HR_pre": float(per["pre"].mean()), "HR_fused": float(per["fused"].mean()),
            "HR_emb": float(per["emb"].mean()),
            "delta": paired_delta(per["fused"], per["pre"], users, n_boot=n_boot, seed=seed),
            "per_impression": per, "users": users}


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


def recall_funnel(log: SearchLog, item_emb: np.ndarray, user_emb: np.ndarray, *, split: str = "test",
                  k: int | None = None, emb_share: float = 0.5, bm25: BM25Scorer | None = None,
                  block: int = 256, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Recall stage: HR@K of the lexical channel alone vs lexical + embedding channels, same total K.

    Lexical channel: items with BM25(query, text) > 0 (an inverted index only returns matching
    documents), history masked (target never), ordered by (BM25 desc, item index). Embedding channel:
    ``evaluate.retrieve_topk`` (exact inner product, same masking). Merged:
    ``merge_channels(lexical, embedding, (K - q_emb, q_emb))`` with ``q_emb = round(emb_share * K)``.
    K defaults to ``recall_k(N)``. ``user_emb``: one row per impression of ``log.split(split)``.
    Returns ``{"K", "quota", "HR_lexical", "HR_embedding", "HR_merged", "delta": paired_delta(merged, lexical)}``.
    """
    k = recall_k(log.n_items) if k is None else int(k)
    q_emb = int(round(emb_share * k))
    quota = (k - q_emb, q_emb)
    if bm25 is None and log.has_text:
        bm25 = BM25Scorer(log.catalog["text"].fillna("").astype(str).tolist())
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
        valid = candidate_mask(hist[sl], targets[sl], log.n_items)
        b25 = bm25.scores(queries[sl]) if bm25 is not None else np.zeros(valid.shape, np.float32)
        lex = topk_from_scores(b25, k, valid, positive_only=True)
        hr["lexical"][sl] = recall_hr(lex, targets[sl])
        hr["embedding"][sl] = recall_hr(emb_ids[sl, :k], targets[sl])
        hr["merged"][sl] = recall_hr(merge_channels(lex[:, :quota[0]], emb_ids[sl], quota), targets[sl])
    users = rows["user"].to_numpy()
    return {"K": k, "quota": quota,
            "HR_lexical": float(hr["lexical"].mean()), "HR_embedding": float(hr["embedding"].mean()),
            "HR_merged": float(hr["merged"].mean()),
            "delta": paired_delta(hr["merged"], hr["lexical"], users, n_boot=n_boot, seed=seed),
            "per_impression": hr, "users": users}
