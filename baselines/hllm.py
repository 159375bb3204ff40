"""HLLM (Chen et al., ByteDance, arXiv 2409.12740), scaled down to KARMA's backbones and budgets.

Published design: an item LLM reads ``"Compress the following sentence into embedding: "`` followed
by the item's ``key: value`` fields and one learnable ``[ITEM]`` token, whose last hidden state is
the item embedding; a user LLM reads the history's item embeddings causally and its output at each
position predicts the next item embedding; the loss is InfoNCE on cosine similarity with a
learnable temperature (logit scale capped at 100) and negatives whose cosine with the positive
exceeds 0.99 are masked as false negatives.

Deviations from the published code (all forced by a 2-core CPU budget or by a shared harness):
- ``cpu`` preset: the item LLM is SmolLM2-135M, frozen (all layers), and the ``[ITEM]`` token is its
  EOS token rather than a learned one, so item embeddings are computed once and cached; a trainable
  linear adapter on top stands in for fine-tuning the item LLM. The ``gpu`` preset fine-tunes the
  item LLM with a learnable ``[ITEM]`` embedding, as published.
- The user LLM is the same truncated, pretrained SmolLM2 stack as KARMA's (``decoder_layers``).
- Training examples are impressions (each predicts its clicked item from its history), the same
  examples KARMA sees, rather than every position of a packed sequence; in expectation the same
  next-item objective, and it lets HLLM take the optional query token like the other LLM models.
- Negatives: the other impressions' clicks in the batch (HLLM samples from the batch too); the
  impression's exposed items are added when ``use_exposures`` is on (off by default: published).
- Published HLLM uses 1B-7B LLMs, 10 epochs and sequence length 50-150; here 135M, early stopping
  on validation and ``max_history`` items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data.schema import SearchLog
from karma import backbones
from karma.losses import action_negatives, gather_candidates
from karma.model import ContinuousTokenModel, KarmaConfig

PROMPT = "Compress the following sentence into embedding: "
MAX_LOGIT_SCALE = 100.0  # published cap on exp(learnable log-scale)
FALSE_NEGATIVE_COSINE = 0.99  # negatives this close to the positive are masked


@dataclass
class HLLMConfig(KarmaConfig):
    item_llm_layers: int = 0  # layers of the frozen item LLM (cpu preset; 0 = all)
    item_llm_tokens: int = 48  # prompt + fields tokens read by the item LLM
    init_logit_scale: float = 20.0  # exp(log-scale) at init (CLIP-style learnable temperature)
    use_exposures: bool = False  # add exposed-but-unclicked items as negatives (not in the published loss)
    w_task1: float = 0.0  # HLLM has no decodability losses
    w_task2: float = 0.0
    warmup_epochs: int = 0


def item_prompt(title: str, text: str) -> str:
    """HLLM's item input: the prompt, then ``key: value`` fields."""
    return f"{PROMPT}title: {title}. text: {text}"


