"""Ranking: the model's similarity as a CTR feature (paper: +0.25 CTR AUC)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from benchmark import metrics as M
from benchmark.data.schema import SearchLog, train_popularity
from benchmark.funnel.common import (
    _arrays,
)
from benchmark.lexical import BM25Scorer
from benchmark.stats import paired_delta_over_users


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
        dense = (torch.tensor(ex[self.dense_names].to_numpy(np.float32)) if self.dense_names
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


LEXICAL_FEATURES = ("lexical", "log_popularity")


def train_ctr(examples_train: pd.DataFrame, examples_valid: pd.DataFrame, *, extra_feature: str | None,
              seed: int, features: Sequence[str] = LEXICAL_FEATURES, epochs: int = 10,
              n_users: int | None = None, n_items: int | None = None,
              dim: int = 16, lr: float = 3e-3, weight_decay: float = 1e-6, batch_size: int = 512,
              patience: int = 2, max_history: int = 20) -> CTRModel:
    """Train ``CTRModel`` with BCE, early-stopped on the pooled validation AUC (``global_auc``).

    Dense features: ``features`` (default ``lexical``, ``log_popularity``) and, when given,
    ``extra_feature`` (columns of the example tables). ``n_users=0`` gives every user the one shared
    "unknown user" embedding (for scoring users the CTR model never trained on). Training stops after ``patience`` epochs without a better validation AUC
    and the best epoch's weights are restored. Deterministic given ``seed`` (own generators).
    """
    dense = list(features) + ([extra_feature] if extra_feature else [])
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
    "delta_gAUC_ci": paired_delta_over_users(...)}``. The AUC delta is a point estimate (pooled AUC does not
    split into per-user terms); its spread comes from repeating over seeds (``stats.mean_ci``).
    """
    res = {}
    for name, feat in (("without", None), ("with", extra_feature)):
        model = train_ctr(examples_train, examples_valid, extra_feature=feat, seed=seed, **train_kw)
        res[name] = ctr_metrics(examples_test, model.predict(examples_test))
    out = {k: {m: res[k][m] for m in ("AUC", "gAUC")} for k in res}
    out["delta_AUC"] = res["with"]["AUC"] - res["without"]["AUC"]
    out["delta_gAUC"] = res["with"]["gAUC"] - res["without"]["gAUC"]
    out["delta_gAUC_ci"] = paired_delta_over_users(res["with"]["auc_per_impression"], res["without"]["auc_per_impression"],
                                        res["with"]["users"], n_boot=n_boot, seed=seed)
    return out


# ============================================================================ ranking: cross-fitted
def cross_fit_folds(users: np.ndarray, folds: int) -> np.ndarray:
    """The fold of each row: ``user mod folds`` (user ids are the log's indices, assigned before any
    model exists), so every impression of a user lands in one fold."""
    return np.asarray(users, dtype=np.int64) % int(folds)


def cross_fit_predict(fit: Callable[[pd.DataFrame, pd.DataFrame], Callable[[pd.DataFrame], np.ndarray]],
                      examples_valid: pd.DataFrame, examples_test: pd.DataFrame, folds: int = 2) -> np.ndarray:
    """Test scores of which none comes from a model that saw its row: for each fold f of users,
    ``fit(train, early_stop)`` trains on the validation and test rows of the other folds' users,
    early-stops on fold f's validation rows, and scores fold f's test rows. One score per test row."""
    valid_fold = cross_fit_folds(examples_valid["user"].to_numpy(), folds)
    test_fold = cross_fit_folds(examples_test["user"].to_numpy(), folds)
    out = np.full(len(examples_test), np.nan)
    for f in range(folds):
        train = pd.concat([examples_valid[valid_fold != f], examples_test[test_fold != f]], ignore_index=True)
        early, held = examples_valid[valid_fold == f], test_fold == f
        if held.any():
            out[held] = fit(train, early)(examples_test[held])
    return out


def compare_ctr_cross_fitted(examples_valid: pd.DataFrame, examples_test: pd.DataFrame, *, extra_feature: str,
                             seed: int, feature_sets: dict[str, Sequence[str]], folds: int = 2, n_boot: int = 10_000,
                             **train_kw) -> dict:
    """The CTR comparison with ``extra_feature`` cross-fitted (``cross_fit_predict``).

    The rows are validation and test impressions only: the embedding model that made
    ``extra_feature`` never trained on them (validation chose its epoch; no gradient saw it), and
    the CTR model that scores a test row never trained on that row or on any row of its user.
    Users are unknown to the CTR model (one shared user embedding). Per feature set (name ->
    dense columns), without vs with ``extra_feature``, same seed and folds: ``{"without": {AUC,
    gAUC}, "with": {...}, "delta_AUC", "delta_gAUC", "delta_gAUC_ci"}`` on the test rows."""
    out = {"folds": folds, "rows": {"valid": len(examples_valid), "test": len(examples_test)}}
    for name, features in feature_sets.items():
        res = {}
        for arm, extra in (("without", None), ("with", extra_feature)):
            def fit(train, early, extra=extra, features=features):
                return train_ctr(train, early, extra_feature=extra, features=features, seed=seed, n_users=0,
                                 **train_kw).predict
            res[arm] = ctr_metrics(examples_test, cross_fit_predict(fit, examples_valid, examples_test, folds))
        out[name] = {arm: {m: res[arm][m] for m in ("AUC", "gAUC")} for arm in res}
        out[name]["delta_AUC"] = res["with"]["AUC"] - res["without"]["AUC"]
        out[name]["delta_gAUC"] = res["with"]["gAUC"] - res["without"]["gAUC"]
        out[name]["delta_gAUC_ci"] = paired_delta_over_users(
            res["with"]["auc_per_impression"], res["without"]["auc_per_impression"], res["with"]["users"],
            n_boot=n_boot, seed=seed)
    return out
