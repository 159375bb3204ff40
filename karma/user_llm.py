"""The user side shared by every model of the LLM family (KARMA, the action-only LLM, HLLM).

A pretrained decoder-only LM reads a sequence of continuous item tokens (left-padded history, then
an optional query token) and its final-layer states are the user's next-interest state. The
decoder keeps all its layers by default, so its LM head still reads the layer it was trained with
(the fidelity floor: a cut stack is checked against the whole one, see :func:`load_user_decoder`);
it is adapted with LoRA (peft), its token embeddings and LM head stay frozen, and on the CPU it
runs under bf16 autocast when ``autocast`` says so (fp32 weights, bf16 matmuls), its first
``fp32_blocks`` blocks excepted. Why bf16 and why one block in fp32 (``python -m
benchmark.preset_checks precision|gradients``, ``results/preset_*.json``):

- On 150 synthetic users, 4 epochs, bf16's loss curve stays within 9% (seed 0) and 20% (seed 1)
  of fp32's at the same seed, while fp32's own curves at seeds 0 and 1 differ by 38-57%; validation NDCG@10 differs by up to
  0.06 between precisions and by up to 0.05 between fp32 seeds. bf16 is 1.65x faster.
- SmolLM2's first blocks build its massive activations (the residual's largest entry grows from 25
  after block 0 to 920 after block 2). The gradients of the input side (early LoRA, item encoder,
  query adapter) are sensitive to bf16-sized perturbations of the activations even in fp32: noise
  of 2^-9 relative at block 3's input alone drops their cosine to the unperturbed gradient to 0.55.
  Keeping block 0 in fp32 raised that cosine from 0.43 to 0.98 on one batch and changed nothing on
  another (0.98 either way), for about 4% more time; keeping more blocks did not help (blocks 0-1:
  -0.64, 0-3: 0.55 on the second batch). So one block, and the training check decides, not this.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmark.data.schema import SearchLog
from benchmark.device import native_bf16, to_device
from benchmark.records import write_text_atomic
from karma import backbones

logger = logging.getLogger(__name__)

FIDELITY_TEXTS = 200  # catalog texts whose next-token loss checks the decoder at initialisation
FIDELITY_TOKENS = 32
AUTOCAST_CHOICES = ("bfloat16", "none", "auto")


@dataclass
class UserLLMConfig:
    """Settings of the user-side LLM and its training, shared by the LLM family's configs."""

    preset: str = "cpu"  # cpu | gpu: the same code path; gpu trains every item-encoder layer (see the models)
    decoder: str = "smollm2-135m"  # alias in karma.backbones (offline GGUF copy) or a Hugging Face id / path
    decoder_layers: int = 0  # 0 = all; N keeps the first N, only if the LM loss stays within the fidelity floor
    fidelity_floor: float = 0.10  # a cut decoder's init next-token loss may exceed the whole one's by this share
    lora_rank: int = 16  # LoRA rank on every projection of the decoder (0 = fine-tune the whole decoder)
    lora_alpha: float = 32.0
    autocast: str = "bfloat16"  # bfloat16 | none | auto: mixed precision of the backbones' matmuls (weights stay
    # fp32); auto = bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX), else none (see native_bf16)
    fp32_blocks: int = 1  # the first decoder blocks that compute in fp32 under autocast (module doc: why 1)
    item_encoder: str = "minilm"  # also encodes the queries (frozen, mean-pooled)
    item_tokens: int = 32  # item-encoder input tokens per item
    max_history: int = 20  # most recent history items fed to the LLM
    use_query: bool = True  # append a query token (search); False = pure next-item prediction
    lr: float = 1e-3  # AdamW learning rate (the tuning search varies it)
    max_epochs: int = 0  # joint-training epoch cap (overrides train.max_epochs when > 0)
    tiny: bool = False  # tests: random tiny backbones of the same architecture, no weights needed
    trust_remote_code: bool = False  # never by default
    cache_dir: str = ""  # where backbone caches go ("" = <cache root>/models)

    def __post_init__(self):
        if self.preset not in ("cpu", "gpu"):
            raise ValueError(f"preset must be 'cpu' or 'gpu', got {self.preset!r}")
        if self.autocast not in AUTOCAST_CHOICES:
            raise ValueError(f"autocast must be one of {', '.join(map(repr, AUTOCAST_CHOICES))}, got {self.autocast!r}")
        if min(self.decoder_layers, self.lora_rank, self.fp32_blocks, self.max_epochs) < 0 \
                or min(self.max_history, self.item_tokens) < 1:
            raise ValueError("decoder_layers, lora_rank, fp32_blocks and max_epochs must be >= 0; max_history and "
                             "item_tokens >= 1")
        if self.lr <= 0 or self.lora_alpha <= 0 or self.fidelity_floor < 0:
            raise ValueError(f"lr and lora_alpha must be > 0 and fidelity_floor >= 0, got lr={self.lr}, "
                             f"lora_alpha={self.lora_alpha}, fidelity_floor={self.fidelity_floor}")


