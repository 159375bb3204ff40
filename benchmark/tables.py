"""The paper's tables, regenerated from run records (a section of leaderboard.md).

Table 1 reports each KARMA variant as a delta over the action-only LLM on the same dataset and
seed: for every metric, the per-seed difference (variant - action-only, same seed, same data),
then its mean and 95% Student-t interval over seeds. Paired by seed because both runs share the
seed's initialisation order and data; a variant or a baseline missing any planned seed is shown
as missing, never averaged in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmark import diagnostics as D
from benchmark.diagnostics import compare_heatmaps
from benchmark.generators_eval import GENERATOR_LABELS
from benchmark.leaderboard import index_records, paired_rows
from benchmark.records import Record
from benchmark.stats import mean_ci

# Paper Table 1 (KARMA, Taobao search), as printed: deltas over action-only (units as printed;
# the paper's cut-offs are HR@200 / HR@1000 on Taobao's catalog, ours are scaled, see below).
PAPER_TABLE1 = {
    "task1": {"gAUC": "+0.43", "HR@K1": "+4.81", "HR@K2": "+3.46", "JS@50": "-0.87"},
    "task2": {"gAUC": "+0.43", "HR@K1": "+19.19", "HR@K2": "+19.31", "JS@50": "+2.65"},
    "karma": {"gAUC": "+0.97", "HR@K1": "+22.57", "HR@K2": "+21.19", "JS@50": "+2.26"},
}
VARIANT_LABELS = {"task1": "+ Task 1: history -> text generation", "task2": "+ Task 2: h -> text reconstruction",
                  "karma": "KARMA: Task 1 + Task 2"}
BASELINE = ("action_llm", "default")
# Tasks 1 and 2 run after KARMA's semantic warm-up; this row is the warm-up alone, so that its effect is
# not credited to the tasks (not in the paper).
WARMUP = ("action_llm", "warmup")
WARMUP_LABEL = "+ semantic warm-up only (no Task 1 / 2)"
ROWS = {WARMUP: WARMUP_LABEL, **{("karma", v): label for v, label in VARIANT_LABELS.items()}}
REFERENCE = ("karma", "karma")  # "the best text-only KARMA" of the multimodal row and Table 2
VISUAL = ("karma_visual", "visual")
GENERATORS = ("karma_gen", "generators")
PAPER_VISUAL_ROW = ["+1.38", "+10.83", "+8.41", "+0.40"]  # paper Table 1, over the best text-only KARMA
SCALE = 100.0  # show metrics in points, like the paper


# A row whose runs (its own and its reference's) come from more than one CPU: bf16 rounds differently
# on native AMX and on emulation, so part of such a delta may be the machine, not the losses.
MIXED_DEVICES = "§"
MIXED_NOTE = (f"`{MIXED_DEVICES}`: the row's runs and its reference's ran on more than one kind of CPU (`environment.device` "
              "in the records); bf16 arithmetic differs between them, so part of that delta may be the machine.")


def _mark_devices(label: str, *runs: dict) -> str:
    """``label`` marked when the runs (``{seed: Record}`` dicts) span more than one device."""
    devices = {str((r.data.get("environment") or {}).get("device") or "unknown") for seeds in runs for r in seeds.values()}
    return f"{label} {MIXED_DEVICES}" if len(devices) > 1 else label


def _fmt(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "n/a"
    mean, half = mean_ci([SCALE * v for v in values])
    return f"{mean:+.2f}" if half is None else f"{mean:+.2f} ± {half:.2f}"


def _abs(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "n/a"
    mean, half = mean_ci([SCALE * v for v in values])
    return f"{mean:.2f}" if half is None else f"{mean:.2f} ± {half:.2f}"


def _view_index(records: list[Record], suite: str, suite_version: str) -> dict:
    """(view label "dataset · mode", model, variant) -> {seed: Record}: the tables are laid out per view."""
    index, _ = index_records(records, suite, suite_version)
    return {(f"{d} · {m}", model, variant): runs for (d, m, model, variant), runs in index.items()}


def render_table1(records: list[Record], *, suite: str, suite_version: str, seeds: list[int],
                  ks: tuple[int, int], datasets: list[str]) -> str:
    """Markdown for Table 1 over ``datasets`` (those with item text)."""
    index = _view_index(records, suite, suite_version)
    k1, k2 = ks
    metrics = ["gAUC", f"HR@{k1}", f"HR@{k2}", "JS@50"]
    paper_keys = ["gAUC", "HR@K1", "HR@K2", "JS@50"]
    out = ["## Table 1: decodability regularisation (deltas over the action-only LLM)", "",
           f"Suite `{suite}`. Each cell: mean ± 95% half-width over seeds {seeds} of the per-seed difference "
           "variant − action-only, in points (×100). Cut-offs: the paper's HR@200 / HR@1000 (a 1:5 ratio on "
           f"Taobao's catalog) are scaled to HR@{k1} / HR@{k2} here, the depths used by sequential-recommendation "
           "benchmarks on catalogs of 10^3–10^4 items. `tail`: test events whose target has at most 5 training "
           "interactions or none. The paper's row is its Table 1 as printed (Taobao search logs).", "",
           "Every run trains until validation stops improving (patience) or its epoch cap, never on the clock; "
           "the paired tests over test impressions are in the table after this one. Equal-epoch view: "
           "`Δ at equal epochs` is variant − action-only on the validation selection metric after the last joint "
           "epoch both runs reached, paired by seed, in points: what the heads do per epoch, apart from how many "
           f"epochs each run took. {MIXED_NOTE}", ""]
    runs_llm = [r for (ds, model, _), recs in index.items() if ds in datasets and model in ("action_llm", "karma")
                for r in recs.values()]
    at_end = [r for r in runs_llm if r.converged is False]
    unstable = sorted(f"{r.dataset} {r.model}:{r.variant} seed {r.seed}" for r in runs_llm if r.diverged)
    if runs_llm:
        rising = [r for r in runs_llm if r.rising_at_stop()]
        judged = [r for r in runs_llm if r.rising_at_stop() is not None]
        out += [f"Convergence: {len(at_end)} of {len(runs_llm)} runs in this table selected their last allowed epoch "
                f"(not converged; `selection` in each record); {len(unstable)} went unstable (training loss rose "
                f"above its first epoch's value: {', '.join(unstable) or 'none'}); {len(rising)} of the {len(judged)} "
                "stopped by patience with at least 6 epochs were still rising when they stopped (least-squares "
                "slope of validation over their last 6 epochs > 0): the rule stopped them on epoch-to-epoch noise, "
                "so their numbers understate what the model reaches and a delta between two such rows is partly "
                "that noise.", ""]
    for dataset in datasets:
        base = index.get((dataset, *BASELINE), {})
        rows = []
        complete_base = all(s in base for s in seeds)
        base_cells = [_abs([base[s].metric(m) for s in seeds]) if complete_base else
                      f"missing ({len([s for s in seeds if s in base])}/{len(seeds)})" for m in metrics]
        tail_cells = [_abs([base[s].metric(f"test_tail/{m}") for s in seeds]) if complete_base else "missing"
                      for m in metrics]
        rows.append([_mark_devices("action-only (absolute)", base), *base_cells, *tail_cells])
        for (model, variant), label in ROWS.items():
            runs = index.get((dataset, model, variant), {})
            if not (complete_base and all(s in runs for s in seeds)):
                done = len([s for s in seeds if s in runs])
                rows.append([label, *[f"missing ({done}/{len(seeds)})"] * (2 * len(metrics))])
                continue
            deltas = [[_diff(runs[s], base[s], m) for s in seeds] for m in metrics]
            tail = [[_diff(runs[s], base[s], f"test_tail/{m}") for s in seeds] for m in metrics]
            rows.append([_mark_devices(label, runs, base), *map(_fmt, deltas), *map(_fmt, tail)])
            if variant in PAPER_TABLE1:
                rows.append([f"  paper: {label}", *[PAPER_TABLE1[variant][k] for k in paper_keys], *[""] * len(metrics)])
        rows += _multimodal_rows(index, dataset, seeds, metrics)
        headers = ["variant", *metrics, *[f"tail {m}" for m in metrics]]
        out += [f"### {dataset}", "", tabulate(rows, headers=headers, tablefmt="github"), ""]
        out += _equal_epoch_view(index, dataset, seeds)
    return "\n".join(out)


def render_table1_paired(records: list[Record], *, suite: str, suite_version: str, views: list[tuple[str, str]],
                         seeds: list[int], ks: tuple[int, int]) -> str:
    """Table 1's deltas as paired tests over test impressions (seeds pooled), Holm over each view's table."""
    index, _ = index_records(records, suite, suite_version)
    metrics = ["gAUC", f"HR@{ks[0]}", f"HR@{ks[1]}"]
    out = ["## Table 1, paired: each variant − action-only over the test impressions", "",
           "Each model's per-impression values averaged over its seeds, then a paired t interval and p-value "
           "(`benchmark.stats`); gAUC's unit is the impression's AUC against its exposures. `*`: significant "
           f"at 0.05 after Holm's correction over the view's table. Points (×100). {MIXED_NOTE}", ""]
    return "\n".join(out + _paired_views(index, views, BASELINE, ROWS, seeds, metrics, "variant",
                                          "No variant has every seed (and action-only) yet."))


def _paired_views(index: dict, views: list[tuple[str, str]], reference: tuple[str, str], labels: dict,
                  seeds: list[int], metrics: list[str], header: str, empty: str) -> list[str]:
    """Per view, the paired-test table of each labelled (model, variant) against ``reference``."""
    out, cache = [], {}
    for dataset, mode in views:
        base = (dataset, mode, *reference)
        keys = [(dataset, mode, *row) for row in labels]
        rows = paired_rows(index, keys, {key: list(seeds) for key in [base, *keys]}, [base], metrics, cache)
        rows = [[_mark_devices(labels[(r[0], r[1])], index.get((dataset, mode, r[0], r[1]), {}), index.get(base, {})),
                 *r[2:]] for r in rows]
        out += [f"### {dataset} · {mode}", "",
                tabulate(rows, headers=[header, *[f"Δ{m}" for m in metrics]], tablefmt="github",
                         disable_numparse=True) if rows else empty, ""]
    return out


OBJECTIVE_ROWS = {("karma_gen", f"objective_{name}"): label for name, label in (
    ("mse", "AR + MSE generates u"), ("diffusion", "diffusion (ε) generates u"),
    ("diffusion_x0", "diffusion (x0) generates u"), ("flow", "flow matching generates u"))}


def render_table2_objectives(records: list[Record], *, suite: str, suite_version: str,
                             views: list[tuple[str, str]], seeds: list[int], ks: tuple[int, int]) -> str:
    """Table 2 as training objectives: each generator variant − discriminative KARMA, paired over the
    test impressions (seeds pooled), Holm over each view's table."""
    index, _ = index_records(records, suite, suite_version)
    metrics = ["gAUC", f"HR@{ks[0]}", f"HR@{ks[1]}"]
    out = ["## Table 2, as training objectives: generated retrieval embedding − discriminative KARMA", "",
           "KARMA trained with a generator head of its retrieval embedding (from h; target: the clicked item's "
           "embedding, a stop-gradient target; its gradient reaches the LLM) beside its losses, and retrieving "
           "with the generated embedding instead of u (one sample from a fixed noise stream for the sampled "
           "heads); same tuning selection (the action-only LLM's), stopping rule and seeds as KARMA. Paired "
           "t intervals over test impressions, Holm over the view's table; points (×100). The paper: diffusion "
           f"underperforms, AR + MSE does better. {MIXED_NOTE}", ""]
    return "\n".join(out + _paired_views(index, views, REFERENCE, OBJECTIVE_ROWS, seeds, metrics, "objective",
                                          "No objective has every seed (and KARMA) yet."))


