"""KARMA's losses on hand-checked small cases."""

import math

import torch

from karma.losses import action_negatives, infonce, pairwise_ce, sample_exposures, text_nll


def test_pairwise_ce_matches_the_formula_by_hand():
    pos = torch.tensor([2.0, 0.0])
    neg = torch.tensor([[1.0, 3.0], [0.0, 9.0]])
    mask = torch.tensor([[True, True], [True, False]])
    # row 0: mean(-log s(1), -log s(-1)); row 1: -log s(0) = log 2 (the masked 9.0 is ignored)
    row0 = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    row1 = math.log(2.0)
    assert math.isclose(float(pairwise_ce(pos, neg, mask)), (row0 + row1) / 2, rel_tol=1e-6)


def test_pairwise_ce_skips_rows_without_negatives_and_keeps_a_gradient():
    pos = torch.tensor([1.0, 5.0], requires_grad=True)
    neg = torch.tensor([[0.0], [0.0]])
    mask = torch.tensor([[True], [False]])
    assert math.isclose(float(pairwise_ce(pos, neg, mask).detach()), math.log1p(math.exp(-1.0)), rel_tol=1e-6)
    none = pairwise_ce(pos, neg, torch.zeros_like(mask))
    none.backward()
    assert float(none.detach()) == 0.0 and pos.grad is not None


def test_infonce_by_hand():
    pos, neg = torch.tensor([0.5]), torch.tensor([[0.1, 0.2]])
    tau = 0.1
    expected = -math.log(math.exp(5) / (math.exp(5) + math.exp(1) + math.exp(2)))
    assert math.isclose(float(infonce(pos, neg, torch.ones(1, 2, dtype=torch.bool), tau)), expected, rel_tol=1e-6)
    # a masked negative drops out of the denominator
    only_first = -math.log(math.exp(5) / (math.exp(5) + math.exp(1)))
    assert math.isclose(float(infonce(pos, neg, torch.tensor([[True, False]]), tau)), only_first, rel_tol=1e-5)


def test_negatives_join_exposures_and_in_batch_clicks_minus_false_negatives():
    targets = torch.tensor([7, 3])
    exposures = torch.tensor([[1, 3, -1], [7, 2, 3]])  # row 1 lists its own click 3: a false negative
    ids, mask = action_negatives(targets, exposures, in_batch=True)
    assert ids.tolist() == [[1, 3, 0, 7, 3], [7, 2, 3, 7, 3]]
    assert mask.tolist() == [[True, True, False, False, True], [True, True, False, True, False]]
    ids, mask = action_negatives(targets, exposures, in_batch=False)
    assert ids.shape == (2, 3) and mask.tolist() == [[True, True, False], [True, True, False]]


def test_text_nll_is_the_mean_token_cross_entropy_ignoring_padding():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[0, 1, -100]])
    expected = -(math.log(0.5) + math.log(0.8)) / 2
    assert math.isclose(float(text_nll(logits, labels)), expected, rel_tol=1e-6)


def test_sample_exposures_keeps_real_items_and_covers_them_uniformly():
    exposures = torch.tensor([[5, 6, 7, 8], [9, 3, -1, -1], [-1, -1, -1, -1]])
    gen = torch.Generator().manual_seed(0)
    counts = {i: 0 for i in (5, 6, 7, 8)}
    for _ in range(400):
        out = sample_exposures(exposures, 2, gen)
        assert out.shape == (3, 2)
        assert set(out[1].tolist()) == {9, 3} and out[2].tolist() == [-1, -1]  # real before padding
        assert len(set(out[0].tolist())) == 2 and set(out[0].tolist()) <= set(counts)
        for i in out[0].tolist():
            counts[i] += 1
    assert all(150 < c < 250 for c in counts.values())  # each of the 4 is drawn about half the time
    assert torch.equal(sample_exposures(exposures, 0, gen), exposures)
