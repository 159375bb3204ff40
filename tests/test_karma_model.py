"""The continuous-token family on tiny random backbones: training, schedule, zero inference overhead."""

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from baselines.hllm import HLLM, HLLMConfig
from benchmark.data.schema import SearchLog
from benchmark.machine import PeakMemory
from benchmark.seed import seed_everything
from benchmark.trainer import TrainConfig, discard_checkpoint, train
from karma.model import VARIANTS, ContinuousTokenModel, KarmaConfig, effective_decode_fraction

WORDS = ["red", "blue", "mug", "lamp", "steel", "wood", "chair", "cup", "soft", "hard"]


def _log(n_items=12, n_users=10, seed=0) -> SearchLog:
    rng = np.random.default_rng(seed)
    catalog = pd.DataFrame({
        "item": np.arange(n_items), "item_id": [f"i{i}" for i in range(n_items)],
        "title": [f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]}" for i in range(n_items)],
        "text": [f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} {WORDS[(i * 7) % 10]}" for i in range(n_items)],
        "category": [[WORDS[i % 4]] for i in range(n_items)], "image": [None] * n_items,
        "brand": [WORDS[(i * 5) % 10] for i in range(n_items)],
        "train_count": np.ones(n_items, dtype=np.int64)})
    rows = []
    for u in range(n_users):
        seq = rng.permutation(n_items)[:6]
        for pos in range(1, 6):
            split = "test" if pos == 5 else "valid" if pos == 4 else "train"
            rows.append({"user": u, "timestamp": pos, "position": pos, "query": WORDS[seq[pos] % 4],
                         "history": seq[:pos].astype(np.int64), "target": int(seq[pos]),
                         "exposures": np.array([x for x in rng.permutation(n_items)[:4] if x != seq[pos]],
                                               dtype=np.int64), "split": split})
    return SearchLog("toy", catalog, pd.DataFrame(rows), n_users=n_users, has_text=True, fingerprint="toy")


def _model(variant="karma", preset="cpu", **overrides):
    cfg = dataclasses.replace(KarmaConfig(tiny=True, preset=preset, retrieval_dim=16, item_tokens=8, text_tokens=6),
                              **{**VARIANTS[variant], **overrides})
    seed_everything(0)
    return ContinuousTokenModel(_log(), cfg)


def _batch(model, log):
    return model.user_llm.batch(log.split("train").iloc[:8])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_returns_its_named_losses(variant):
    model = _model(variant)
    terms = model.losses(_batch(model, _log()), torch.Generator())
    expected = {"action"} | ({"task1"} if VARIANTS[variant]["w_task1"] else set()) | (
        {"task2"} if VARIANTS[variant]["w_task2"] else set())
    assert set(terms) == expected and all(torch.isfinite(v) for v in terms.values())


def test_karma_loss_decreases_on_a_tiny_config():
    model = _model("karma")
    log = _log()
    batch, gen = _batch(model, log), torch.Generator()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(30):
        loss = sum(model.losses(batch, gen).values())
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first


def test_schedule_runs_the_warmup_stage_before_joint_training():
    model = _model("karma", warmup_epochs=2)
    log = _log()
    calls = []
    result = train(model, log, TrainConfig(max_epochs=2, batch_size=4, progress=False), torch.Generator(),
                   validate=lambda m: calls.append("valid") or float(len(calls)), lr=1e-3, desc="t")
    stages = [(h["stage"], h["epoch"]) for h in result.history]
    assert stages == [("warmup", 1), ("warmup", 2), ("main", 1), ("main", 2)]
    assert "warmup" in result.history[0] and "task1" in result.history[2]  # warm-up decodes item text only
    assert calls == ["valid", "valid"]  # no validation during the warm-up
    # still improving at the epoch cap: recorded as not converged, and the stopping rule says why
    assert result.best_epoch == 2 and result.converged is False and result.stopped_by == "max_epochs"
    assert model.stages(log, torch.Generator()) and not _model("action_only").stages(log, torch.Generator())


def test_inference_path_is_identical_for_karma_and_action_only():
    log = _log()
    action, karma = _model("action_only"), _model("karma")
    infer_action, infer_karma = action.inference_state_dict(), karma.inference_state_dict()
    assert infer_action.keys() == infer_karma.keys()
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if not n.startswith("heads."))  # noqa: E731
    assert count(action) == count(karma)
    assert sum(p.numel() for p in karma.heads.parameters()) > 0 and len(action.heads) == 0
    # with the same inference weights, the two models score every impression identically
    karma.load_state_dict(infer_action, strict=False)
    action.eval(), karma.eval()
    imp = log.split("test")
    assert torch.equal(action.item_embeddings(log), karma.item_embeddings(log))
    assert torch.equal(action.user_embeddings(log, imp), karma.user_embeddings(log, imp))


