"""Table 2: generating the retrieval embedding, as training objectives (paired tests against
discriminative KARMA) and as a post-hoc readout with its mode-seeking vs mean-seeking analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmark.generators_eval import GENERATOR_LABELS, REFERENCE_LABELS
from benchmark.leaderboard import index_records
from benchmark.records import Record
from benchmark.stats import mean_ci
from benchmark.tables.common import (
    GENERATORS,
    MIXED_NOTE,
    REFERENCE,
    _abs,
    _diff,
    _fmt,
    _paired_views,
    _view_index,
    figure_link,
)
from karma.model import generator_blind_bound

OBJECTIVE_ROWS = {("karma_gen", f"objective_{name}"): label for name, label in (
    ("mse", "AR + MSE generates u"), ("diffusion", "diffusion (ε) generates u"),
    ("diffusion_x0", "diffusion (x0) generates u"), ("flow", "flow matching generates u"))}


def render_table2_objectives(records: list[Record], *, suite: str, suite_version: str,
                             views: list[tuple[str, str]], seeds: list[int], ks: tuple[int, int],
                             link_base: Path = Path(".")) -> str:
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
    out += _paired_views(index, views, REFERENCE, OBJECTIVE_ROWS, seeds, metrics, "objective",
                         "No objective has every seed (and KARMA) yet.")
    return "\n".join(out + objective_convergence(index, views) + objective_mode_mean(index, views, ks[0], link_base))


def above_chance(record: Record) -> tuple[float, float | None, bool | None]:
    """Test gAUC over the record's impressions: (mean, 95% t half-width, whether the interval lies above
    0.5, the AUC of a random ranking of the exposures). None without per-impression arrays."""
    try:
        auc = np.asarray(record.per_impression()["auc"], dtype=np.float64)
    except (FileNotFoundError, KeyError):
        return record.metric("gAUC"), None, None
    mean, half = mean_ci(auc[np.isfinite(auc)].tolist())
    return mean, half, None if half is None else bool(mean - half > 0.5)


def generator_loss(record: Record) -> tuple[float, float, float] | None:
    """(first epoch's, last epoch's generator training loss, the loss of the best affine generator that
    ignores h: :func:`karma.model.generator_blind_bound` x w_generator) of an objective run; None for
    discriminative KARMA or a record without per-epoch losses."""
    values = [h["generator"] for h in record.history if h.get("stage", "main") == "main" and "generator" in h]
    if not values or not record.variant.startswith("objective_"):
        return None
    weight = float(record.get("config.model_config.w_generator", 1.0))
    return values[0], values[-1], weight * generator_blind_bound(record.variant.removeprefix("objective_"))


def objective_convergence(index: dict, views: list[tuple[str, str]]) -> list[str]:
    """One line per objective run (and KARMA's): how its training ended, whether its generator learned to
    use h, and whether its test ranking is distinguishable from a random one. A generator head that never
    learned (too few updates before the patience stop) retrieves at chance; its delta then says nothing
    about the objective as such."""
    out = []
    for dataset, mode in views:
        rows = []
        for model, variant in [REFERENCE, *OBJECTIVE_ROWS]:
            for seed, rec in sorted(index.get((dataset, mode, model, variant), {}).items()):
                mean, half, above = above_chance(rec)
                within = rec.stopped_within_noise()
                selection = rec.data["selection"]
                loss = generator_loss(rec)
                rows.append([OBJECTIVE_ROWS.get((model, variant), "discriminative KARMA"), seed,
                             f"{selection.get('best_epoch')} / {selection.get('epochs_run')}",
                             selection.get("stopped_by") or "n/a",
                             "n/a" if within is None else "yes" if within else "no",
                             "n/a" if loss is None else f"{loss[0]:.3f} → {loss[1]:.3f}",
                             "n/a" if loss is None else f"{loss[2]:.3f}"
                             + ("" if loss[1] < loss[2] else " **not reached**"),
                             "n/a" if mean is None else f"{mean:.4f}" + ("" if half is None else f" ± {half:.4f}"),
                             "n/a" if above is None else "yes" if above else "**no: at chance**"])
        if rows:
            out += [f"### Convergence of the objective runs, {dataset} · {mode}", "",
                    "Selected / last epoch, what stopped the run, whether the patience stop came within the "
                    "run's own validation noise, the generator's training loss (first → last epoch) against "
                    "the most that the best affine generator ignoring h would score (`h-blind bound`: for "
                    "unit-variance isotropic targets, an upper bound for any targets of that scale; a loss "
                    "still above it means the head did no better than an affine map that ignores h), and the test gAUC over its "
                    "impressions (95% t interval): a run whose interval does not lie above 0.5 (a random "
                    "ranking of the exposures) retrieves at chance, so its row above measures an untrained "
                    "generator, not the objective.", "",
                    tabulate(rows, headers=["objective", "seed", "epoch (selected / run)", "stopped by",
                                            "stop within noise", "generator loss", "h-blind bound",
                                            "test gAUC", "above chance"],
                             tablefmt="github", disable_numparse=True), ""]
    return out


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
            figures.append(figure_link(f"{dataset} mode/mean", figure, link_base))
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


def _mode_mean_rows(dataset: str, runs: dict, seeds: list[int], k_hr: int,
                    key: str = "table2.analysis") -> tuple[list[list[str]], str | None]:
    """Rows of the mode/mean analysis stored under ``key`` (means over seeds) and the first seed's figure."""
    stats = [runs[s].get(key) for s in seeds]
    if not stats or any(a is None for a in stats):
        return [], None
    rows = []
    k = stats[0]["samples"]
    mean = lambda path: float(np.mean([runs[s].number(f"{key}.{path}") for s in seeds]))  # noqa: E731
    labels = {}
    for family in stats[0]["spread"]:  # the draws' summaries first (one draw, then their mean), then references
        labels[f"{family}_sample"] = f"{GENERATOR_LABELS.get(family, family)}, 1 sample"
        labels[f"{family}_mean"] = f"{GENERATOR_LABELS.get(family, family)}, mean of {k}"
    labels.update({name: REFERENCE_LABELS.get(name, name) for name in stats[0]["cos_target"] if name not in labels})
    for i, (name, label) in enumerate(labels.items()):
        family = name.rsplit("_", 1)[0]
        spread = f"{mean(f'spread.{family}'):.3f}" if name.endswith("_sample") else ""
        rows.append([dataset if i == 0 else "", spread, label, f"{mean(f'cos_target.{name}'):.3f}",
                     f"{mean(f'cos_centroid.{name}'):.3f}", f"{100 * mean(f'subset_metrics.{name}.HR@{k_hr}'):.2f}"])
    return rows, stats[0].get("figure")


def objective_mode_mean(index: dict, views: list[tuple[str, str]], k_hr: int, link_base: Path) -> list[str]:
    """The mode/mean analysis of the runs trained with a sampled generator objective, per view and
    objective, over the seeds that have landed (their count is shown)."""
    rows, figures = [], []
    for dataset, mode in views:
        for (model, variant), label in OBJECTIVE_ROWS.items():
            runs = {s: r for s, r in index.get((dataset, mode, model, variant), {}).items()
                    if r.get("objective_analysis") is not None}
            found, figure = _mode_mean_rows(f"{dataset} · {mode}", runs, sorted(runs), k_hr, "objective_analysis")
            for i, row in enumerate(found):
                rows.append([*row[:1], label if i == 0 else "", ", ".join(map(str, sorted(runs))) if i == 0 else "",
                             *row[1:]])
            if figure and Path(figure).exists():
                figures.append(figure_link(f"{dataset} {variant} mode/mean", figure, link_base))
    if not rows:
        return []
    return ["### Mode-seeking vs mean-seeking, in the runs trained with a sampled objective", "",
            "Per run, on the first test impressions: several draws of the generated retrieval embedding "
            "(independent noise), against the discriminative u the same run trained beside its generator head. "
            "`spread`: mean pairwise cosine distance between an impression's draws; `cos → target` / `cos → "
            "centroid`: cosine of one draw, of the normalised mean of the draws and of u to the clicked item and "
            f"to the centroid of plausible targets (training clicks under the same query); HR@{k_hr} of each on "
            "that subset. Means over the seeds listed (not yet every seed where fewer are listed).", "",
            tabulate(rows, headers=["view", "objective", "seeds", "spread", "embedding", "cos → target",
                                    "cos → centroid", f"HR@{k_hr}"], tablefmt="github", disable_numparse=True),
            "", *figures, ""]
