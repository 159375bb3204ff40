"""The one interface every model implements (DESIGN.md §3), and the trainer relies on.

A model is a ``torch.nn.Module`` that
- builds its own training examples from the canonical log (``train_dataset``), so that one
  generic trainer can shuffle, batch and step any model;
- returns its named training losses for a batch (``losses``); the trainer minimises their sum,
  and logs each term;
- exposes item embeddings for the whole catalog and user (next-interest) embeddings for a set of
  impressions; scoring is their dot product, done by the evaluator, never by the model.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import pandas as pd
import torch
from torch.utils.data import Dataset

from benchmark.data.schema import SearchLog


@runtime_checkable
class RankingModel(Protocol):
    def train_dataset(self, log: SearchLog, generator: torch.Generator) -> Dataset | None:
        """Training examples, or None for a model with nothing to train (e.g. popularity)."""

    def collate(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        """Batch a list of examples from ``train_dataset``."""

    def losses(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Named, already-weighted loss terms; the trainer minimises their sum."""

    def item_embeddings(self, log: SearchLog) -> torch.Tensor:
        """(n_items, D) embeddings of the whole catalog, row i = catalog item i."""

    def user_embeddings(self, log: SearchLog, impressions: pd.DataFrame) -> torch.Tensor:
        """(len(impressions), D) next-interest embeddings, one per impression, in order."""


# Capabilities the harness uses beyond ``RankingModel``; each is optional, checked with isinstance.

@runtime_checkable
class StagedTraining(Protocol):
    def stages(self, log: SearchLog, generator: torch.Generator) -> list[tuple[str, Dataset, int]]:
        """(name, examples, epochs) run before the selected training stage, without validation."""


@runtime_checkable
class ItemAttentionProbe(Protocol):
    def item_encoder_attention(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The item encoder's last trainable block: attention (M, heads, L, L) and token mask (M, L)."""


@runtime_checkable
class DecoderAttentionProbe(Protocol):
    def decoder_attention(self, impressions: pd.DataFrame, window: int = 8, max_rows: int = 64):
        """Every decoder layer's attention (n_layers, B, heads, L, L) on unpadded windows, and the window."""


@runtime_checkable
class GeneratorReadout(Protocol):
    def fit_generators(self, log: SearchLog, updates: int, batch_size: int = 256, lr: float = 1e-3,
                       seed: int = 0) -> dict[str, float]:
        """Fit the Table 2 generators on the trained model's frozen states; their final losses."""

    def generated_user_embeddings(self, log: SearchLog, impressions: pd.DataFrame, batch_size: int = 256,
                                  samples: int = 1) -> dict[str, torch.Tensor]:
        """Each generator's user embeddings (n, D), and (n, samples, D) under ``<name>_samples``."""


@runtime_checkable
class Describes(Protocol):
    def describe(self) -> dict:
        """Facts about the network for the run record (weights' source, dtype, init LM loss, ...)."""


class NothingToTrain:
    """The training half of ``RankingModel`` for models that only score (popularity, BM25, query_pop):
    no examples, so the trainer returns at once; batches and losses cannot be asked for."""

    def train_dataset(self, log: SearchLog, generator: torch.Generator) -> None:
        return None

    def collate(self, examples):
        raise NotImplementedError(f"{type(self).__name__} has no training batches")

    def losses(self, batch, generator):
        raise NotImplementedError(f"{type(self).__name__} has no training losses")