def resolved_autocast(cfg: UserLLMConfig, device_type: str = "cpu") -> str:
    """``bfloat16`` or ``none``: what ``cfg.autocast`` means on a device of ``device_type`` here (``auto``:
    bf16 where that device computes it natively: the CPU's flags, or the GPU's own capability)."""
    if cfg.autocast == "auto":
        native = torch.cuda.is_bf16_supported() if device_type == "cuda" else native_bf16()
        return "bfloat16" if native else "none"
    return cfg.autocast


def slow_bf16_warning(cfg: UserLLMConfig) -> str | None:
    """A line for the user when ``cfg`` asks for bf16 on a CPU that only emulates it, else None."""
    if cfg.autocast != "bfloat16" or native_bf16():
        return None
    return ("bf16 autocast on a CPU without AVX512-BF16 or AMX: PyTorch emulates it, 3-10x slower than fp32 as "
            "measured (benchmark.device.native_bf16), and several times the estimate from records made where it "
            "was native; autocast=auto or none runs fp32 here, but its records are then fp32 ones, not "
            "comparable bit for bit with a bf16 table")


def autocast(cfg: UserLLMConfig, device: torch.device | str):
    """The mixed-precision context the backbones run under on ``device`` (a no-op when it resolves to
    ``none``)."""
    device_type = torch.device(device).type
    if resolved_autocast(cfg, device_type) == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def load_user_decoder(cfg: UserLLMConfig, texts: list[str], cache_dir: Path):
    """``(tokenizer, causal LM, info)``: the pretrained decoder, cut only within the fidelity floor.

    ``info`` records where the weights came from and the next-token loss of up to 200 catalog texts
    at initialisation (nats/token), read through the final layer and LM head that training uses."""
    if cfg.tiny:
        tok = backbones.tiny_tokenizer()
        lm = backbones.tiny_decoder("qwen3" if cfg.preset == "gpu" else "llama", vocab_size=tok.vocab_size)
        source = "tiny random decoder (tests)"
    else:
        tok, lm = backbones.load_decoder(cfg.decoder, cache_dir, trust_remote_code=cfg.trust_remote_code)
        spec = backbones.DECODERS.get(cfg.decoder)
        source = (f"{spec.hf_id}, dequantised from the {spec.gguf_file} GGUF in the {spec.package} package"
                  if spec else cfg.decoder)
    sample = [t for t in texts if t][:FIDELITY_TEXTS]
    total_layers = len(lm.model.layers)
    info = {"weights": source, "layers_total": total_layers}
    cache = None if cfg.tiny else Path(cache_dir) / "fidelity"

    def loss(n_layers: int) -> float | None:  # cached per (decoder, layers, texts): a run pays it once
        if not sample:
            return None
        key = hashlib.sha256("\0".join([cfg.decoder, str(n_layers), *sample]).encode()).hexdigest()[:16]
        path = cache / f"{key}.json" if cache else None
        if path is not None and path.exists():
            with contextlib.suppress(ValueError, KeyError, OSError):
                return float(json.loads(path.read_text())["loss"])
        value = backbones.next_token_loss(lm, tok, sample, FIDELITY_TOKENS)
        if path is not None:
            write_text_atomic(path, json.dumps({"decoder": cfg.decoder, "layers": n_layers, "loss": value}))
        return value

    full_loss = loss(total_layers)
    info["init_lm_loss_full"] = full_loss
    if 0 < cfg.decoder_layers < total_layers:
        lm = backbones.truncate_decoder(lm, cfg.decoder_layers)
        cut_loss = loss(cfg.decoder_layers)
        info["init_lm_loss"] = cut_loss
        if full_loss is not None and cut_loss > full_loss * (1 + cfg.fidelity_floor):
            raise ValueError(
                f"decoder_layers={cfg.decoder_layers}: next-token loss of the catalog's texts at init is "
                f"{cut_loss:.2f} nats/token against {full_loss:.2f} with all {total_layers} layers, beyond the "
                f"fidelity floor (+{cfg.fidelity_floor:.0%}); keep more layers (decoder_layers=0 keeps all)")
    else:
        info["init_lm_loss"] = full_loss
    info["layers_used"] = len(lm.model.layers)
    info["uniform_loss"] = float(np.log(lm.config.vocab_size))
    return tok, lm, info


