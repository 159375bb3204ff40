"""The funnel tables (paper §3.5), one per stage, from the funnel pass's results, followed by the
collapse diagnostics."""

from __future__ import annotations

import numpy as np
from tabulate import tabulate

from benchmark.records import Record
from benchmark.tables.collapse import (
    render_collapse_table,
)
from benchmark.tables.common import (
    _dig,
    _mean_cell,
    _node,
)


# The funnel's three stages, one table each: column -> path in a funnel result (benchmark.funnel.runs).
class Paired(str):
    """A path to a per-seed paired interval (a bootstrap over test users: {low, high, ...})."""


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
        means = [float(np.mean(values)) if values and None not in values else None
                 for values in ([_dig(x, p) for x in results] for p in path)]
        return "n/a" if None in means else " → ".join(f"{m:.4f}" for m in means)
    if isinstance(path, Paired):
        return _paired_count([_node(x, path) for x in results])
    return _mean_cell([_dig(x, path) for x in results], path.endswith(".K"))


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
           "seeds the paired 95% bootstrap interval of the Δ over test users lies above (↑) or below (↓) 0. A run "
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
    out += render_collapse_table(records, suite=suite, suite_version=suite_version, seeds=seeds)
    return "\n".join(out)