def _main_curve(record: Record) -> list[float]:
    """Validation value after each joint-training ("main") epoch, from the record's selection history."""
    return [h["valid"] for h in record.history if h.get("stage", "main") == "main" and h.get("valid") is not None]


def equal_epoch_delta(run: Record, base: Record) -> tuple[int, float] | None:
    """(e, run's validation value minus base's after epoch e), e = the last epoch both reached; None when
    either has no curve. Runs stop on patience at different epochs: this separates what the heads do
    per epoch from how many epochs a run took."""
    a, b = _main_curve(run), _main_curve(base)
    if not a or not b:
        return None
    e = min(len(a), len(b))
    return e, a[e - 1] - b[e - 1]


def _equal_epoch_view(index: dict, dataset: str, seeds: list[int]) -> list[str]:
    """Per variant: main epochs run (variant / action-only) and the validation delta at equal epochs."""
    base = index.get((dataset, *BASELINE), {})
    rows = []
    for (model, variant), label in ROWS.items():
        runs = index.get((dataset, model, variant), {})
        pairs = [equal_epoch_delta(runs[s], base[s]) for s in seeds if s in runs and s in base]
        if len(pairs) < len(seeds) or any(p is None for p in pairs):
            continue
        epochs = np.mean([len(_main_curve(runs[s])) for s in seeds]), np.mean([len(_main_curve(base[s])) for s in seeds])
        metric = runs[seeds[0]].get("selection.metric", "valid")
        rows.append([label, f"{epochs[0]:.1f} / {epochs[1]:.1f}", ", ".join(str(e) for e, _ in pairs),
                     _fmt([d for _, d in pairs]), metric])
    if not rows:
        return []
    return ["Equal-epoch view (validation split):", "",
            tabulate(rows, headers=["variant", "epochs (variant / action-only)", "equal epoch per seed",
                                    "Δ at equal epochs", "metric"], tablefmt="github"), ""]