def _left_padded(sequences: list, width: int) -> torch.Tensor:
    out = torch.full((len(sequences), width), -1, dtype=torch.long)
    for r, s in enumerate(sequences):
        if len(s):
            out[r, width - len(s):] = torch.from_numpy(np.array(s, dtype=np.int64))  # a copy: parquet arrays are read-only
    return out


def impression_batch(rows: pd.DataFrame, max_history: int, query_index: dict[str, int]) -> dict[str, torch.Tensor]:
    """Tensors of a set of impressions: histories (B, T) left-padded with -1, query ids (B,), targets
    (B,) and exposures (B, E) right-padded with -1."""
    hist = [h[-max_history:] for h in rows["history"]]
    histories = _left_padded(hist, max(1, max(len(h) for h in hist)))
    exp = [np.asarray(e, dtype=np.int64) for e in rows["exposures"]] if "exposures" in rows else []
    exposures = torch.full((len(rows), max([len(e) for e in exp] + [0])), -1, dtype=torch.long)
    for r, e in enumerate(exp):
        exposures[r, :len(e)] = torch.tensor(e)  # parquet arrays are read-only: copy
    query = torch.tensor([query_index.get(str(q), 0) for q in rows["query"]], dtype=torch.long)
    return {"histories": histories, "query": query, "targets": torch.tensor(rows["target"].to_numpy()),
            "exposures": exposures}


def length_batches(impressions: pd.DataFrame, batch_size: int):
    """Positions of ``impressions`` in batches of similar history length (stable order)."""
    order = np.argsort([len(h) for h in impressions["history"]], kind="stable")
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


