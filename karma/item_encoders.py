"""Item encoders whose top layers train: a pretrained text model over cached lower-layer states.

The lower ``frozen`` blocks of the pretrained model never change, so their output states are computed
once per catalog and cached (:func:`karma.backbones.encode_item_states` with ``layer``); a training
step runs only the top blocks, adapted with LoRA (peft), over those states. With ``frozen = 0`` the
cache is the embedding layer's output and every block trains (the gpu preset): one code path.

- :class:`BertTop`, KARMA's item encoder (all-MiniLM-L6-v2 offline): the top blocks' output,
  mean-pooled over real tokens as sentence-transformers pools it, then a LayerNorm and an MLP into
  the LLM's embedding space. Its attention is what the collapse diagnostic reads.
- :class:`CausalTop`, HLLM's item LLM: a learnable ``[ITEM]`` token is appended after the truncated
  text, at the input of the trainable blocks, and its final-layer state is the item embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from karma import backbones


def _block_output(out):
    return out[0] if isinstance(out, tuple) else out


class _TopLayers(nn.Module):
    """Cached states of the frozen lower blocks + the trainable top blocks (shared bookkeeping)."""

    def __init__(self, blocks: list[nn.Module], states: torch.Tensor, mask: torch.Tensor, lora_rank: int,
                 lora_alpha: float, lora_targets: list[str]):
        super().__init__()
        if not blocks:
            raise ValueError("no trainable block left: train at least one layer of the item encoder")
        self.blocks = nn.ModuleList(blocks)
        for p in self.blocks.parameters():
            p.requires_grad_(lora_rank == 0)
        self.adapted = backbones.add_lora(self.blocks, lora_rank, lora_alpha, lora_targets) if lora_rank > 0 else []
        self.register_buffer("states", states, persistent=False)  # (N, L, H) fp16: the frozen blocks' output
        self.register_buffer("mask", mask, persistent=False)  # (N, L) True = real token


class BertTop(_TopLayers):
    """KARMA's item encoder: top BERT blocks over cached states, mean pooling, projection."""

    def __init__(self, encoder, tokenizer, texts: list[str], max_tokens: int, train_layers: int, out_dim: int,
                 lora_rank: int, lora_alpha: float, cache_path: Path | None):
        layers = list(encoder.encoder.layer)
        frozen = max(0, len(layers) - train_layers) if train_layers > 0 else 0
        states, mask = backbones.encode_item_states(texts, tokenizer, encoder, max_tokens, cache_path,
                                                    progress=False, layer=frozen)
        super().__init__(layers[frozen:], states, mask, lora_rank, lora_alpha, backbones.LORA_TARGETS["bert"])
        self.frozen = frozen
        self.heads = int(encoder.config.num_attention_heads)
        width = int(encoder.config.hidden_size)
        self.proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def _run(self, x: torch.Tensor, mask: torch.Tensor, blocks) -> torch.Tensor:
        keys = mask[:, None, None, :]  # (M, 1, 1, L) bool, True = attend (SDPA and eager both take it)
        additive = torch.zeros(keys.shape, dtype=x.dtype, device=x.device).masked_fill(~keys, torch.finfo(x.dtype).min)
        for block in blocks:
            x = _block_output(block(x, attention_mask=additive))
        return x

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items (M,) -> (M, D) item tokens."""
        mask = self.mask[items]
        x = self._run(self.states[items].float(), mask, self.blocks)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.proj(pooled.float())

    @torch.no_grad()
    def attention(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last trainable block's self-attention (M, heads, L, L) over the items' real tokens,
        computed from its own (LoRA-adapted) query and key projections, and the mask (M, L)."""
        mask = self.mask[items]
        x = self._run(self.states[items].float(), mask, self.blocks[:-1])
        attn = self.blocks[-1].attention.self
        m, length, width = x.shape
        split = (m, length, self.heads, width // self.heads)
        q = attn.query(x).view(split).transpose(1, 2)
        k = attn.key(x).view(split).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / (width // self.heads) ** 0.5
        return scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1), mask


class CausalTop(_TopLayers):
    """HLLM's item LLM: top decoder blocks over cached states, a learnable [ITEM] token after the text."""

    def __init__(self, item_llm, tokenizer, texts: list[str], max_tokens: int, train_layers: int,
                 lora_rank: int, lora_alpha: float, cache_path: Path | None):
        inner = item_llm.model
        layers = list(inner.layers)
        frozen = max(0, len(layers) - train_layers) if train_layers > 0 else 0
        padding_side, tokenizer.padding_side = tokenizer.padding_side, "right"
        try:
            states, mask = backbones.encode_item_states(texts, tokenizer, item_llm, max_tokens, cache_path,
                                                        progress=False, layer=frozen)
        finally:
            tokenizer.padding_side = padding_side
        super().__init__(layers[frozen:], states, mask, lora_rank, lora_alpha, backbones.LORA_TARGETS["llama"])
        self.frozen = frozen
        self.norm, self.rotary = inner.norm, inner.rotary_emb
        for p in self.norm.parameters():
            p.requires_grad_(False)
        width = int(item_llm.config.hidden_size)
        self.item_token = nn.Parameter(torch.randn(width) * 0.02)  # published init: N(0, 0.02)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items (M,) -> (M, H): the final-layer state of the [ITEM] token that follows each text."""
        mask = self.mask[items]
        x = self.states[items].float()
        m, length, width = x.shape
        lengths = mask.sum(1)  # the [ITEM] position: right after the truncated text
        x = torch.cat([x, x.new_zeros(m, 1, width)], dim=1)
        positions = torch.arange(length + 1, device=x.device)
        is_item = positions[None, :] == lengths[:, None]  # (M, L + 1)
        x = torch.where(is_item[..., None], self.item_token.to(x.dtype), x)
        valid = (positions[None, :] <= lengths[:, None])  # text + [ITEM]; later positions are padding
        causal = torch.tril(torch.ones(length + 1, length + 1, dtype=torch.bool, device=x.device))
        keys = causal[None] & valid[:, None, :]  # (M, L + 1, L + 1)
        additive = torch.zeros(keys.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~keys, torch.finfo(x.dtype).min)[:, None]
        position_ids = positions[None].expand(m, -1)
        rope = self.rotary(x, position_ids)
        for block in self.blocks:
            x = _block_output(block(x, attention_mask=additive, position_ids=position_ids, position_embeddings=rope))
        x = self.norm(x)
        return x[is_item].float()  # one row per item, in order