def _multimodal_rows(index: dict, dataset: str, seeds: list[int], metrics: list[str]) -> list[list[str]]:
    """The multimodal row: KARMA + visual reconstruction minus text-only KARMA, paired by seed."""
    runs, base = index.get((dataset, *VISUAL)), index.get((dataset, *REFERENCE), {})
    if not runs:
        return []
    label = "+ visual reconstruction (Δ over text-only KARMA)"
    if not all(s in runs and s in base for s in seeds):
        done = len([s for s in seeds if s in runs])
        return [[label, *[f"missing ({done}/{len(seeds)})"] * (2 * len(metrics))]]
    deltas = [[_diff(runs[s], base[s], m) for s in seeds] for m in metrics]
    tail = [[_diff(runs[s], base[s], f"test_tail/{m}") for s in seeds] for m in metrics]
    return [[_mark_devices(label, runs, base), *map(_fmt, deltas), *map(_fmt, tail)],
            ["  paper: + visual semantic reconstruction", *PAPER_VISUAL_ROW, *[""] * len(metrics)]]


def render_table2(records: list[Record], *, suite: str, suite_version: str, seeds: list[int],
                  ks: tuple[int, int], datasets: list[str], link_base: Path) -> str:
    """Table 2: generated retrieval embeddings vs the discriminative one, as deltas over text-only KARMA."""
    index = _view_index(records, suite, suite_version)
    k1, k2 = ks
    metrics = ["gAUC", f"HR@{k1}", f"HR@{k2}", "JS@50"]
    out = ["## Table 2: generating the retrieval embedding (deltas over text-only KARMA)", "",
           f"Suite `{suite}`. A `karma_gen` run trains KARMA exactly as `karma:karma` (its selected settings, "
           "same seed), then fits four generators on the frozen next-interest states h of the training split (a fixed "
           "number of updates, `funnel.generator_updates`), each producing the target item's retrieval embedding: a "
           "conditional diffusion head (DDPM, sampled with diffusers' DDIM, eta 0) whose network predicts the noise "
           "(the DDPM default) or the clean embedding x0, a conditional rectified-flow head (Euler sampler) and an MLP "
           "regressor (AR + MSE). Each is evaluated in place of u, on the same items and metrics. Cells: mean ± "
           f"95% half-width over seeds {seeds} of the per-seed difference to `karma:karma` (points). The paper "
           "prints no numbers in its text, only that diffusion underperforms and AR + MSE does better.", ""]
    analysis, figures = [], []
    for dataset in datasets:
        runs, base = index.get((dataset, *GENERATORS), {}), index.get((dataset, *REFERENCE), {})
        if not runs:
            continue
        if not all(s in runs and s in base for s in seeds):
            out += [f"### {dataset}", "", f"missing ({len([s for s in seeds if s in runs])}/{len(seeds)} seeds "
                    "of karma_gen, or text-only KARMA incomplete)", ""]
            continue
        rows = [["text-only KARMA, u (absolute)", *[_abs([base[s].metric(m) for s in seeds]) for m in metrics]],
                ["karma_gen, its own u", *[_fmt([_diff(runs[s], base[s], m) for s in seeds]) for m in metrics]]]
        for name, label in GENERATOR_LABELS.items():
            label = label if name == "ar_mse" else f"{label} generator (1 sample)"
            cells = []
            for m in metrics:
                vals = [runs[s].number(f"table2.{name}.{m}") for s in seeds]
                refs = [base[s].metric(m) for s in seeds]
                cells.append(_fmt([None if v is None or r is None else v - r for v, r in zip(vals, refs, strict=True)]))
            rows.append([label, *cells])
        out += [f"### {dataset}", "", tabulate(rows, headers=["retrieval embedding", *metrics], tablefmt="github"), ""]
        rows, figure = _mode_mean_rows(dataset, runs, seeds, k1)
        analysis += rows
        if figure and Path(figure).exists():
            figures.append(f"![{dataset} mode/mean]({os.path.relpath(Path(figure).resolve(), Path(link_base).resolve())})")
    if analysis:
        out += ["### Mode-seeking vs mean-seeking", "",
                "Per dataset, mean over seeds, on the first test impressions: `spread` is the mean pairwise cosine "
                "distance between a generator's samples for the same impression; `cos → target` / `cos → centroid` the "
                "cosine of a single sample, of the normalised mean of the samples, and of the AR + MSE "
                "output to the target item and to the centroid of plausible targets (training clicks under the same "
                f"query); HR@{k1} of each on that subset.", "",
                tabulate(analysis, headers=["dataset", "spread", "embedding", "cos → target", "cos → centroid",
                                            f"HR@{k1}"], tablefmt="github"), ""]
        out += figures
    return "\n".join(out)