class UserLLM(nn.Module):
    """The decoder over item tokens, with the query token and its adapter."""

    def __init__(self, cfg: UserLLMConfig, log: SearchLog, cache_dir: Path, query_encoder=None):
        """``query_encoder``: ``(tokenizer, encoder)`` that embeds the queries (frozen, mean-pooled);
        loaded from ``cfg.item_encoder`` when not given."""
        super().__init__()
        self.config = cfg
        texts = log.catalog["text"].fillna("").tolist()
        self.tokenizer, decoder, self.info = load_user_decoder(cfg, texts, cache_dir)
        for p in decoder.parameters():
            p.requires_grad_(False)
        if cfg.lora_rank > 0:
            self.info["lora"] = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha,
                                 "adapted": len(backbones.add_lora(decoder.model.layers, cfg.lora_rank, cfg.lora_alpha,
                                                                   backbones.LORA_TARGETS["llama"]))}
        else:  # full fine-tuning of the blocks; token embeddings and the (tied) LM head stay frozen
            for p in decoder.model.layers.parameters():
                p.requires_grad_(True)
        if cfg.fp32_blocks > len(decoder.model.layers):
            raise ValueError(f"fp32_blocks={cfg.fp32_blocks} but the decoder has {len(decoder.model.layers)} blocks")
        for block in decoder.model.layers[:cfg.fp32_blocks]:
            backbones.compute_in_fp32(block)
        if (warning := slow_bf16_warning(cfg)) is not None:
            logger.warning(warning)
        self.decoder = decoder
        queries = sorted(set(log.impressions["query"].astype(str)))
        self.query_index = {q: i for i, q in enumerate(queries)}
        self.reads_query = cfg.use_query and any(queries)  # mode none: no query token at all
        if self.reads_query:
            if query_encoder is None:
                query_encoder = (backbones.tiny_tokenizer(), backbones.tiny_item_encoder()) if cfg.tiny else \
                    backbones.load_item_encoder(cfg.item_encoder, trust_remote_code=cfg.trust_remote_code)
            tok, encoder = query_encoder
            states, mask = backbones.encode_item_states(queries, tok, encoder, 16, None, progress=False)
            pooled = (states.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            self.register_buffer("query_emb", pooled, persistent=False)  # (Q, H_q), frozen
            self.query_adapter = nn.Linear(pooled.shape[1], self.hidden_size)

    @property
    def hidden_size(self) -> int:
        return int(self.decoder.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.decoder.get_input_embeddings().weight.device

    def precision(self) -> str:
        """The record's dtype: what the decoder computes in on the device it is on now (the harness
        describes a model after moving it there, so ``autocast=auto`` names the GPU's choice on a GPU)."""
        cfg, device_type = self.config, self.device.type
        if resolved_autocast(cfg, device_type) == "none":
            label = "fp32"
        else:
            label = "fp32 weights, bf16 autocast"
            if cfg.fp32_blocks:
                label += f" (first {cfg.fp32_blocks} of {len(self.decoder.model.layers)} decoder blocks in fp32)"
        if cfg.autocast == "auto":
            label += f", chosen by autocast=auto on this {'GPU' if device_type == 'cuda' else 'CPU'}"
        return label

    def batch(self, rows: pd.DataFrame) -> dict[str, torch.Tensor]:
        """The impressions' tensors (``impression_batch``), on the decoder's device."""
        return to_device(impression_batch(rows, self.config.max_history, self.query_index), self.device)

    def sequence(self, tokens: torch.Tensor, mask: torch.Tensor, query_ids: torch.Tensor | None):
        """History tokens (B, T, D) with mask (B, T) -> the decoder input with the query token appended."""
        if self.reads_query and query_ids is not None:
            q = self.query_adapter(self.query_emb[query_ids]).to(tokens.dtype)[:, None]  # (B, 1, D)
            tokens = torch.cat([tokens, q], dim=1)
            mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=torch.bool, device=mask.device)], dim=1)
        return tokens, mask

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """embeds (B, L, D) left-padded, mask (B, L) -> final-layer states (B, L, D), after the final norm."""
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        return self.decoder.model(inputs_embeds=embeds, attention_mask=mask.long(),
                                  position_ids=positions).last_hidden_state

    def decode_states(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Right-padded sequences (a prefix, then text): plain positions."""
        positions = torch.arange(embeds.shape[1], device=embeds.device).expand(len(embeds), -1)
        return self.decoder.model(inputs_embeds=embeds, attention_mask=mask.long(),
                                  position_ids=positions).last_hidden_state

    def text_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.get_input_embeddings()(ids.clamp(min=0))

    @torch.no_grad()
    def attentions(self, embeds: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """Every layer's self-attention (n_layers, B, heads, L, L); the eager kernel for the call only
        (SDPA returns no weights)."""
        previous = self.decoder.config._attn_implementation
        self.decoder.set_attn_implementation("eager")
        try:
            out = self.decoder.model(inputs_embeds=embeds, attention_mask=mask.long(), output_attentions=True)
        finally:
            self.decoder.set_attn_implementation(previous)
        return np.stack([a.float().cpu().numpy() for a in out.attentions])


def history_window(impressions: pd.DataFrame, window: int, max_history: int, max_rows: int):
    """Impressions with at least ``window`` history items, cut to their last ``window`` (no padding, so
    positions line up across rows, for the attention probes); ``window`` shrinks to the longest history."""
    lengths = np.array([len(h) for h in impressions["history"]])
    window = int(min(window, max_history, lengths.max(initial=0)))
    if window < 1:
        return None, 0
    rows = impressions[lengths >= window].head(max_rows)
    return rows.assign(history=[h[-window:] for h in rows["history"]]), window
