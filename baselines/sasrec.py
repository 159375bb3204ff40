"""SASRec (Kang & McAuley, ICDM 2018), trained with full cross-entropy or sampled softmax.

How this differs from the original (and from SASRec.pytorch):
- Loss: softmax cross-entropy over the whole catalog (``loss="ce"``) or over the target plus
  ``n_negatives`` uniformly sampled items shared by the batch, with the logQ correction
  (``loss="sampled"``). The original's BCE with one negative is a known weak setting
  (Klenitskiy & Vasilev 2023, "Turning Dross Into Gold Loss"; eSASRec 2025).
- Embeddings are initialised N(0, 0.02) and the output layer is tied to the input item table;
  unscaled-by-sqrt(d) inputs (a N(0,1) * sqrt(d) init barely learns, see ../shared/OFFLINE.md).
- Positions are learned and counted back from the most recent item, so each batch is padded
  only to its own longest sequence (the original pads every sequence to ``max_len``).
- Pre-LayerNorm transformer blocks from ``torch.nn.TransformerEncoderLayer`` with a causal mask
  and learned absolute positions, as in the original's "pre-LN" reimplementations.
- Training uses each user's train sequence (the last ``max_len`` + 1 items before the valid
  event), predicting every next item; evaluation encodes the impression's history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from benchmark.data.schema import SearchLog


@dataclass
class SASRecConfig:
    hidden: int = 64  # embedding and model width (the paper's d)
    layers: int = 2  # transformer blocks
    # the feed-forward layer's inner width; 0 = hidden, as in the original SASRec (its point-wise
    # Conv1d keeps d) and SASRec.pytorch; RecBole's SASRec defaults to a separate inner_size of 256
    inner_size: int = 0
    heads: int = 1  # attention heads (the paper uses 1)
    dropout: float = 0.2  # on embeddings, attention and FFN
    max_len: int = 50  # history length seen by the model (the paper's n on Beauty)
    loss: str = "ce"  # ce | sampled
    n_negatives: int = 256  # sampled softmax only: shared uniform negatives per batch
    init_std: float = 0.02  # N(0, std) item/position embedding init
    lr: float = 2e-3  # AdamW learning rate (overrides train.lr)

    def __post_init__(self) -> None:  # checked when the config is composed, before any run
        if self.loss not in ("ce", "sampled"):
            raise ValueError(f"model.sasrec.loss must be 'ce' or 'sampled', got {self.loss!r}")
        if min(self.hidden, self.layers, self.heads, self.max_len, self.n_negatives) < 1 or self.hidden % self.heads:
            raise ValueError("model.sasrec: hidden, layers, heads, max_len and n_negatives must be >= 1, and heads "
                             f"must divide hidden (got hidden={self.hidden}, heads={self.heads})")
        if self.inner_size < 0:
            raise ValueError(f"model.sasrec.inner_size must be >= 0 (0 = hidden), got {self.inner_size}")
        if not 0.0 <= self.dropout < 1.0 or self.lr <= 0 or self.init_std <= 0:
            raise ValueError("model.sasrec: dropout must be in [0, 1), lr and init_std > 0")


class _UserSequences(Dataset):
    def __init__(self, sequences: list[np.ndarray]):
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.sequences[i]


class SASRec(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig):
        super().__init__()
        if config.loss not in ("ce", "sampled"):
            raise ValueError(f"SASRec loss must be 'ce' or 'sampled', got {config.loss!r}")
        self.config = config
        self.n_items = n_items
        self.item_emb = nn.Embedding(n_items + 1, config.hidden, padding_idx=0)  # 0 = padding, item i -> i+1
        self.pos_emb = nn.Embedding(config.max_len, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(config.hidden, config.heads, dim_feedforward=config.inner_size or config.hidden,
                                           dropout=config.dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(config.hidden)
        for emb in (self.item_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=config.init_std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    # --- the RankingModel interface -------------------------------------------------------
    def train_dataset(self, log: SearchLog, generator: torch.Generator) -> Dataset:
        train = log.split("train")
        last = train.sort_values("position").groupby("user").tail(1)  # each user's longest train prefix
        sequences = [np.append(h, t)[-(self.config.max_len + 1):] for h, t in zip(last["history"], last["target"],
                                                                                   strict=True)]
        return _UserSequences(sequences)

    def collate(self, examples: list[np.ndarray]) -> dict[str, torch.Tensor]:
        width = max(len(seq) for seq in examples)  # pad to the batch's longest: positions count from the end
        padded = np.zeros((len(examples), width), dtype=np.int64)
        for row, seq in enumerate(examples):
            padded[row, width - len(seq):] = seq + 1  # left-padded, shifted ids
        padded = torch.from_numpy(padded)
        return {"inputs": padded[:, :-1], "targets": padded[:, 1:]}  # (B, L) each; 0 = no target

    def losses(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        states = self.encode(batch["inputs"])  # (B, L, D)
        targets = batch["targets"]
        valid = targets > 0
        states, targets = states[valid], targets[valid] - 1  # (P, D), (P,)
        items = self.item_emb.weight[1:]  # (N, D)
        if self.config.loss == "ce":
            return {"ce": F.cross_entropy(states @ items.T, targets)}
        negatives = torch.randint(0, self.n_items, (self.config.n_negatives,), generator=generator)
        negatives = negatives.to(targets.device)  # drawn on the CPU generator: the same draws on any device
        # index_select, not items[idx]: its backward is deterministic with several threads (karma.losses)
        pos_logit = (states * items.index_select(0, targets)).sum(-1, keepdim=True)  # (P, 1)
        neg_logits = states @ items.index_select(0, negatives).T  # (P, K)
        # Uniform sampling: logQ correction is a constant shift of the negatives, log(K / N).
        neg_logits = neg_logits - np.log(self.config.n_negatives / self.n_items)
        neg_logits = neg_logits.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
        logits = torch.cat([pos_logit, neg_logits], dim=1)
        return {"sampled_softmax": F.cross_entropy(logits, torch.zeros_like(targets))}

    @torch.no_grad()
    def item_embeddings(self, log: SearchLog) -> torch.Tensor:
        return self.item_emb.weight[1:].detach().clone()

    @torch.no_grad()
    def user_embeddings(self, log: SearchLog, impressions: pd.DataFrame, batch_size: int = 1024) -> torch.Tensor:
        out = []
        histories = impressions["history"].tolist()
        for start in range(0, len(histories), batch_size):
            chunk = histories[start:start + batch_size]
            chunk = [hist[-self.config.max_len:] for hist in chunk]
            width = max(1, max(len(hist) for hist in chunk))
            padded = np.zeros((len(chunk), width), dtype=np.int64)
            for row, hist in enumerate(chunk):
                padded[row, width - len(hist):] = hist + 1
            out.append(self.encode(torch.from_numpy(padded).to(self.item_emb.weight.device))[:, -1])
        return torch.cat(out) if out else torch.zeros(0, self.config.hidden)

    # --- the network ------------------------------------------------------------------------
    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, L) shifted item ids, left-padded with 0 -> (B, L, D) states."""
        length = inputs.shape[1]
        # Positions count back from the most recent item (0 = last), so batches padded to different
        # widths give the same item the same position.
        positions = torch.arange(length - 1, -1, -1, device=inputs.device)
        x = self.dropout(self.item_emb(inputs) + self.pos_emb(positions)[None])  # (B, L, D)
        pad = inputs == 0  # (B, L)
        x = x * (~pad).unsqueeze(-1)
        # Causal attention over real items only. A padding query may attend to itself, so no row
        # is fully masked (which would give NaN); real queries never see padding, so the width
        # of the left padding does not change any real state.
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=inputs.device))  # (L, L)
        eye = torch.eye(length, dtype=torch.bool, device=inputs.device)
        allowed = causal[None] & (~pad[:, None, :] | eye[None])  # (B, L, L), query x key
        mask = (~allowed).repeat_interleave(self.config.heads, dim=0)  # (B * heads, L, L), True = blocked
        x = self.encoder(x, mask=mask)
        return self.final_norm(x)
