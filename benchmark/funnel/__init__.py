"""Funnel evaluations of paper §3.5 (DESIGN.md §4): ranking (CTR feature), pre-ranking fusion, recall.

The paper reports three offline funnel numbers from Taobao: +0.25 CTR AUC (ranking), +1.86 HR@500
(pre-ranking) and +2.51 HR@5000 (recall). This module rebuilds each stage on the canonical
``SearchLog`` with public-data stand-ins for Taobao's production components, and measures the
same deltas. Every metric comes from ``benchmark.metrics`` (one tie rule, gAUC) and every interval from
``benchmark.stats`` (paired tests);
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

K of each stage
    Pre-ranking: ``prerank_k(N) = min(N, max(10, ceil(0.01 * N)))``, the paper's HR@500 at N = 50,000
    items, scaled with the catalog. Recall: not the paper's ratio (10 %, HR@5000), at which the lexical
    channel alone is saturated on adapted logs, but ``recall.unsaturated_k``: the deepest ``10 * 2^j``
    at which lexical recall alone stays at most 0.5 on validation, decided before any model.

Paired intervals
    Deltas between two systems on the same impressions get a 95 % interval from
    ``stats.paired_test(method="bootstrap")`` over *users*: each user's values are first
    averaged over that user's impressions (``per_user_mean``). The bootstrap's ``mean_diff`` is therefore
    the user-weighted mean difference; with leave-last-out splits (one test impression per user) it is
    identical to the impression-weighted difference reported as the headline number.
"""

from __future__ import annotations

from benchmark.data.schema import train_popularity
from benchmark.funnel.common import (
    candidate_mask,
    pessimistic_ranks,
    prerank_k,
)
from benchmark.funnel.prerank import (
    DEFAULT_GRID,
    choose_weight,
    choose_weight_blocks,
    fuse,
    hr_at_k_fused,
    prerank_funnel,
    preranker_scores,
    query_pop_scores,
    zscore_rows,
)
from benchmark.funnel.ranking import (
    CTRModel,
    compare_ctr,
    compare_ctr_cross_fitted,
    cross_fit_folds,
    cross_fit_predict,
    ctr_examples,
    ctr_feature_similarity,
    ctr_metrics,
    global_auc,
    train_ctr,
)
from benchmark.funnel.recall import (
    k_ladder,
    merge_channels,
    recall_funnel,
    recall_hr,
    topk_from_scores,
    unsaturated_k,
)
from benchmark.lexical import BM25Scorer
from benchmark.stats import paired_delta_over_users, per_user_mean

__all__ = [
    "BM25Scorer",
    "train_popularity",
    "prerank_k",
    "candidate_mask",
    "pessimistic_ranks",
    "per_user_mean",
    "paired_delta_over_users",
    "ctr_examples",
    "ctr_feature_similarity",
    "CTRModel",
    "global_auc",
    "train_ctr",
    "ctr_metrics",
    "compare_ctr",
    "compare_ctr_cross_fitted",
    "cross_fit_folds",
    "cross_fit_predict",
    "DEFAULT_GRID",
    "zscore_rows",
    "preranker_scores",
    "query_pop_scores",
    "fuse",
    "hr_at_k_fused",
    "choose_weight",
    "choose_weight_blocks",
    "prerank_funnel",
    "topk_from_scores",
    "merge_channels",
    "recall_hr",
    "recall_funnel",
    "k_ladder",
    "unsaturated_k",
]