def test_gpu_preset_trains_every_item_encoder_block_on_the_same_code_path():
    cpu, gpu = _model("karma"), _model("karma", preset="gpu")
    assert type(gpu.user_llm.decoder).__name__.startswith("Qwen3")
    assert (cpu.item_encoder.frozen, len(cpu.item_encoder.blocks)) == (1, 1)  # tiny BERT: 2 blocks, the top trains
    assert (gpu.item_encoder.frozen, len(gpu.item_encoder.blocks)) == (0, 2)  # gpu: every block trains
    opt = torch.optim.SGD([p for p in gpu.parameters() if p.requires_grad], lr=0.1)
    lora = [p for n, p in gpu.item_encoder.blocks.named_parameters() if "lora_B" in n]
    before = [p.detach().clone() for p in lora]
    sum(gpu.losses(_batch(gpu, _log()), torch.Generator()).values()).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, lora, strict=True))  # the encoder's adapters train


def test_lora_adapters_sit_only_where_configured():
    model = _model("karma")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    decoder = {n for n in trainable if n.startswith("user_llm.decoder.")}
    encoder = {n for n in trainable if n.startswith("item_encoder.blocks.")}
    assert decoder and all(".lora_" in n for n in decoder)  # the decoder trains through its adapters only
    assert encoder and all(".lora_" in n for n in encoder)
    n_blocks = len(model.user_llm.decoder.model.layers)
    assert len({n.split(".layers.")[1].split(".")[0] for n in decoder}) == n_blocks  # every block adapted
    assert not any("embed_tokens" in n or "lm_head" in n or ".norm." in n for n in trainable)
    full = _model("karma", lora_rank=0, encoder_lora_rank=0)
    names = [n for n, _ in full.named_parameters()]
    assert not any(".lora_" in n for n in names)  # rank 0: no adapter at all, the blocks train fully
    assert all(p.requires_grad for n, p in full.named_parameters() if n.startswith("user_llm.decoder.model.layers."))
    frozen = [n for n, p in full.named_parameters() if not p.requires_grad]
    assert any("embed_tokens" in n for n in frozen)  # token embeddings (tied LM head) stay frozen


@pytest.mark.parametrize("native", [True, False])
def test_autocast_auto_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, native):
    """auto follows the CPU (the smoke suite's setting); an explicit bfloat16 never changes, and it warns
    (in the suite's plan too) where bf16 is only emulated; the record names the precision that ran."""
    import karma.user_llm as U
    from benchmark.config import ModelsConfig
    from benchmark.runner.plan import precision_warnings
    from benchmark.runner.spec import RunSpec

    monkeypatch.setattr(U, "native_bf16", lambda: native)
    auto = _model("action_only", autocast="auto")
    assert auto.describe()["dtype"].startswith("fp32 weights, bf16 autocast" if native else "fp32,")
    assert "autocast=auto" in auto.describe()["dtype"]
    assert isinstance(U.autocast(auto.config, "cpu"), torch.autocast) is native
    assert isinstance(U.autocast(dataclasses.replace(auto.config, autocast="bfloat16"), "cpu"), torch.autocast)
    assert (U.slow_bf16_warning(KarmaConfig(autocast="bfloat16")) is None) is native
    assert U.slow_bf16_warning(KarmaConfig(autocast="auto")) is None  # auto never runs emulated bf16
    runs = [RunSpec(dataset="d", mode="coarse", model="action_llm", variant="default", seed=0, record="r.json")]
    cfg = type("Cfg", (), {"model": ModelsConfig(), "overwrite": False})()
    assert set(precision_warnings(cfg, runs)) == (set() if native else {"karma"})


@pytest.mark.parametrize("gpu_bf16", [True, False])
def test_autocast_auto_on_a_gpu_follows_the_gpu_not_the_cpu(monkeypatch, gpu_bf16):
    """On CUDA, auto asks the GPU (torch.cuda.is_bf16_supported), whatever the host CPU computes, and the
    record's dtype names the device the model was described on (checked without a GPU: the device is faked)."""
    import karma.user_llm as U

    monkeypatch.setattr(U, "native_bf16", lambda: not gpu_bf16)  # the host CPU says the opposite
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)
    model = _model("action_only", autocast="auto")
    cfg = model.config
    assert U.resolved_autocast(cfg, "cuda") == ("bfloat16" if gpu_bf16 else "none")
    assert U.resolved_autocast(cfg, "cpu") == ("none" if gpu_bf16 else "bfloat16")
    with warnings.catch_warnings():  # torch warns that it disables CUDA autocast on a machine without CUDA
        warnings.simplefilter("ignore", UserWarning)
        assert isinstance(U.autocast(cfg, "cuda"), torch.autocast) is gpu_bf16
    assert model.describe()["dtype"].endswith("autocast=auto on this CPU")
    monkeypatch.setattr(U.UserLLM, "device", property(lambda self: torch.device("cuda")))
    on_gpu = model.describe()["dtype"]
    assert on_gpu.endswith("autocast=auto on this GPU")
    assert on_gpu.startswith("fp32 weights, bf16 autocast" if gpu_bf16 else "fp32,")


