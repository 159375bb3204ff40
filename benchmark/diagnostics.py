"""Semantic-collapse diagnostics (paper §3.3, DESIGN.md §4): attention-sink statistics, embedding
spread and Figure-2-style heat-maps.

Inputs are plain arrays, so the same functions read both attention sources:

- the item encoder's pooling, ``karma.model.AttentionPooling.attention(states, mask)`` ->
  ``(N items, heads, L tokens)``: pass ``attn.transpose(1, 0, 2)`` (heads, Q = items, L) with the
  token mask ``(Q, L)``; each head's learned query is one "query row" per item.
- a Hugging Face decoder run with ``output_attentions=True``: one layer's ``(B, heads, L, L)``;
  pass one sequence's ``(heads, L, L)`` with its causal/padding mask ``(L, L)``.

Nothing here trains or imports a model; figures use matplotlib's object API on an Agg canvas (no
pyplot global state).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["attention_stats", "effective_rank", "mean_pairwise_cosine", "heatmap", "compare_heatmaps"]


def _as_heads(attn: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"attention must be (Q, L) or (heads, Q, L), got shape {np.shape(attn)}")
    m = np.ones(a.shape, dtype=bool) if mask is None else np.broadcast_to(np.asarray(mask, dtype=bool), a.shape)
    return a, m


def attention_stats(attn: np.ndarray, mask: np.ndarray | None = None, top: int = 3) -> dict[str, float]:
    """Attention-sink statistics of attention maps ``(Q, L)`` or ``(heads, Q, L)``.

    ``mask`` (broadcastable to the attention, True = valid key; None = all valid) removes padding or
    causally hidden keys. Each row (one head, one query) is restricted to its valid keys and
    renormalised, ``p_{h,q,j} = a_{h,q,j} / sum_{j valid} a_{h,q,j}`` (a no-op for softmax output);
    rows without mass are dropped. With ``n_{h,q}`` the row's number of valid keys:

    - ``first``:        mean over rows of ``p_{h,q,f}`` with f the row's first valid key (position 0
      unless left padding is masked): the mass on the first token, the classic attention sink.
    - ``top3``:         mean over rows of the sum of the row's ``top`` largest ``p`` (any positions).
    - ``entropy``:      mean over rows of ``H = -sum_j p_j ln p_j`` (nats; 0 ln 0 = 0).
    - ``norm_entropy``: mean over rows with ``n >= 2`` of ``H / ln n`` (1 = uniform, 0 = one-hot).
    - ``barcode``:      per head, the column-mean mass ``c_{h,j} = (1/Q_h) sum_q p_{h,q,j}`` (sums to 1);
      ``barcode_h = sum of the top largest c_{h,j}``; the score is the mean over heads. It measures
      whether *different queries* pile their mass onto the *same* few key positions (the vertical
      stripes of the paper's Figure 2): ``top / L`` for uniform attention over L keys, 1.0 when every
      query puts all its mass on the same ``<= top`` columns. (``top3`` alone cannot tell a barcode from
      sharp but query-specific attention; ``barcode`` can.)

    Returns floats: ``first``, ``top3``, ``entropy``, ``norm_entropy``, ``barcode``, ``rows``.
    """
    a, m = _as_heads(attn, mask)
    a = np.where(m, np.clip(a, 0.0, None), 0.0)
    tot = a.sum(-1, keepdims=True)  # (H, Q, 1)
    keep = tot[..., 0] > 0  # (H, Q)
    p = np.where(tot > 0, a / np.where(tot > 0, tot, 1.0), 0.0)
    n_valid = m.sum(-1)  # (H, Q)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    ent = -plogp.sum(-1)  # (H, Q)
    k = min(top, a.shape[-1])
    topk = -np.sort(-p, axis=-1)[..., :k].sum(-1)  # (H, Q)
    ok_norm = keep & (n_valid >= 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = ent / np.log(np.maximum(n_valid, 2))
    first = np.take_along_axis(p, m.argmax(-1)[..., None], axis=-1)[..., 0]  # (H, Q) first valid key
    bars = []
    for h in range(a.shape[0]):
        rows = keep[h]
        if rows.any():
            col = p[h][rows].mean(0)  # (L,) sums to 1
            bars.append(float(-np.sort(-col)[:k].sum()))
    nan = float("nan")
    return {
        "first": float(first[keep].mean()) if keep.any() else nan,
        "top3": float(topk[keep].mean()) if keep.any() else nan,
        "entropy": float(ent[keep].mean()) if keep.any() else nan,
        "norm_entropy": float(norm[ok_norm].mean()) if ok_norm.any() else nan,
        "barcode": float(np.mean(bars)) if bars else nan,
        "rows": float(keep.sum()),
    }


def effective_rank(emb: np.ndarray, center: bool = False) -> float:
    """Effective rank (Roy & Vetterli, EUSIPCO 2007): ``exp(-sum_i p_i ln p_i)`` with ``p_i = s_i / sum s``
    over the singular values ``s`` of ``emb`` (N, D) (optionally column-centred first).

    Between 1 (rank one) and ``min(N, D)`` (all singular values equal); an all-zero matrix gives 0.
    A collapsed embedding space has a small effective rank.
    """
    x = np.asarray(emb, dtype=np.float64)
    if center:
        x = x - x.mean(0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    s = s[s > s.max(initial=0.0) * 1e-12] if s.size else s
    if s.size == 0 or s.sum() == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def mean_pairwise_cosine(emb: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """Mean cosine similarity over distinct pairs ``(i != j)`` of rows of ``emb`` (N, D).

    When ``N > sample`` a uniform sample of ``sample`` rows without replacement is drawn with
    ``np.random.default_rng(seed)``. Zero rows are dropped. Near 1 = all embeddings point the same
    way (collapse); near 0 = spread out. NaN with fewer than two rows.
    """
    x = np.asarray(emb, dtype=np.float64)
    if x.shape[0] > sample:
        x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], size=sample, replace=False))]
    nrm = np.linalg.norm(x, axis=1)
    x = x[nrm > 0] / nrm[nrm > 0, None]
    n = x.shape[0]
    if n < 2:
        return float("nan")
    s = x.sum(0)
    return float((s @ s - n) / (n * (n - 1)))  # sum over all pairs minus the diagonal (each 1)


def _figure(ncols: int, width: float = 5.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _draw(ax, a: np.ndarray, title: str, vmax: float | None):
    im = ax.imshow(np.asarray(a, dtype=np.float64), aspect="auto", interpolation="nearest",
                   cmap="viridis", vmin=0.0, vmax=vmax)
    ax.set_xlabel("key position")
    ax.set_ylabel("query")
    ax.set_title(title)
    return im


def heatmap(attn: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Save an attention map ``(Q, L)`` (queries x key positions, like the paper's Figure 2) as a PNG.

    Returns the path written (parent folders are created).
    """
    a = np.asarray(attn)
    if a.ndim != 2:
        raise ValueError(f"heatmap needs a (Q, L) map, got shape {a.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure(1)
    ax = fig.add_subplot(1, 1, 1)
    fig.colorbar(_draw(ax, a, title, None), ax=ax, label="attention")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def compare_heatmaps(a: np.ndarray, b: np.ndarray, labels: Sequence[str], path: str | Path,
                     title: str = "") -> Path:
    """Save two attention maps ``(Q, L)`` side by side (e.g. action-only vs KARMA) on one colour scale."""
    if len(labels) != 2:
        raise ValueError("labels must name the two maps")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"compare_heatmaps needs two (Q, L) maps, got {a.shape} and {b.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vmax = float(max(np.nanmax(a, initial=0.0), np.nanmax(b, initial=0.0))) or 1.0
    fig = _figure(2)
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    im = None
    for ax, m, lab in zip(axes, (a, b), labels, strict=True):
        im = _draw(ax, m, lab, vmax)
    fig.colorbar(im, ax=axes, label="attention")
    if title:
        fig.suptitle(title)
    fig.savefig(path, format="png")
    return path


def layer_profiles(curves: dict[str, Sequence[float]], path: str | Path, xlabel: str, ylabel: str,
                   title: str = "") -> Path:
    """Save one line per named curve (e.g. a statistic per decoder layer: before training, action-only,
    KARMA) on shared axes as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure(1, width=6.0)
    ax = fig.add_subplot(1, 1, 1)
    for label, values in curves.items():
        ax.plot(np.arange(len(values)), np.asarray(values, dtype=np.float64), marker="o", ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    if title:
        ax.set_title(textwrap.fill(title, 60), fontsize=10)  # long view names must not run off the figure
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