def _mode_mean_rows(dataset: str, runs: dict, seeds: list[int], k_hr: int) -> tuple[list[list[str]], str | None]:
    """Rows of the mode/mean analysis (means over seeds) and the first seed's figure."""
    stats = [runs[s].get("table2.analysis") for s in seeds]
    if any(a is None for a in stats):
        return [], None
    rows = []
    k = stats[0]["samples"]
    mean = lambda path: float(np.mean([runs[s].number(f"table2.analysis.{path}") for s in seeds]))  # noqa: E731
    labels = {}
    for family in stats[0]["spread"]:  # the sampled generators this run had
        labels[f"{family}_sample"] = f"{GENERATOR_LABELS.get(family, family)}, 1 sample"
        labels[f"{family}_mean"] = f"{GENERATOR_LABELS.get(family, family)}, mean of {k}"
    labels["ar_mse"] = GENERATOR_LABELS["ar_mse"]
    for i, (name, label) in enumerate(labels.items()):
        family = name.rsplit("_", 1)[0]
        spread = f"{mean(f'spread.{family}'):.3f}" if name.endswith("_sample") else ""
        rows.append([dataset if i == 0 else "", spread, label, f"{mean(f'cos_target.{name}'):.3f}",
                     f"{mean(f'cos_centroid.{name}'):.3f}", f"{100 * mean(f'subset_metrics.{name}.HR@{k_hr}'):.2f}"])
    return rows, stats[0].get("figure")