def test_first_decoder_blocks_compute_in_fp32_as_configured_and_the_record_says_so():
    model = _model("karma", fp32_blocks=1)
    blocks = model.user_llm.decoder.model.layers
    assert [type(b).__name__.startswith("Fp32") for b in blocks] == [True] + [False] * (len(blocks) - 1)
    assert "(first 1 of 2 decoder blocks in fp32)" in model.describe()["dtype"]
    assert model.describe()["dtype"] == _model("action_only", fp32_blocks=1).describe()["dtype"]
    assert _model("karma", autocast="none").describe()["dtype"] == "fp32"
    with pytest.raises(ValueError, match="fp32_blocks"):
        _model("karma", fp32_blocks=len(blocks) + 1)


def test_infonce_option_and_bad_options():
    model = _model("action_only", action_loss="infonce")
    assert torch.isfinite(model.losses(_batch(model, _log()), torch.Generator())["action"])
    with pytest.raises(ValueError, match="pairwise"):
        KarmaConfig(action_loss="bce")


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_hllm_trains_with_infonce_and_a_capped_temperature(preset):
    seed_everything(0)
    log = _log()
    model = HLLM(log, HLLMConfig(tiny=True, preset=preset, item_tokens=8, item_llm_tokens=12, num_negatives=6))
    assert abs(float(model.log_scale.detach().exp()) - 1 / 0.07) < 1e-4  # published init
    model.train()
    terms = model.losses(_batch(model, log), torch.Generator())
    assert set(terms) == {"infonce"} and torch.isfinite(terms["infonce"])
    terms["infonce"].backward()
    assert torch.isfinite(model.log_scale.grad)  # masked logits must not give the scale a NaN gradient
    assert model.item_encoder.item_token.grad is not None  # the learnable [ITEM] token gets a gradient
    with torch.no_grad():
        model.log_scale.fill_(10.0)  # exp(10) >> 100: the scale must be capped
    assert torch.isfinite(model.losses(_batch(model, log), torch.Generator())["infonce"])
    assert model.item_embeddings(log).shape == (12, 32)
    with pytest.raises(ValueError, match="init_logit_scale"):
        HLLMConfig(init_logit_scale=1000.0)


def test_hllm_item_token_is_the_last_real_position_after_truncation(monkeypatch):
    """[ITEM] follows each item's truncated text: the last position the item LLM attends to, never
    inside the text, cut off with it, or among the pads after it."""
    import baselines.hllm

    monkeypatch.setattr(baselines.hllm, "PROMPT", "")  # the tiny tokenizer spells the prompt letter by letter
    log = _log()
    log.catalog["text"] = [" ".join([WORDS[i % 10]] * (1 + i)) for i in range(log.n_items)]  # 1..12 words
    model = HLLM(log, HLLMConfig(tiny=True, item_llm_tokens=6))
    enc = model.item_encoder
    # each text's token count after truncation, from the tokenizer itself (not the encoder's mask)
    n_text = [min(len(model.user_llm.tokenizer(t)["input_ids"]), 6) for t in log.catalog["text"]]
    assert max(n_text) == 6 and min(n_text) < 6  # long texts were cut, short ones were not
    seen = {}

    def grab(block, args, kwargs):  # what the first trainable block reads
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        seen["mask"] = kwargs["attention_mask"].detach().clone()

    hook = enc.blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    items = torch.arange(log.n_items)
    with torch.no_grad():
        before = enc(items).clone()
    hook.remove()
    x = seen["x"]
    attended = seen["mask"][:, 0].diagonal(dim1=-2, dim2=-1) == 0  # a position that sees itself is no pad
    item_token = enc.item_token.detach().to(x.dtype)
    for i, n in enumerate(n_text):
        assert attended[i].nonzero().flatten().tolist() == list(range(n + 1))  # the text, then [ITEM]
        assert (x[i] == item_token).all(-1).nonzero().flatten().tolist() == [n]  # [ITEM] there, only there
        assert torch.equal(x[i, :n], enc.states[i, :n].float())  # the text's states left as they are
    # the embedding is read there: it moves with the [ITEM] token, and one item alone gives the same row
    with torch.no_grad():
        enc.item_token.add_(1.0)
        after = enc(items)
    assert not torch.allclose(before, after)
    i = n_text.index(6)
    assert torch.allclose(enc(torch.tensor([i]))[0], after[i], atol=1e-5)


def test_hllm_history_items_enter_the_user_llm_at_its_input_scale():
    """match_input_norm rescales what the user LLM reads to its token embeddings' mean norm; the item
    embedding it is scored against, and the raw path (off), are left as they are."""
    log = _log()
    seed_everything(0)
    on = HLLM(log, HLLMConfig(tiny=True, item_llm_tokens=8))
    seed_everything(0)
    off = HLLM(log, HLLMConfig(tiny=True, item_llm_tokens=8, match_input_norm=False))
    table = on.user_llm.decoder.get_input_embeddings().weight.detach()
    items = torch.arange(log.n_items)
    with torch.no_grad():
        states = on.item_states(items)
        inputs = on.history_inputs(items)
        assert torch.allclose(inputs.norm(dim=-1), table.norm(dim=-1).mean().expand(log.n_items), rtol=1e-4)
        assert not torch.allclose(states.norm(dim=-1), inputs.norm(dim=-1), rtol=1e-2)  # the scales differ
        assert torch.allclose(torch.nn.functional.cosine_similarity(inputs, states, dim=-1),
                              torch.ones(log.n_items), atol=1e-5)  # only the length changes
        assert torch.allclose(off.history_inputs(items), off.item_states(items))
        assert torch.allclose(on.item_embeddings(log), off.item_embeddings(log), atol=1e-6)