class HLLM(ContinuousTokenModel):
    def __init__(self, n_items: int, config: HLLMConfig):
        if config.w_task1 or config.w_task2 or config.warmup_epochs:
            raise ValueError("HLLM has no decodability losses: keep w_task1 = w_task2 = warmup_epochs = 0")
        super().__init__(n_items, config)

    def prepare(self, log: SearchLog, cache_dir: Path) -> None:
        if self._prepared_for == log.fingerprint:
            return
        super().prepare(log, cache_dir)  # the user LLM, query encoder and retrieval heads
        cfg = self.config
        prompts = [item_prompt(t, x) for t, x in zip(log.catalog["title"], log.catalog["text"], strict=True)]
        hidden = self.decoder.config.hidden_size
        if cfg.tiny:
            tok, item_llm = backbones.tiny_tokenizer(), backbones.tiny_decoder(
                "qwen3" if cfg.preset == "gpu" else "llama", vocab_size=backbones.tiny_tokenizer().vocab_size)
        else:
            tok, item_llm = backbones.load_decoder(cfg.decoder, Path(cfg.cache_dir or cache_dir or '.'),
                                                   trust_remote_code=cfg.trust_remote_code)
        if cfg.preset == "cpu":
            if cfg.item_llm_layers > 0:
                item_llm = backbones.truncate_decoder(item_llm, cfg.item_llm_layers)
            key = f"{log.fingerprint}_{'tiny' if cfg.tiny else cfg.decoder}_{cfg.item_llm_layers}_{cfg.item_llm_tokens}"
            path = None if cfg.tiny else Path(cfg.cache_dir or cache_dir or '.') / "hllm_items" / f"{key.replace('/', '_')}.pt"
            self.register_buffer("item_cache", _frozen_item_embeddings(prompts, tok, item_llm, cfg.item_llm_tokens,
                                                                       path), persistent=False)
            self.item_llm = None
        else:
            batch = tok(prompts, truncation=True, max_length=cfg.item_llm_tokens, padding="max_length",
                        return_tensors="pt")
            self.register_buffer("item_llm_ids", batch["input_ids"], persistent=False)
            self.register_buffer("item_llm_mask", batch["attention_mask"].bool(), persistent=False)
            self.item_llm = item_llm
            self.item_token = nn.Parameter(torch.randn(item_llm.config.hidden_size) * 0.02)  # learnable [ITEM]
        in_dim = self.item_cache.shape[1] if cfg.preset == "cpu" else item_llm.config.hidden_size
        self.item_adapter = nn.Linear(in_dim, hidden)
        self.item_pool = None  # HLLM's item encoder is the item LLM, not KARMA's pooling
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)).log())

    def item_tokens(self, items: torch.Tensor, return_attention: bool = False):
        if return_attention:
            raise NotImplementedError("HLLM's item encoder is an LLM; read its attentions from item_llm")
        if self.item_llm is None:
            return self.item_adapter(self.item_cache[items])
        ids, mask = self.item_llm_ids[items], self.item_llm_mask[items]
        embeds = self.item_llm.get_input_embeddings()(ids)  # (M, L, H), right-padded
        lengths = mask.sum(1)
        embeds = torch.cat([embeds, torch.zeros_like(embeds[:, :1])], dim=1)
        embeds[torch.arange(len(items)), lengths] = self.item_token.to(embeds.dtype)  # [ITEM] after the text
        mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)
        mask[torch.arange(len(items)), lengths] = True
        states = self.item_llm.model(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state
        return self.item_adapter(states[torch.arange(len(items)), lengths].float())

    def losses(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        targets = batch["targets"]
        exposures = batch["exposures"] if self.config.use_exposures else batch["exposures"][:, :0]
        u, _ = self.user_vectors(batch["histories"], batch["query"])
        negatives, neg_mask = action_negatives(targets, exposures, in_batch=True)
        items, inverse = torch.unique(torch.cat([targets, negatives.flatten()]), return_inverse=True)
        v = self.item_vectors(items)
        v_pos, v_neg = gather_candidates(v, inverse, len(targets), negatives.shape)
        pos = (u * v_pos).sum(-1)
        neg = torch.einsum("br,bnr->bn", u, v_neg)
        with torch.no_grad():  # false negatives: items (nearly) identical to the positive
            neg_mask = neg_mask & (torch.einsum("br,bnr->bn", v_pos, v_neg) <= FALSE_NEGATIVE_COSINE)
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        # Mask after scaling: -inf * scale would give the scale a NaN gradient (0 * -inf).
        logits = (torch.cat([pos[:, None], neg], dim=1) * scale).masked_fill(
            torch.cat([torch.zeros_like(neg_mask[:, :1]), ~neg_mask], dim=1), float("-inf"))
        return {"infonce": F.cross_entropy(logits, torch.zeros_like(targets))}


@torch.no_grad()
def _frozen_item_embeddings(prompts: list[str], tok, item_llm, max_tokens: int, path: Path | None,
                            batch_size: int = 32) -> torch.Tensor:
    """Last hidden state at the final (EOS) token of each prompt, from the frozen item LLM; cached."""
    import hashlib

    key = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    if path is not None and path.exists():
        try:
            saved = torch.load(path, weights_only=True)
            if saved["key"] == key:
                return saved["emb"]
        except Exception:  # a corrupt cache is recomputed
            pass
    eos = tok.eos_token or tok.sep_token or ""
    out = []
    item_llm.eval()
    # Right padding: with a causal mask, real tokens never see the padding after them (left padding
    # gives fully masked rows, whose NaNs can leak into real positions through 0 * NaN).
    padding_side, tok.padding_side = tok.padding_side, "right"
    for s in range(0, len(prompts), batch_size):
        chunk = [p + eos for p in prompts[s:s + batch_size]]
        batch = tok(chunk, truncation=True, max_length=max_tokens, padding=True, return_tensors="pt")
        mask = batch["attention_mask"]
        last = mask.sum(1) - 1
        states = item_llm.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        out.append(states[torch.arange(len(chunk)), last].float())
    tok.padding_side = padding_side
    emb = torch.cat(out)
    if not torch.isfinite(emb).all():
        raise FloatingPointError("the frozen item LLM produced non-finite item embeddings")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"key": key, "emb": emb}, tmp)
        tmp.replace(path)
    return emb
