"""Semantic-collapse diagnostics: the attention statistics per view and model, per layer and head
(figures), at equal epochs, and the Figure-2-style heat maps of action-only vs KARMA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmark import diagnostics as D
from benchmark.diagnostics import compare_heatmaps
from benchmark.records import Record
from benchmark.tables.common import (
    _mean_cell,
    _view_index,
    figure_link,
)

COLLAPSE_COLUMNS = {
    "eff. rank before": "diagnostics.item_embeddings.effective_rank_before",
    "eff. rank after": "diagnostics.item_embeddings.effective_rank_after",
    "mean cos after": "diagnostics.item_embeddings.mean_pairwise_cosine_after",
    "attn first before": "diagnostics.before_training.item_encoder_attention.first",
    "attn first": "diagnostics.item_encoder_attention.first",
    "attn top-3": "diagnostics.item_encoder_attention.top3",
    "attn norm. entropy": "diagnostics.item_encoder_attention.norm_entropy",
    "attn barcode": "diagnostics.item_encoder_attention.barcode",
    "dec. attn first before": "diagnostics.before_training.decoder_attention.first",
    "dec. attn first": "diagnostics.decoder_attention.first",
    "dec. attn top-3": "diagnostics.decoder_attention.top3",
    "dec. attn norm. entropy": "diagnostics.decoder_attention.norm_entropy",
    "dec. attn barcode": "diagnostics.decoder_attention.barcode",
}
# Heat-map pairs shown side by side: the action-only LLM against KARMA, same dataset and seed.
ATTENTION_PAIR = (("action_llm", "default"), ("karma", "karma"))
ATTENTION_SOURCES = {"item encoder": "item_encoder_attention", "decoder": "decoder_attention"}



def render_collapse_table(records: list[Record], *, suite: str, suite_version: str, seeds: list[int]) -> list[str]:
    """The collapse diagnostics per view and model (from the run records), mean ± 95% half-width over seeds."""
    index = _view_index(records, suite, suite_version)
    out = ["Collapse (paper §3.3), from each run record, on the layers that train: the item encoder's trainable "
            "top block (first 256 catalog items, per head then averaged) and every decoder layer (up to 256 test "
            "impressions with a full window of history, causal mask, averaged over layers), on the untrained model "
            "(`before`) and after training: the share of attention on the first position, on the top-3 positions, "
            "the normalised entropy (1 = uniform) and the barcode score (the same columns for every query); and the "
            "effective rank of the item embeddings. Runs recorded before a statistic existed show `n/a`.", ""]
    for dataset in sorted({key[0] for key in index}):
        rows = []
        for (ds, model, variant), runs in sorted(index.items()):
            if ds != dataset:
                continue
            cells = [_mean_cell([runs[s].number(path) for s in seeds if s in runs]) for path in COLLAPSE_COLUMNS.values()]
            if any(c != "n/a" for c in cells[3:]):  # models with attention to read (the LLM family)
                rows.append([f"{model}:{variant}", sum(s in runs for s in seeds), *cells])
        if rows:
            out += [f"### {dataset}: collapse", "",
                    tabulate(rows, headers=["model", "seeds", *COLLAPSE_COLUMNS], tablefmt="github"), ""]
    return out


LAYER_STATISTICS = {"first": "attention on the first position", "top3": "attention on the top-3 positions",
                    "norm_entropy": "normalised entropy", "barcode": "barcode score"}


def _per_layer(records: list[Record], path: str, stat: str) -> list[float] | None:
    """The mean over ``records`` of ``stat`` per layer (or head) at ``path`` (a list of per-layer dicts)."""
    rows = [x for x in (r.get(path) for r in records) if isinstance(x, list) and x]  # runs that recorded it
    if not rows or len({len(x) for x in rows}) != 1:
        return None
    return [float(np.mean([x[i][stat] for x in rows])) for i in range(len(rows[0]))]


def render_collapse_profiles(records: list[Record], *, suite: str, suite_version: str, figures_dir: Path,
                             link_base: Path) -> str:
    """Per decoder layer and per item-encoder head: attention statistics before training, after action-only
    training and after KARMA training (means over the seeds each has), one figure per view and statistic."""
    index = _view_index(records, suite, suite_version)
    lines = []
    for dataset in sorted({key[0] for key in index}):
        action, karma = (list(index.get((dataset, *key), {}).values()) for key in ATTENTION_PAIR)
        if not action or not karma:
            continue
        for source, unit, path in (("decoder_attention", "decoder layer", "layers"),
                                   ("item_encoder_attention", "item-encoder head (top block)", "heads")):
            for stat, label in LAYER_STATISTICS.items():
                curves = {"before training": _per_layer(action + karma, f"diagnostics.before_training.{source}.{path}", stat),
                          f"action-only ({len(action)} seeds)": _per_layer(action, f"diagnostics.{source}.{path}", stat),
                          f"KARMA ({len(karma)} seeds)": _per_layer(karma, f"diagnostics.{source}.{path}", stat)}
                if any(v is None for v in curves.values()):
                    continue
                out = (Path(figures_dir) / "collapse" /
                       f"{dataset.replace(' · ', '__').replace('/', '__')}__{source}__{stat}.png")
                D.layer_profiles(curves, out, unit, label, title=f"{dataset}: {label} per {unit}")
                lines += [figure_link(f"{dataset} {unit} {label}", out, link_base), ""]
        lines += _collapse_at_equal_epochs(index, dataset)
    if not lines:
        return ""
    return "\n".join(["### Collapse per layer and head: before training, action-only, KARMA", "", *lines])


def _probes(record: Record) -> list[dict]:
    return [h.get("probe") for h in record.history if h.get("stage", "main") == "main"]


def _collapse_at_equal_epochs(index: dict, dataset: str) -> list[str]:
    """The item encoder's per-epoch attention probe, action-only vs KARMA after the last epoch both
    runs of a seed reached (runs stop on patience at different epochs)."""
    action, karma = (index.get((dataset, *key), {}) for key in ATTENTION_PAIR)
    rows = []
    for seed in sorted(set(action) & set(karma)):
        a, k = _probes(action[seed]), _probes(karma[seed])
        e = min(len(a), len(k))
        if e == 0 or not a[e - 1] or not k[e - 1]:
            continue
        rows.append([seed, e, *(f"{a[e - 1][stat]:.4f} / {k[e - 1][stat]:.4f}"
                                for stat in ("first", "top3", "norm_entropy", "barcode"))])
    if not rows:
        return []
    return [f"**{dataset}, item encoder at equal epochs** (action-only / KARMA, the first 64 catalog items):", "",
            tabulate(rows, headers=["seed", "epoch", "first", "top-3", "norm. entropy", "barcode"],
                     tablefmt="github", disable_numparse=True), ""]


def render_attention_comparison(records: list[Record], *, suite: str, suite_version: str, figures_dir: Path,
                                link_base: Path, seed: int = 0) -> str:
    """Figure-2-style heat maps, action-only LLM vs KARMA side by side per dataset (one seed).

    Reads the per-run attention arrays saved next to each run's heat map, draws both on one colour
    scale, and links the PNGs relative to ``link_base`` (the leaderboard's folder).
    """
    index = _view_index(records, suite, suite_version)
    lines = []
    for dataset in sorted({key[0] for key in index}):
        pair = [index.get((dataset, *key), {}).get(seed) for key in ATTENTION_PAIR]
        if any(r is None for r in pair):
            continue
        for label, source in ATTENTION_SOURCES.items():
            paths = [r.get(f"diagnostics.{source}.heatmap") for r in pair]
            arrays = [Path(p).with_suffix(".npy") for p in paths if p]
            if len(arrays) != 2 or not all(a.exists() for a in arrays):
                continue
            out = Path(figures_dir) / "attention_compare" / f"{dataset.replace(' · ', '__').replace('/', '__')}__{source}.png"
            compare_heatmaps(np.load(arrays[0]), np.load(arrays[1]), ["action-only LLM", "KARMA"], out,
                             title=f"{dataset}: {label} attention, seed {seed}")
            lines += [f"**{dataset}, {label}**", "", figure_link(f"{dataset} {label} attention", out, link_base), ""]
    if not lines:
        return ""
    return "\n".join(["### Attention heat maps: action-only LLM vs KARMA", "",
                      "Item encoder: rows are catalog items, columns token positions (pooling attention, mean "
                      "over heads). Decoder: rows are test impressions, columns history positions (last = query "
                      "token); the final position's attention in the last layer. Vertical stripes shared by all "
                      "rows are the paper's barcode pattern.", "", *lines])