def _diff(run: Record, base: Record, metric: str) -> float | None:
    a, b = run.metric(metric), base.metric(metric)
    return None if a is None or b is None else a - b


# The funnel's three stages, one table each: column -> path in a funnel result (benchmark.funnel.runs).
class Paired(str):
    """A path to a per-seed paired interval over the test impressions ({low, high, ...})."""


CTR_SETS = {"lex+pop": "ctr.lexical_popularity", "pop": "ctr.popularity"}
FUNNEL_STAGES = {
    "CTR": {column: path for name, ctr in CTR_SETS.items() for column, path in (
        (f"{name} AUC without → with", (f"{ctr}.without.AUC", f"{ctr}.with.AUC")),
        (f"{name} gAUC without → with", (f"{ctr}.without.gAUC", f"{ctr}.with.gAUC")),
        (f"{name} ΔgAUC", f"{ctr}.delta_gAUC"), (f"{name} paired", Paired(f"{ctr}.delta_gAUC_ci")))},
    "pre-rank": {"K": "prerank.K", "query_pop HR": "prerank.HR_query_pop", "pre-rank HR": "prerank.HR_pre",
                 "fused HR": "prerank.HR_fused", "Δ fused − pre-rank": "prerank.delta.delta",
                 "paired": Paired("prerank.delta")},
    "recall": {"K": "recall.K", "lexical HR": "recall.HR_lexical", "embedding HR": "recall.HR_embedding",
               "merged HR": "recall.HR_merged", "Δ merged − lexical": "recall.delta.delta", "paired": Paired("recall.delta")},
}
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


def _dig(data: dict, path: str):
    data = _node(data, path)
    return data if isinstance(data, (int, float)) and not isinstance(data, bool) else None


def _mean_cell(values: list, integer: bool = False) -> str:
    if not values or any(v is None for v in values):
        return "n/a"
    mean, half = mean_ci(values)
    if integer and len(set(values)) == 1:
        return str(int(values[0]))
    return f"{mean:.4f}" if not half else f"{mean:.4f} ± {half:.4f}"


def _paired_count(intervals: list) -> str:
    """How many seeds' paired intervals lie above and below 0, of the seeds present."""
    if not intervals or any(not isinstance(c, dict) or c.get("low") is None for c in intervals):
        return "n/a"
    up = sum(c["low"] > 0 for c in intervals)
    down = sum(c["high"] < 0 for c in intervals)
    return f"{up}↑ {down}↓ of {len(intervals)}"


