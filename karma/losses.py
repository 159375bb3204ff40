"""KARMA's training losses as pure functions (hand-checked in tests/test_karma_losses.py).

Action alignment (paper §2.3, Eq. 5; the equation was lost in extraction, this is our reading of
"pairwise cross-entropy ranking the click above exposed-but-unclicked and in-batch negatives"):

    s(u, i) = scale * cos(u, e_i)
    L_action = 1/|B| sum_b  1/|N_b| sum_{n in N_b}  -log sigmoid( s(u_b, e_{y_b}) - s(u_b, e_n) )

where N_b = the impression's exposed-but-unclicked items (hard negatives) united with the other
impressions' clicked items in the batch (in-batch negatives), minus any copy of the click y_b.
Each pair is a binary cross-entropy on the score difference (RankNet / BPR form), averaged per
impression so that impressions with many exposures do not dominate.

The ``infonce`` option (the paper's comparison point, "temperature-scaled InfoNCE"):

    L_infonce = 1/|B| sum_b  -log( exp(s_b+ / tau) / (exp(s_b+ / tau) + sum_{n in N_b} exp(s_bn / tau)) )

with s = cos and tau the temperature.

Decodability (Task 1, Task 2, the warm-up) is the LLM's own next-token cross-entropy on the target
item's text tokens (``text_nll``), restricted to a vocabulary when one is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_ce(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor) -> torch.Tensor:
    """Pairwise cross-entropy. pos (B,), neg (B, N) scores, neg_mask (B, N) True = a real negative.

    Rows without any negative contribute nothing; returns 0 (with grad) when no row has one.
    """
    pair = F.softplus(-(pos[:, None] - neg))  # (B, N) = -log sigmoid(pos - neg)
    pair = pair * neg_mask
    count = neg_mask.sum(1)  # (B,)
    has = count > 0
    if not has.any():
        return (pos * 0).sum()
    return (pair.sum(1)[has] / count[has]).mean()


def infonce(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled InfoNCE over the click and its negatives; pos (B,), neg (B, N) cosines."""
    logits = torch.cat([pos[:, None], neg.masked_fill(~neg_mask, float("-inf"))], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))


def action_negatives(targets: torch.Tensor, exposures: torch.Tensor, in_batch: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative item ids (B, E [+ B]) and their mask for each impression.

    targets (B,) item ids; exposures (B, E) item ids padded with -1. In-batch negatives are the
    other rows' clicks; any negative equal to the row's own click is masked (a false negative).
    """
    ids = exposures
    if in_batch:
        ids = torch.cat([exposures, targets[None, :].expand(len(targets), -1)], dim=1)  # (B, E + B)
    mask = (ids >= 0) & (ids != targets[:, None])
    return ids.clamp(min=0), mask


def text_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, S, V) already aligned with labels (B, S), -100 = ignore."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def gather_candidates(v: torch.Tensor, inverse: torch.Tensor, n_targets: int, negatives_shape) -> tuple:
    """Rows of the unique candidates' vectors ``v`` for the positives and the (B, N) negatives.

    ``index_select``, not ``v[idx]``: the backward of advanced indexing (``index_put_`` with
    accumulate) adds with parallel atomics on the CPU when torch has more than one thread, so the
    sum order, and the gradient's low bits, change from call to call (two same-seed trainings with
    2 threads differed); ``index_select``'s backward adds in index order, as one thread does.
    """
    v_pos = v.index_select(0, inverse[:n_targets])  # (B, R)
    v_neg = v.index_select(0, inverse[n_targets:]).view(*negatives_shape, -1)  # (B, N, R)
    return v_pos, v_neg


def sample_exposures(exposures: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """A uniform random subset of at most ``k`` of each row's exposed items (B, E), -1 padded: the hard
    negatives of one training step (``k`` = 0 or >= E: all of them). Real items are kept before padding."""
    if k <= 0 or k >= exposures.shape[1]:
        return exposures
    keys = torch.rand(exposures.shape, generator=generator).to(exposures.device)  # drawn on the CPU: any device
    keys = keys.masked_fill(exposures < 0, 2.0)  # padding sorts last
    return exposures.gather(1, torch.sort(keys, dim=1, stable=True).indices[:, :k])
