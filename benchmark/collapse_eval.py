"""Per-run collapse diagnostics, computed while the trained model is in memory: the embeddings'
effective rank before and after training, and the attention statistics of the layers that train (the
item encoder's trainable block, every decoder layer), before and after training.

The statistics live in ``benchmark.diagnostics``; this module runs them for one model and returns
JSON-ready summaries for its run record. (The funnel stages are a pass of their own over the stored
embeddings: ``benchmark.funnel.runs``.)
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import torch

from benchmark import diagnostics as D
from benchmark.data.schema import SearchLog
from benchmark.device import module_device
from benchmark.model import DecoderAttentionProbe, ItemAttentionProbe


def attention_before_training(model, log: SearchLog, cfg) -> dict:
    """The attention statistics of the untrained model (no heat maps), in eval mode and with the random
    streams restored, so taking them changes nothing about the training that follows."""
    if not isinstance(model, (ItemAttentionProbe, DecoderAttentionProbe)):
        return {}
    with _untouched(model):
        return attention_diagnostics(model, log, cfg)


@contextlib.contextmanager
def _untouched(model):
    """Measure ``model`` in eval mode without gradients and give back its mode and the random streams."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            yield
    finally:
        model.train(was_training)


def epoch_probe(log: SearchLog, cfg):
    """A per-epoch probe for the trainer (``train(probe=...)``): the item encoder's attention summary
    (first-position and top-3 mass, normalised entropy, barcode; mean over heads) on the first
    ``cfg.probe_items`` catalog items, taken like ``attention_before_training`` (eval mode, random
    streams restored), so action-only and KARMA can be compared at equal epochs. None for models
    without an item-encoder attention."""
    def probe(model) -> dict | None:
        if not isinstance(model, ItemAttentionProbe):
            return None
        with _untouched(model):
            summary = _item_encoder_diagnostics(model, log, dataclasses.replace(cfg, attention_items=cfg.probe_items),
                                                None, None)
        return {k: v for k, v in summary.items() if k != "heads"}
    return probe


def attention_diagnostics(model, log: SearchLog, cfg, run=None, figures_dir: Path | None = None) -> dict:
    """Item-encoder and decoder attention statistics; heat maps are saved when ``run`` is given."""
    out = {}
    if isinstance(model, ItemAttentionProbe):
        out["item_encoder_attention"] = _item_encoder_diagnostics(model, log, cfg, run, figures_dir)
    if isinstance(model, DecoderAttentionProbe):
        out.update(_decoder_diagnostics(model, log, cfg, run, figures_dir))
    return out


def collapse_diagnostics(model, log: SearchLog, item_emb: np.ndarray, cfg, run, figures_dir: Path) -> dict:
    """Representation collapse (before/after training) and the item encoder's attention statistics."""
    out = {"item_embeddings": {
        "effective_rank_after": D.effective_rank(item_emb),
        "mean_pairwise_cosine_after": D.mean_pairwise_cosine(item_emb, seed=0)}}
    before = getattr(model, "initial_item_embeddings", None)
    if before is not None:
        out["item_embeddings"]["effective_rank_before"] = D.effective_rank(before)
        out["item_embeddings"]["mean_pairwise_cosine_before"] = D.mean_pairwise_cosine(before, seed=0)
    out.update(attention_diagnostics(model, log, cfg, run, figures_dir))
    before = getattr(model, "initial_attention", None)
    if before:
        out["before_training"] = before
    return out


def _item_encoder_diagnostics(model, log: SearchLog, cfg, run, figures_dir: Path) -> dict:
    """Attention-sink statistics of the item encoder's last trainable block, per head, over the real
    tokens of the first ``attention_items`` catalog items; the heat map averages each item's query rows."""
    items = torch.arange(min(cfg.attention_items, log.n_items), device=module_device(model))
    attn, mask = model.item_encoder_attention(items)
    attn, mask = attn.float().cpu().numpy(), mask.cpu().numpy()  # (N, heads, L, L), (N, L)
    rows = attn.transpose(1, 0, 2, 3)[:, mask]  # (heads, real query rows, L)
    keys = np.broadcast_to(mask[:, None, :], (*mask.shape, mask.shape[1]))[mask]  # (real query rows, L)
    per_head = [D.attention_stats(rows[h], keys) for h in range(rows.shape[0])]
    summary = {k: float(np.mean([s[k] for s in per_head])) for k in per_head[0] if k != "rows"}
    summary["heads"] = per_head
    counts = mask.sum(1, keepdims=True).clip(min=1)
    per_item = (attn.mean(1) * mask[:, :, None]).sum(1) / counts  # (N, L): mean over real query rows and heads
    if run is not None:
        summary["heatmap"] = _save_heatmap(per_item[:32], Path(figures_dir) / "attention", log, run,
                                           "item-encoder attention, last trained block (items x token positions)")
    return summary


def _decoder_diagnostics(model, log: SearchLog, cfg, run, figures_dir: Path) -> dict:
    """Attention-sink statistics of every decoder layer on test impressions (causal mask applied).

    The heat map is the last layer's attention of the final position (the query token, or the last
    history item), one row per impression, averaged over heads: a barcode shows as vertical stripes.
    """
    test = log.impressions[log.impressions["split"] == "test"]
    layers, window = model.decoder_attention(test, max_rows=cfg.attention_items)
    if layers is None:
        return {}
    n_layers, n_rows, heads, length, _ = layers.shape
    causal = np.tril(np.ones((length, length), dtype=bool))
    per_layer = []
    for layer in layers:  # (B, heads, L, L) -> (heads, B * L, L) query rows
        rows = layer.transpose(1, 0, 2, 3).reshape(heads, n_rows * length, length)
        per_layer.append(D.attention_stats(rows, np.tile(causal, (n_rows, 1))))
    summary = {k: float(np.mean([s[k] for s in per_layer])) for k in per_layer[0] if k != "rows"}
    summary.update(window=window, impressions=n_rows, layers=per_layer)
    last_row = layers[-1][:, :, -1, :].mean(1)  # (B, L)
    if run is not None:
        summary["heatmap"] = _save_heatmap(last_row[:32], Path(figures_dir) / "decoder_attention", log, run,
                                           "decoder attention, last layer, final position (impressions x positions)")
    return {"decoder_attention": summary}


def _save_heatmap(attn: np.ndarray, folder: Path, log: SearchLog, run, what: str) -> str:
    """Save one run's (Q, L) map as PNG plus the .npy the leaderboard's side-by-side figures read."""
    path = folder / f"{log.name.replace('/', '__')}__{run.mode}" / f"{run.model}__{run.variant}__seed{run.seed}.png"
    D.heatmap(attn, path, title=f"{log.name} {run.model}:{run.variant} {what}")
    np.save(path.with_suffix(".npy"), attn)
    return str(path)
