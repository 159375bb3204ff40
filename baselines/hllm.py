"""HLLM (Chen et al., ByteDance, arXiv 2409.12740), scaled down to KARMA's backbones and budgets.

Published design (and code, github.com/bytedance/HLLM): an item LLM reads
``"Compress the following sentence into embedding: "`` and the item's ``key: value`` fields, truncated,
then one learnable ``[ITEM]`` token whose final-layer state is the item embedding; a user LLM reads the
history's item embeddings causally and its output predicts the next item's embedding; the loss is
InfoNCE on cosine similarity against ``num_negatives`` random items shared by the whole batch, with a
learnable logit scale initialised to 1 / 0.07 and clamped to [1, 100], and negatives whose cosine with
the positive exceeds 0.99 masked as false negatives.

What is the same here: the prompt (fields: the catalog text, which holds title, brand, category path
and description once each), the ``[ITEM]`` token appended after truncation so its state is always the
item embedding, the cosine InfoNCE with random shared negatives, the false-negative threshold and the
logit scale's init and clamp. The user LLM is the LLM family's shared module (:mod:`karma.user_llm`):
the same pretrained decoder, all layers, LoRA-adapted, as KARMA's.

Deviations from the published code (forced by a 2-core CPU budget or by the shared harness):
- The item LLM is SmolLM2-135M (published: TinyLlama-1.1B / Baichuan2-7B), adapted with LoRA on its
  top ``item_train_layers`` blocks; the lower blocks are frozen and their states cached once per
  catalog, and the ``[ITEM]`` token enters at the first trainable block (published: the whole item
  LLM is fine-tuned and ``[ITEM]`` enters at the embedding layer). The ``gpu`` preset trains every
  block (``[ITEM]`` at the input, as published), through the same code.
- Training examples are impressions (each predicts its clicked item from its history), the examples
  KARMA sees, rather than every position of a packed sequence; in expectation the same next-item
  objective, and it lets HLLM take the optional query token like the other LLM models.
- The user LLM reads each item state rescaled to its own token embeddings' mean norm
  (``match_input_norm``, on by default; published: as they are). The item LLM's final-norm states have
  norm about 43, SmolLM2-135M's input embeddings 3.2: every history position was about 13x off the user
  LLM's input distribution, which the published full fine-tuning at 1B+ can absorb and two LoRA-adapted
  135M models could not (see "Why ``match_input_norm``" below). Scoring is cosine, so the item
  embedding is unchanged.
- ``num_negatives`` random negatives per batch (published: 512); the impression's exposed items are
  added only when ``use_exposures`` is on (off by default: not in the published loss).
- Published HLLM uses 1B-7B LLMs, 5-10 epochs and sequences of 50-150 items; here 135M, early
  stopping on validation and ``max_history`` items.
- The optimiser is the suite's one trainer for every model: AdamW at a constant lr (the search picks it),
  no weight decay, gradient norm clipped at 5 (published: a cosine schedule after a 10% linear warm-up,
  lr 1e-4, weight decay 0.01; ``scheduler_args`` in its ``overall/LLM_*.yaml``).

Why ``match_input_norm`` (issue 16): without it this HLLM barely learned in the cpu preset. On
unisrec/Scientific@1020users its first search trial (lr 3e-4) reached validation NDCG@10 0.0033 (the
action-only LLM: 0.03 after one epoch), and 25 AdamW steps on one batch of 128 impressions (lr 1e-3)
took its InfoNCE only from 5.91 to 5.06 (uniform: ln 257 = 5.55). With the item states at the user
LLM's input scale the same test goes 5.89 -> 4.62, and the same search trial reaches validation
NDCG@10 0.0981 (best epoch 19 of 22; the action-only LLM's best of its 4 trials: 0.0849). Other
measured leads, not acted on: the item embeddings are anisotropic at init (mean pairwise cosine
0.82), and the [ITEM] vector (published init N(0, 0.02)) enters the one trainable block next to cached
states of norm about 40.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from benchmark.data.schema import SearchLog
from karma import backbones
from karma.item_encoders import CausalTop
from karma.losses import action_negatives, gather_candidates
from karma.user_llm import UserLLM, UserLLMConfig, autocast, history_window, length_batches

PROMPT = "Compress the following sentence into embedding: "
MAX_LOGIT_SCALE = 100.0  # published clamp of exp(log-scale): [1, 100]
FALSE_NEGATIVE_COSINE = 0.99  # negatives this close to the positive are masked


@dataclass
class HLLMConfig(UserLLMConfig):
    item_train_layers: int = 1  # top blocks of the item LLM that train (LoRA); 0 = all (gpu preset)
    item_lora_rank: int = 16
    item_llm_tokens: int = 48  # prompt + fields tokens read by the item LLM, before the [ITEM] token
    num_negatives: int = 256  # random negatives shared by the batch (published: 512)
    init_logit_scale: float = 1 / 0.07  # published init of exp(log-scale)
    use_exposures: bool = False  # add exposed-but-unclicked items as negatives (not in the published loss)
    # Rescale each item state to the user LLM's mean input-embedding norm before the user LLM reads it
    # (published: fed as they are; see "Deviations"). Scoring is cosine, so the item embedding is unchanged.
    match_input_norm: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.num_negatives < 0 or not 1.0 <= self.init_logit_scale <= MAX_LOGIT_SCALE:
            raise ValueError(f"num_negatives must be >= 0 and init_logit_scale in [1, {MAX_LOGIT_SCALE:g}]")
        if self.item_llm_tokens < 1 or self.item_train_layers < 0 or self.item_lora_rank < 0:
            raise ValueError("item_llm_tokens must be >= 1; item_train_layers and item_lora_rank >= 0")


def item_prompt(text: str) -> str:
    """HLLM's item input: the prompt, then the item's fields (each once)."""
    return f"{PROMPT}{text}"


class _Impressions(Dataset):
    def __init__(self, rows: pd.DataFrame, max_history: int):
        self.rows = rows.reset_index(drop=True)
        self.lengths = [min(len(h), max_history) for h in self.rows["history"]]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return i


class HLLM(nn.Module):
    def __init__(self, log: SearchLog, config: HLLMConfig, cache_dir: Path | str | None = None):
        super().__init__()
        cfg = self.config = config
        cache_dir = Path(cfg.cache_dir or cache_dir or ".")
        self.n_items = log.n_items
        self.tokens_seen = 0
        self.user_llm = UserLLM(cfg, log, cache_dir)
        if cfg.tiny:
            tok, item_llm = self.user_llm.tokenizer, backbones.tiny_decoder(
                "qwen3" if cfg.preset == "gpu" else "llama", vocab_size=self.user_llm.tokenizer.vocab_size, seed=1)
        else:
            tok, item_llm = backbones.load_decoder(cfg.decoder, cache_dir, trust_remote_code=cfg.trust_remote_code)
        for p in item_llm.parameters():
            p.requires_grad_(False)
        prompts = [item_prompt(t) for t in log.catalog["text"].fillna("")]
        train_layers = 0 if cfg.preset == "gpu" else cfg.item_train_layers
        # the trained-block count names the file too: settings that freeze different layers keep their own caches
        key = (f"{log.fingerprint}_{'tiny' if cfg.tiny else cfg.decoder.replace('/', '_')}_{cfg.item_llm_tokens}"
               f"_top{train_layers}")
        self.item_encoder = CausalTop(item_llm, tok, prompts, cfg.item_llm_tokens, train_layers, cfg.item_lora_rank,
                                      cfg.lora_alpha, None if cfg.tiny else cache_dir / "hllm_items" / f"{key}.pt")
        if self.item_encoder.states.shape[-1] != self.user_llm.hidden_size:
            raise ValueError("HLLM feeds item embeddings to the user LLM directly: item and user LLMs need one width")
        self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))
        table = self.user_llm.decoder.get_input_embeddings().weight
        self.register_buffer("input_norm", table.detach().float().norm(dim=-1).mean(), persistent=False)
        self.info = {**self.user_llm.info,
                     "item_llm_frozen_layers": self.item_encoder.frozen,
                     "item_llm_trained_layers": len(self.item_encoder.blocks),
                     "trainable_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad)}

    def describe(self) -> dict:
        return {**self.info, "dtype": self.user_llm.precision()}

    @property
    def device(self) -> torch.device:
        return self.user_llm.device

    # --- the inference path ------------------------------------------------------------------
    def item_states(self, items: torch.Tensor) -> torch.Tensor:
        """(M, H) item embeddings: the [ITEM] token's final state."""
        with autocast(self.config, self.device):
            return self.item_encoder(items).float()

    def history_inputs(self, items: torch.Tensor) -> torch.Tensor:
        """(M, H) the user LLM's input for each history item: its item state, at the input scale if asked."""
        states = self.item_states(items)
        return F.normalize(states, dim=-1) * self.input_norm if self.config.match_input_norm else states

    def user_states(self, histories: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        mask = histories >= 0
        tokens = torch.zeros(*histories.shape, self.user_llm.hidden_size, device=histories.device)
        if mask.any():
            items, inverse = torch.unique(histories[mask], return_inverse=True)
            tokens = tokens.masked_scatter(mask[..., None], self.history_inputs(items).index_select(0, inverse))
        embeds, mask = self.user_llm.sequence(tokens, mask, query)
        if self.training:
            self.tokens_seen += int(mask.sum())
        with autocast(self.config, self.device):
            return self.user_llm(embeds, mask)[:, -1].float()

    # --- the RankingModel interface ----------------------------------------------------------
    def train_dataset(self, log: SearchLog, generator: torch.Generator) -> Dataset:
        self._train_rows = log.split("train").reset_index(drop=True)
        return _Impressions(self._train_rows, self.config.max_history)

    def collate(self, examples) -> dict[str, torch.Tensor]:
        return self.user_llm.batch(self._train_rows.iloc[list(examples)])

    def losses(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        cfg = self.config
        targets = batch["targets"]
        exposures = batch["exposures"] if cfg.use_exposures else batch["exposures"][:, :0]
        shared = torch.randint(0, self.n_items, (cfg.num_negatives,), generator=generator)  # one draw per batch
        shared = shared.to(targets.device)  # drawn on the CPU generator: the same draws on any device
        negatives, neg_mask = action_negatives(targets, torch.cat([exposures, shared.expand(len(targets), -1)], 1),
                                               in_batch=False)
        u = F.normalize(self.user_states(batch["histories"], batch["query"]), dim=-1)
        items, inverse = torch.unique(torch.cat([targets, negatives.flatten()]), return_inverse=True)
        v = F.normalize(self.item_states(items), dim=-1)
        v_pos, v_neg = gather_candidates(v, inverse, len(targets), negatives.shape)
        pos = (u * v_pos).sum(-1)
        neg = torch.einsum("br,bnr->bn", u, v_neg)
        with torch.no_grad():  # false negatives: items (nearly) identical to the positive
            neg_mask = neg_mask & (torch.einsum("br,bnr->bn", v_pos, v_neg) <= FALSE_NEGATIVE_COSINE)
        scale = self.log_scale.clamp(0.0, math.log(MAX_LOGIT_SCALE)).exp()
        # Mask after scaling: -inf * scale would give the scale a NaN gradient (0 * -inf).
        logits = (torch.cat([pos[:, None], neg], dim=1) * scale).masked_fill(
            torch.cat([torch.zeros_like(neg_mask[:, :1]), ~neg_mask], dim=1), float("-inf"))
        return {"infonce": F.cross_entropy(logits, torch.zeros_like(targets))}

    @torch.no_grad()
    def item_embeddings(self, log: SearchLog, batch_size: int = 512) -> torch.Tensor:
        ids = torch.arange(log.n_items, device=self.device)
        return torch.cat([F.normalize(self.item_states(ids[s:s + batch_size]), dim=-1)
                          for s in range(0, len(ids), batch_size)])

    @torch.no_grad()
    def user_embeddings(self, log: SearchLog, impressions: pd.DataFrame, batch_size: int = 256) -> torch.Tensor:
        u = torch.zeros(len(impressions), self.user_llm.hidden_size, device=self.device)
        for rows in length_batches(impressions, batch_size):
            batch = self.user_llm.batch(impressions.iloc[rows])
            u[torch.from_numpy(rows).to(self.device)] = F.normalize(self.user_states(batch["histories"], batch["query"]), dim=-1)
        return u

    @torch.no_grad()
    def decoder_attention(self, impressions: pd.DataFrame, window: int = 8, max_rows: int = 64):
        """The user LLM's self-attention, as for KARMA (``karma.model``)."""
        rows, window = history_window(impressions, window, self.config.max_history, max_rows)
        if rows is None:
            return None, 0
        batch = self.user_llm.batch(rows)
        mask = batch["histories"] >= 0
        tokens = torch.zeros(*mask.shape, self.user_llm.hidden_size, device=mask.device)
        tokens[mask] = self.history_inputs(batch["histories"][mask])
        embeds, mask = self.user_llm.sequence(tokens, mask, batch["query"])
        return self.user_llm.attentions(embeds, mask), window