def _image_log(tmp_path, with_image=lambda i: i % 2 == 0) -> SearchLog:
    """The toy log with a rendered PNG for some items (the others have none)."""
    from PIL import Image

    log = _log()
    paths = []
    for i in range(log.n_items):
        if with_image(i):
            path = tmp_path / f"i{i}.png"
            Image.new("RGB", (8, 8), color=(20 * i % 255, 80, 160)).save(path)
            paths.append(str(path))
        else:
            paths.append(None)
    log.catalog["image"] = paths
    return log


def _mm_model(log, tmp_path, **overrides):
    cfg = dataclasses.replace(KarmaConfig(tiny=True, retrieval_dim=16, item_tokens=8, text_tokens=6,
                                          head_hidden=32, generator_steps=4),
                              **{**VARIANTS["karma"], **overrides})
    seed_everything(0)
    return ContinuousTokenModel(log, cfg, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("head,condition", [("flow", "embedding"), ("diffusion", "history")])
def test_visual_and_generator_heads_are_train_only(tmp_path, head, condition):
    log = _image_log(tmp_path)
    model = _mm_model(log, tmp_path, w_visual=0.1, visual_head=head, visual_condition=condition, generators=True)
    assert model.has_image.tolist() == [i % 2 == 0 for i in range(log.n_items)]
    assert model.visual_info["encoder"] == "tiny-pixels" and model.visual_info["n_missing"] == log.n_items // 2
    terms = model.losses(_batch(model, log), torch.Generator())
    assert set(terms) == {"action", "task1", "task2", "visual"}  # generators are fitted after training
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    # zero overhead: the inference weights and scores are the action-only model's
    action = _mm_model(log, tmp_path, **VARIANTS["action_only"])
    assert model.inference_state_dict().keys() == action.inference_state_dict().keys()
    model.load_state_dict(action.inference_state_dict(), strict=False)
    model.eval(), action.eval()
    imp = log.split("test")
    assert torch.equal(model.user_embeddings(log, imp), action.user_embeddings(log, imp))
    assert torch.equal(model.item_embeddings(log), action.item_embeddings(log))


def test_visual_loss_ignores_targets_without_an_image(tmp_path):
    log = _image_log(tmp_path, with_image=lambda i: False)
    model = _mm_model(log, tmp_path, w_visual=0.1)
    visual = model.losses(_batch(model, log), torch.Generator())["visual"]
    assert float(visual.detach()) == 0.0 and visual.requires_grad  # exact zero, still attached to the head
    visual.backward()
    assert all(p.grad is not None for p in model.heads["visual"].parameters())


def test_generator_heads_leave_the_main_path_and_its_random_draws_unchanged(tmp_path):
    log = _image_log(tmp_path)
    plain, with_gen = _mm_model(log, tmp_path), _mm_model(log, tmp_path, generators=True)
    a = plain.losses(_batch(plain, log), torch.Generator().manual_seed(1))
    b = with_gen.losses(_batch(with_gen, log), torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same init, same decode masks, same action loss


def test_generated_user_embeddings_have_the_retrieval_shape(tmp_path):
    log = _image_log(tmp_path)
    model = _mm_model(log, tmp_path, generators=True)
    imp = log.split("test")
    out = model.generated_user_embeddings(log, imp, samples=3)
    assert out["diffusion"].shape == out["diffusion_x0"].shape == out["flow"].shape == out["ar_mse"].shape == (len(imp), 16)
    assert out["diffusion_samples"].shape == out["diffusion_x0_samples"].shape == out["flow_samples"].shape == (len(imp), 3, 16)
    assert torch.allclose(out["diffusion"].norm(dim=-1), torch.ones(len(imp)), atol=1e-5)
    assert _mm_model(log, tmp_path).generated_user_embeddings(log, imp) == {}


def test_partial_decoding_keeps_the_action_path_and_decodes_a_subset():
    log = _log()
    full, half = _model("karma"), _model("karma", decode_fraction=0.5)
    a = full.losses(_batch(full, log), torch.Generator().manual_seed(3))
    b = half.losses(_batch(half, log), torch.Generator().manual_seed(3))
    # h never sees the appended text (causal mask), so the action loss does not depend on decoding
    assert torch.allclose(a["action"], b["action"], atol=1e-5)
    assert set(b) == {"action", "task1", "task2"} and all(torch.isfinite(v) for v in b.values())


def test_generators_are_fitted_on_the_frozen_model_and_learn_the_target_embedding(tmp_path):
    log = _image_log(tmp_path)
    model = _mm_model(log, tmp_path, generators=True)
    before = {k: v.clone() for k, v in model.inference_state_dict().items()}
    rows = log.split("train")
    targets = model.item_vectors(torch.tensor(rows["target"].to_numpy())).detach()
    cos = lambda: float((model.generated_user_embeddings(log, rows)["ar_mse"] * targets).sum(-1).mean())  # noqa: E731
    start = cos()
    losses = model.fit_generators(log, updates=60 * -(-len(rows) // 16), batch_size=16)  # 60 epochs' worth
    assert set(losses) == {"gen_diffusion", "gen_diffusion_x0", "gen_flow", "gen_mse"}
    assert all(np.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="updates must be >= 1"):
        model.fit_generators(log, updates=0)
    assert cos() > max(0.5, start + 0.2)  # the regressor reproduces the targets it was fitted on
    after = model.inference_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model itself is untouched


def test_decode_budget_lowers_the_decoded_share_on_large_logs_only():
    cfg = KarmaConfig(decode_budget=8000)
    assert effective_decode_fraction(cfg, 1582) == 1.0  # small logs decode every impression
    assert effective_decode_fraction(cfg, 32000) == 0.25
    assert effective_decode_fraction(dataclasses.replace(cfg, decode_fraction=0.1), 32000) == 0.1
    assert effective_decode_fraction(KarmaConfig(), 10**6) == 1.0  # 0 = no cap
    log = _log()
    model = _model("karma", decode_budget=2)
    model.train_dataset(log, torch.Generator())
    assert model.decode_fraction == 2 / len(log.split("train"))


def test_training_stops_on_patience_never_on_the_clock_and_records_convergence(tmp_path):
    model, log, values = _model("action_only"), _log(), iter([0.5, 0.4, 0.3, 0.2, 0.1])
    cfg = TrainConfig(max_epochs=10, batch_size=4, patience=3, progress=False)
    assert not hasattr(cfg, "max_minutes") and not hasattr(cfg, "lr")  # no wall-clock rule, no unused lr
    result = train(model, log, cfg, torch.Generator(), validate=lambda m: next(values), lr=1e-3)
    assert (result.best_epoch, result.epochs_run, result.stopped_by, result.converged) == (1, 4, "patience", True)
    with pytest.raises(ValueError, match="max_epochs"):
        TrainConfig(max_epochs=-3)
    # with a floor, patience waits for it: the same falling curve trains 6 epochs, and keeps epoch 1
    model, values = _model("action_only"), iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01])
    floored = dataclasses.replace(cfg, min_epochs=6)
    result = train(model, log, floored, torch.Generator(), validate=lambda m: next(values), lr=1e-3)
    assert (result.best_epoch, result.epochs_run, result.stopped_by) == (1, 6, "patience")
    # ... also across a resume from the checkpoint of epoch 4, where patience alone would have stopped it
    path, curve = tmp_path / "floor.pt", [0.5, 0.4, 0.3, 0.2]

    def dies_at_epoch_5(m):
        if not curve:
            raise _Interrupt
        return curve.pop(0)

    with pytest.raises(_Interrupt):
        train(_model("action_only"), log, floored, torch.Generator(), dies_at_epoch_5, lr=1e-3, checkpoint=path,
              identity="floor")
    values = iter([0.1, 0.05])
    result = train(_model("action_only"), log, floored, torch.Generator(), lambda m: next(values), lr=1e-3,
                   checkpoint=path, identity="floor")
    assert (result.best_epoch, result.epochs_run, result.stopped_by) == (1, 6, "patience")
    with pytest.raises(ValueError, match="min_epochs"):
        TrainConfig(min_epochs=-1)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="warmup_ratio"):
        TrainConfig(warmup_ratio=1.0)


def test_bf16_autocast_follows_the_fp32_loss_curve():
    """The check behind autocast=bfloat16 on the tiny model: the same run in both precisions gives the
    same loss curve within 5% per step and near-identical trained embeddings (the real-model check is
    ``python -m benchmark.preset_checks precision``)."""
    log = _log()
    curves, embeddings = {}, {}
    for autocast in ("none", "bfloat16"):
        model = _model("karma", autocast=autocast)
        model.train()
        batch, gen = _batch(model, log), torch.Generator().manual_seed(0)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        curve = []
        for _ in range(15):
            loss = sum(model.losses(batch, gen).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(float(loss.detach()))
        curves[autocast] = np.array(curve)
        model.eval()
        embeddings[autocast] = model.item_embeddings(log)
    relative = np.abs(curves["bfloat16"] - curves["none"]) / curves["none"]
    assert relative.max() < 0.05, relative
    assert curves["bfloat16"][-1] < 0.8 * curves["bfloat16"][0]  # and it learns
    cosine = (embeddings["none"] * embeddings["bfloat16"]).sum(-1)
    assert float(cosine.min()) > 0.98


def test_capabilities_are_small_protocols_each_model_implements_as_far_as_it_can():
    from benchmark.model import (
        DecoderAttentionProbe,
        Describes,
        ItemAttentionProbe,
        RankingModel,
        StagedTraining,
    )

    karma, hllm = _model("karma"), HLLM(_log(), HLLMConfig(tiny=True))
    for model in (karma, hllm):
        assert isinstance(model, RankingModel) and isinstance(model, Describes)
        assert isinstance(model, DecoderAttentionProbe)  # both have a user-side decoder to probe
    assert isinstance(karma, ItemAttentionProbe) and isinstance(karma, StagedTraining)
    assert not isinstance(hllm, ItemAttentionProbe) and not isinstance(hllm, StagedTraining)
    attention, mask = karma.item_encoder_attention(torch.arange(4))
    assert attention.shape[:2] == (4, 2) and torch.allclose(attention.sum(-1), torch.ones(attention.shape[:3]))


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("schedule", [{}, {"lr_schedule": "cosine", "warmup_ratio": 0.3}])
def test_an_interrupted_training_resumes_from_its_checkpoint_to_the_same_bits(tmp_path, schedule):
    """Killed after epoch 2 of 4 (the checkpoint of epoch 2 survives), a fresh process resumes and ends
    with exactly the weights, history and selection of an uninterrupted run (a rate schedule included)."""
    log, cfg = _log(), TrainConfig(max_epochs=4, batch_size=4, patience=4, progress=False, **schedule)

    def run(checkpoint, stop_after=None):
        model = _model("karma", warmup_epochs=1)  # seeded build: the same init every time
        calls = []

        def validate(m):
            calls.append(1)
            if stop_after is not None and len(calls) > stop_after:
                raise _Interrupt  # dies during epoch 3's validation
            return float(sum(p.detach().float().sum() for p in m.parameters() if p.requires_grad))

        result = train(model, log, cfg, torch.Generator().manual_seed(0), validate, lr=1e-3,
                       checkpoint=checkpoint, identity="same settings")
        return model, result

    plain, plain_result = run(None)
    rates = [h.get("lr") for h in plain_result.history if h["stage"] == "main"]
    if schedule:  # 30% of the 4 epochs' steps warm up linearly, then a cosine decays to 0 at the last step
        assert 0 < rates[0] < 1e-3 and rates[1] < 1e-3 and rates[1] > rates[2] > rates[3] == 0.0, rates
    else:
        assert rates == [None] * 4  # suite v2: no scheduler, the optimizer's constant rate
    path = tmp_path / "ckpt.pt"
    with pytest.raises(_Interrupt), PeakMemory():
        run(path, stop_after=2)
    assert path.exists()
    blob = torch.load(path, weights_only=False)
    elapsed = blob["elapsed"]
    assert blob["peak_memory_mb"] > 0  # the run's sampler, as of its last checkpoint
    blob["peak_memory_mb"] = 1e7  # as if the interrupted process had peaked far above this one
    torch.save(blob, path)
    with PeakMemory() as memory:
        resumed, resumed_result = run(path)
    assert memory.peak_mb == 1e7  # the record's peak counts every process that trained the run
    assert resumed_result.checkpoint == path and path.exists()  # kept until the caller has written its record
    assert resumed_result.train_seconds > elapsed > 0  # the interrupted process's time is counted
    assert resumed_result.tokens_seen == plain_result.tokens_seen == plain.tokens_seen > 0  # and its tokens
    assert resumed_result.history == plain_result.history and resumed_result.best_epoch == plain_result.best_epoch
    a, b = plain.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # killed after training ended (while evaluating): a new process takes the finished run from its checkpoint,
    # without training or validating again
    again = _model("karma", warmup_epochs=1)
    finished = train(again, log, cfg, torch.Generator().manual_seed(0), lambda m: pytest.fail("validated again"),
                     lr=1e-3, checkpoint=path, identity="same settings")
    assert (finished.history, finished.best_epoch, finished.valid_value, finished.tokens_seen) == (
        plain_result.history, plain_result.best_epoch, plain_result.valid_value, plain_result.tokens_seen)
    assert all(torch.equal(a[k], again.state_dict()[k]) for k in a)
    discard_checkpoint(finished)
    assert not path.exists() and finished.checkpoint is None
    # a checkpoint of other settings is not resumed from
    with pytest.raises(_Interrupt):
        run(path, stop_after=1)
    model = _model("karma", warmup_epochs=1)
    other = train(model, log, cfg, torch.Generator().manual_seed(0), lambda m: 0.0, lr=1e-3,
                  checkpoint=path, identity="other settings")
    assert other.epochs_run == 4 and other.history[0]["stage"] == "warmup"


@pytest.mark.parametrize("objective", ["mse", "diffusion", "diffusion_x0", "flow"])
def test_a_generator_objective_trains_with_karma_and_produces_the_retrieval_embedding(objective):
    model = _model("karma", retrieval_objective=objective)
    log = _log()
    terms = model.losses(_batch(model, log), torch.Generator().manual_seed(0))
    assert set(terms) == {"action", "task1", "task2", "generator"} and torch.isfinite(terms["generator"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(2):  # a zero-initialised denoiser output passes no gradient at step 0; after a step it does
        opt.zero_grad()
        model.losses(_batch(model, log), torch.Generator().manual_seed(0))["generator"].backward()
        opt.step()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.user_llm.parameters() if p.requires_grad)
    imp = log.split("test")
    u = model.user_embeddings(log, imp)
    assert u.shape == (len(imp), 16) and torch.allclose(u.norm(dim=-1), torch.ones(len(imp)), atol=1e-5)
    assert torch.equal(u, model.user_embeddings(log, imp))  # a fixed noise stream: the same sample every call
    assert not torch.allclose(u, _model("karma").user_embeddings(log, imp))  # not the discriminative u
    drawn = model.objective_draws(imp, samples=3)
    if objective == "mse":  # one deterministic output: nothing to sample
        assert drawn is None
    else:  # the mode/mean analysis: draw 0 is what retrieval uses; the others differ; u is the discriminative one
        draws, own_u = drawn
        assert draws.shape == (len(imp), 3, 16) and torch.equal(draws[:, 0], u)
        assert not torch.allclose(draws[:, 1], draws[:, 0])
        assert torch.equal(own_u, model._user_states(imp, generate=False)[0]) and not torch.allclose(own_u, u)
    with pytest.raises(ValueError, match="retrieval_objective must be one of"):
        KarmaConfig(retrieval_objective="gan")


def test_a_generator_that_outputs_the_discriminative_embedding_recovers_its_hr():
    from benchmark.evaluate import evaluate

    log = _log()
    imp = log.split("test")
    plain, gen = _model("karma"), _model("karma", retrieval_objective="mse")
    gen.load_state_dict(plain.state_dict(), strict=False)  # the same network, a generator on top
    gen.retrieval_generator = plain.user_head  # an exact generator: it outputs the discriminative u
    a, b = (evaluate(m.item_embeddings(log).numpy(), m.user_embeddings(log, imp).numpy(), imp, ks=(1, 5)).metrics
            for m in (plain, gen))
    assert a["HR@5"] == b["HR@5"] and a["NDCG@5"] == pytest.approx(b["NDCG@5"])
    # and the MSE objective learns the target embedding it regresses onto
    rows = log.split("train")
    model = _model("karma", retrieval_objective="mse")
    h = model._user_states(rows)[1]
    target = model.item_vectors(torch.tensor(rows["target"].to_numpy())).detach()
    opt = torch.optim.Adam(model.retrieval_generator.parameters(), lr=1e-2)
    first = float(model._generator_loss(target, h).detach())
    for _ in range(200):
        loss = model._generator_loss(target, h)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * first


def test_attention_before_training_changes_nothing_about_the_training_that_follows():
    from benchmark.collapse_eval import attention_before_training
    from benchmark.config import FunnelConfig

    model = _model("karma")
    model.train()
    state = torch.get_rng_state()
    before = attention_before_training(model, _log(), FunnelConfig(attention_items=8))
    assert torch.equal(state, torch.get_rng_state()) and model.training  # random streams and mode restored
    assert 0 < before["item_encoder_attention"]["norm_entropy"] <= 1 and "heatmap" not in before["item_encoder_attention"]
    assert before["decoder_attention"]["layers"] and "heatmap" not in before["decoder_attention"]


def test_the_per_epoch_attention_probe_leaves_training_bit_identical():
    from benchmark.collapse_eval import epoch_probe
    from benchmark.config import FunnelConfig

    log, cfg = _log(), TrainConfig(max_epochs=2, batch_size=4, patience=5, progress=False)
    runs = []
    for probe in (None, epoch_probe(log, FunnelConfig(probe_items=6))):
        model = _model("karma")
        result = train(model, log, cfg, torch.Generator().manual_seed(0), validate=lambda m: 0.0, lr=1e-3, probe=probe)
        runs.append((result.history, model.item_embeddings(log)))
    (plain, emb_plain), (probed, emb_probed) = runs
    assert [{k: v for k, v in h.items() if k != "probe"} for h in probed] == plain
    assert torch.equal(emb_plain, emb_probed) and all(0 < h["probe"]["norm_entropy"] <= 1 for h in probed[-2:])


def test_hllm_item_llm_trains_only_its_top_blocks_through_lora_adapters():
    log = _log()
    model = HLLM(log, HLLMConfig(tiny=True, item_llm_tokens=8, item_train_layers=1, item_lora_rank=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    item_llm = {n for n in trainable if n.startswith("item_encoder.blocks.")}
    assert len(model.item_encoder.blocks) == 1 and model.item_encoder.frozen >= 1  # the lower blocks are cached
    assert item_llm and all(".lora_" in n for n in item_llm)  # the top block adapts through LoRA only
    assert {n for n in trainable if n.startswith("item_encoder.")} == item_llm | {"item_encoder.item_token"}
    full = HLLM(log, HLLMConfig(tiny=True, item_llm_tokens=8, item_train_layers=1, item_lora_rank=0))
    assert not any(".lora_" in n for n, _ in full.item_encoder.named_parameters())  # rank 0: the top block trains fully
    assert all(p.requires_grad for n, p in full.named_parameters() if n.startswith("item_encoder.blocks."))


def test_the_decoded_target_is_path_brand_title_and_its_digit_share_is_recorded(monkeypatch):
    from karma import backbones
    from karma.model import semantic_text

    # most general first, so a cut at text_tokens drops the title's part numbers before the semantics
    assert semantic_text("PORTER-CABLE 74000 saw", "Porter", ["Tools", "Saws"]) == \
        "Tools > Saws. Porter. PORTER-CABLE 74000 saw"
    assert semantic_text("mug", None, []) == "mug" and semantic_text("mug", " ", None) == "mug"
    assert _model("karma").info["target_text"]["digit_token_share"] == 0.0  # the toy catalog has no digit
    numbers = [str(n) for n in range(100, 400)]
    real = backbones.tiny_tokenizer
    monkeypatch.setattr(backbones, "tiny_tokenizer", lambda words=backbones.TINY_WORDS: real([*words, *numbers]))
    log = _log()
    log.catalog["title"] = [f"{100 + i} {200 + i}" for i in range(log.n_items)]
    log.catalog["brand"] = [str(300 + i) for i in range(log.n_items)]
    cfg = dataclasses.replace(KarmaConfig(tiny=True, retrieval_dim=16, item_tokens=8, text_tokens=30), **VARIANTS["karma"])
    share = ContinuousTokenModel(log, cfg).info["target_text"]["digit_token_share"]
    assert 0.3 < share < 1.0  # digits dominate; the separators and the category word do not count


def test_a_sampled_objective_run_gets_the_mode_mean_analysis_against_its_own_u(tmp_path):
    from types import SimpleNamespace

    from benchmark.config import RunConfig
    from benchmark.generators_eval import objective_analysis

    log, cfg = _log(), RunConfig()
    imp = log.split("test")
    run = SimpleNamespace(mode="coarse", variant="objective_flow", seed=0)
    model = _model("karma", retrieval_objective="flow").eval()
    items = model.item_embeddings(log).numpy()
    out = objective_analysis(model, log, imp, items, cfg, run, tmp_path)
    n = min(len(imp), cfg.funnel.generator_impressions)
    assert out["impressions"] == n and out["samples"] == cfg.funnel.generator_samples and out["spread"]["flow"] > 0
    assert set(out["cos_target"]) == set(out["subset_metrics"]) == {"flow_sample", "flow_mean", "u"}
    assert Path(out["figure"]) == tmp_path / "mode_mean" / f"{log.name}__coarse__objective_flow__seed0.png"
    assert Path(out["figure"]).is_file()
    assert objective_analysis(_model("karma", retrieval_objective="mse"), log, imp, items, cfg, run, tmp_path) is None
    assert objective_analysis(_model("karma"), log, imp, items, cfg, run, tmp_path) is None


def test_a_kept_run_trains_on_under_a_looser_stopping_rule_and_again_under_a_stricter_one(tmp_path):
    """A finished run's checkpoint, of the same settings but another stopping rule (its lineage): a rule that
    would have trained at least as far resumes from it, to the bits of a run trained under that rule from
    the start; a rule that would have stopped sooner trains from epoch 1."""
    from benchmark.trainer import reaches

    log = _log()
    strict = TrainConfig(max_epochs=10, batch_size=4, patience=1, progress=False)
    loose = dataclasses.replace(strict, patience=3)
    curve = [0.1, 0.3, 0.2, 0.25, 0.4, 0.35, 0.3, 0.2, 0.1, 0.1]  # patience 1 stops after 3, patience 3 after 8

    def run(config, start=0, **checkpointing):
        model, epochs = _model("action_only"), iter(curve[start:])
        result = train(model, log, config, torch.Generator().manual_seed(0), lambda m: next(epochs), lr=1e-3,
                       **checkpointing)
        return model, result

    kept = tmp_path / "strict.pt"
    _, first = run(strict, checkpoint=kept, identity="strict", lineage="L")
    assert (first.epochs_run, first.best_epoch, first.checkpoint) == (3, 2, kept)
    extended, extended_result = run(loose, start=3, checkpoint=tmp_path / "loose.pt", identity="loose",
                                    lineage="L", earlier=[kept])
    plain, plain_result = run(loose)
    assert (plain_result.epochs_run, plain_result.best_epoch) == (8, 5)
    assert extended_result.history == plain_result.history and extended_result.best_epoch == 5
    assert all(torch.equal(v, extended.state_dict()[k]) for k, v in plain.state_dict().items())
    # patience 1 would have stopped the 8-epoch run after epoch 3: its checkpoint is not this rule's run
    assert not reaches(strict, extended_result.history, 8) and reaches(loose, first.history, 3)
    assert not reaches(dataclasses.replace(loose, max_epochs=2), first.history, 3)  # nor is one past a lower cap
    _, again = run(strict, checkpoint=tmp_path / "strict2.pt", identity="strict2", lineage="L",
                   earlier=[tmp_path / "loose.pt"])
    assert again.history == first.history
    # a checkpoint of another lineage (other settings besides the rule) is never extended
    _, other = run(loose, checkpoint=tmp_path / "other.pt", identity="other", lineage="M", earlier=[kept])
    assert other.history == plain_result.history and other.history[0]["epoch"] == 1
