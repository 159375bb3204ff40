"""SASRec and the popularity floor: the loss learns, the model is causal, padding is inert."""

import numpy as np
import pandas as pd
import pytest
import torch

from baselines.popularity import Popularity, PopularityConfig
from baselines.sasrec import SASRec, SASRecConfig
from benchmark.seed import seed_everything


def _sequences(n_users=64, n_items=30, length=8):
    rng = np.random.default_rng(0)
    # a learnable pattern: each user walks the catalog with a fixed stride from a random start
    return [((rng.integers(n_items) + np.arange(length) * (1 + u % 3)) % n_items).astype(np.int64)
            for u in range(n_users)]


@pytest.mark.parametrize("loss", ["ce", "sampled"])
def test_loss_decreases_on_a_tiny_pattern(loss):
    gen = seed_everything(0)
    model = SASRec(30, SASRecConfig(hidden=16, dropout=0.0, loss=loss, n_negatives=10))
    batch = model.collate(_sequences())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        value = sum(model.losses(batch, gen).values())
        first = float(value.detach()) if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    assert float(value.detach()) < 0.6 * first


def test_states_are_causal_and_left_padding_is_inert():
    seed_everything(0)
    model = SASRec(30, SASRecConfig(hidden=16, dropout=0.0)).eval()
    seq = torch.tensor([[0, 0, 5, 6, 7, 8]])
    changed_future = torch.tensor([[0, 0, 5, 6, 7, 20]])
    with torch.no_grad():
        a, b = model.encode(seq), model.encode(changed_future)
        assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)  # earlier states never see later items
        assert not torch.allclose(a[:, -1], b[:, -1])
        wider = model.encode(torch.tensor([[0, 0, 0, 0, 5, 6, 7, 8]]))
    assert torch.allclose(a[:, -1], wider[:, -1], atol=1e-5)


def test_user_embeddings_use_the_last_max_len_items():
    seed_everything(0)
    model = SASRec(30, SASRecConfig(hidden=16, dropout=0.0, max_len=3)).eval()
    imp = pd.DataFrame({"history": [np.array([1, 2, 3, 4, 5]), np.array([3, 4, 5])]})
    emb = model.user_embeddings(None, imp)
    assert emb.shape == (2, 16) and torch.allclose(emb[0], emb[1], atol=1e-6)


def test_bad_loss_name_is_rejected():
    with pytest.raises(ValueError, match="'ce' or 'sampled'"):
        SASRec(10, SASRecConfig(loss="bce"))


def test_popularity_scores_by_train_count():
    class Log:
        catalog = pd.DataFrame({"train_count": [3, 0, 10]})

    model = Popularity(3, PopularityConfig())
    scores = (model.user_embeddings(Log, pd.DataFrame({"x": [1, 2]})) @ model.item_embeddings(Log).T).numpy()
    assert scores.shape == (2, 3) and (np.argsort(-scores[0]) == [2, 0, 1]).all()


@pytest.mark.parametrize("inner, width", [(0, 16), (48, 48)])
def test_inner_size_sets_the_feed_forward_width(inner, width):
    model = SASRec(30, SASRecConfig(hidden=16, inner_size=inner))
    assert {block.linear1.out_features for block in model.encoder.layers} == {width}
    with pytest.raises(ValueError, match="inner_size"):
        SASRecConfig(inner_size=-1)