def _funnel_cell(results: list[dict], path) -> str:
    """One funnel cell over the seeds' results: a (without, with) pair of means, a count of significant
    paired intervals, or a mean ± half-width."""
    if isinstance(path, tuple):
        means = [mean_ci(values)[0] if values and None not in values else None
                 for values in ([_dig(x, p) for x in results] for p in path)]
        return "n/a" if None in means else " → ".join(f"{m:.4f}" for m in means)
    if isinstance(path, Paired):
        return _paired_count([_node(x, path) for x in results])
    return _mean_cell([_dig(x, path) for x in results], path.endswith(".K"))


def _node(data: dict, path: str):
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def render_funnel(records: list[Record], funnel_results: list[dict], *, suite: str, suite_version: str,
                  seeds: list[int]) -> str:
    """The funnel stages per view and model (from the funnel pass's results), then the collapse
    diagnostics per view and model (from the run records); mean ± 95% half-width over the seeds present."""
    out = ["## Funnel evaluations and semantic-collapse diagnostics", "",
           "Funnel (paper §3.5), from each run's stored embeddings (`benchmark.funnel.runs`; "
           "query-blind models in every search mode). **CTR**: a DIN-style CTR model with vs without the "
           "history–candidate cosine of the model's item embeddings, cross-fitted: its rows are validation and "
           "test impressions (the embedding model trained on neither), and each test row is scored by a CTR "
           "model trained on the other fold of users (2 folds); `lex+pop` has the BM25 and popularity features "
           "(the exposures are BM25's top results, so BM25 is anti-correlated with the click by construction), "
           "`pop` only popularity. **Pre-rank**: HR@K (K = max(10, 1% of the catalog), the paper's HR@500 "
           "scaled) of a pre-ranker built on the `query_pop` rule (query-match tiers by popularity, plus a BM25 "
           "term whose weight is chosen on validation, so it is at least `query_pop` on validation) alone and "
           "fused with the model's score at the weight chosen on validation; Δ = fused − pre-rank. **Recall**: "
           "channels see only the request (the mode's visible query, the history); K is the largest 10·2^j at "
           "which the lexical channel alone recalls at most half of the validation targets; merged = fixed "
           "50/50 quotas; Δ = merged − lexical. Cells: mean (± 95% half-width over seeds); `paired`: in how many "
           "seeds the paired 95% interval of the Δ over the test impressions lies above (↑) or below (↓) 0. A run "
           "without stored embeddings has no row (BM25, whose vectors are vocabulary-sized, and runs recorded "
           "before embeddings were stored).", ""]
    wanted = {(r["dataset"], r["mode"]) for r in funnel_results if r.get("suite_version") == suite_version}
    for dataset, mode in sorted(wanted):
        groups: dict[tuple[str, str], dict[int, dict]] = {}
        for r in funnel_results:
            if (r["dataset"], r["mode"]) == (dataset, mode) and r.get("suite_version") == suite_version:
                groups.setdefault((r["model"], r["variant"]), {})[r["seed"]] = r
        for stage, columns in FUNNEL_STAGES.items():
            rows = [[f"{model}:{variant}", len(runs), *(_funnel_cell(list(runs.values()), path) for path in columns.values())]
                    for (model, variant), runs in sorted(groups.items())]
            out += [f"### {dataset} · {mode}: funnel, {stage}", "",
                    tabulate(rows, headers=["model", "seeds", *columns], tablefmt="github", disable_numparse=True), ""]
    index = _view_index(records, suite, suite_version)
    out += ["Collapse (paper §3.3), from each run record, on the layers that train: the item encoder's trainable "
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
    return "\n".join(out)


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
                lines += [f"![{dataset} {unit} {label}]({os.path.relpath(out.resolve(), Path(link_base).resolve())})", ""]
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
            lines += [f"**{dataset}, {label}**", "", f"![{dataset} {label} attention]"
                      f"({os.path.relpath(out.resolve(), Path(link_base).resolve())})", ""]
    if not lines:
        return ""
    return "\n".join(["### Attention heat maps: action-only LLM vs KARMA", "",
                      "Item encoder: rows are catalog items, columns token positions (pooling attention, mean "
                      "over heads). Decoder: rows are test impressions, columns history positions (last = query "
                      "token); the final position's attention in the last layer. Vertical stripes shared by all "
                      "rows are the paper's barcode pattern.", "", *lines])
