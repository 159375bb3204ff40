"""The measurements behind the ``cpu`` preset's choices (a benchmark script, not a test).

    python -m benchmark.preset_checks fidelity --dataset unisrec/Scientific --data-dir ../shared/data
    python -m benchmark.preset_checks precision --dataset synthetic --users 300 --epochs 2
    python -m benchmark.preset_checks gradients --dataset synthetic
    python -m benchmark.preset_checks bf16_speed

``fidelity``: the next-token loss (nats/token) of the catalog's item texts at initialisation for the
whole pretrained decoder and for cut stacks (the first N layers, and the whole stack minus middle
layers), against a uniform guess; the fidelity floor admits a configuration within 10% of the whole
model. ``precision``: the same small run (the action-only LLM on a fixed subsample of users, same seed)
in fp32 and under bf16 autocast: the per-epoch loss curve, the validation metric and the time, with
the largest relative difference. ``gradients``: one batch of the same model at its initial weights,
its loss and every gradient in fp32 and under bf16 autocast with the first 0, 1, 2 and 4 decoder
blocks kept in fp32: the cosine of each parameter group's bf16 gradient to the fp32 one (a check of
the numerics alone, free of the training trajectory's sensitivity to any perturbation). ``bf16_speed``:
one linear layer of the decoder's MLP shape (1,024 tokens, 576 -> 1,536) forward and backward, in fp32
and under bf16 autocast, on this CPU; whether it computes bf16 natively decides what ``autocast=auto``
picks (``benchmark.device.native_bf16``). Each writes a JSON file under ``results/``; run them on a quiet core.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmark.data.download import cache_root, data_root
from benchmark.machine import environment
from benchmark.records import write_text_atomic


def _config_and_log(dataset: str, data_dir: str | None, overrides: list[str]):
    from hydra import compose, initialize_config_module

    from benchmark.config import typed
    from benchmark.runner import load_log

    with initialize_config_module(config_module="benchmark.conf", version_base="1.3"):
        cfg = typed(compose(config_name="config", overrides=["suite=full", *overrides]))
    return cfg, load_log(dataset, cfg, data_root(data_dir))


def fidelity(args) -> dict:
    from karma import backbones
    from karma.user_llm import FIDELITY_TEXTS, FIDELITY_TOKENS

    cfg, log = _config_and_log(args.dataset, args.data_dir, args.override)
    texts = [t for t in log.catalog["text"].fillna("") if t][:FIDELITY_TEXTS]
    tok, lm = backbones.load_decoder(cfg.model.karma.decoder, cache_root() / "models")
    n = len(lm.model.layers)
    layers = list(lm.model.layers)
    rows = {"uniform": math.log(lm.config.vocab_size)}
    configs = {f"all {n}": list(range(n))}
    configs.update({f"first {k}": list(range(k)) for k in (2, 4, 8, 16, 24, 28) if k < n})
    configs.update({f"all but {k} middle": [i for i in range(n) if not (n - k) // 2 <= i < (n + k) // 2]
                    for k in (2, 4, 8) if k < n})
    for name, keep in configs.items():
        lm.model.layers = nn.ModuleList([layers[i] for i in keep])
        start = time.perf_counter()
        rows[name] = backbones.next_token_loss(lm, tok, texts, FIDELITY_TOKENS)
        print(f"{name:<20} {rows[name]:6.2f} nats/token  ({time.perf_counter() - start:.0f} s)", flush=True)
    lm.model.layers = nn.ModuleList(layers)
    full = rows[f"all {n}"]
    return {"dataset": args.dataset, "texts": len(texts), "max_tokens": FIDELITY_TOKENS, "loss": rows,
            "within_floor": {k: v <= full * 1.10 for k, v in rows.items() if k != "uniform"}}


def precision(args) -> dict:
    from benchmark.models import build
    from benchmark.runner.execute import evaluate_split
    from benchmark.seed import seed_everything
    from benchmark.trainer import TrainConfig, train

    cfg, log = _config_and_log(args.dataset, args.data_dir, args.override)
    users = np.sort(log.impressions["user"].unique())[: args.users]  # the first users by index: fixed, not chosen
    small = copy.copy(log)
    small.impressions = log.impressions[log.impressions["user"].isin(users)]
    out = {"dataset": args.dataset, "users": int(len(users)), "train_impressions": int(len(small.split("train"))),
           "epochs": args.epochs, "seed": args.seed, "runs": {}}
    metric = cfg.eval.selection_metric
    for autocast in args.dtypes:
        torch.set_num_threads(1)
        generator = seed_everything(args.seed)
        models = dataclasses.replace(cfg.model, karma=dataclasses.replace(cfg.model.karma, autocast=autocast))
        model = build("action_llm", "default", small, models, cache_dir=cache_root() / "models")
        start = time.perf_counter()
        result = train(model, small, TrainConfig(max_epochs=args.epochs, patience=args.epochs, progress=False),
                       generator, lambda m: evaluate_split(m, small, "valid", cfg, None, False)[0].metrics[metric],
                       lr=model.config.lr, desc=autocast)
        out["runs"][autocast] = {"seconds": time.perf_counter() - start,
                                 "loss": [h["action"] for h in result.history],
                                 "valid": [h["valid"] for h in result.history]}
        print(autocast, out["runs"][autocast], flush=True)
    if set(out["runs"]) != {"none", "bfloat16"}:
        return out
    a, b = out["runs"]["none"], out["runs"]["bfloat16"]
    out["max_relative_loss_difference"] = max(abs(x - y) / abs(x) for x, y in zip(a["loss"], b["loss"], strict=True))
    out["max_abs_valid_difference"] = max(abs(x - y) for x, y in zip(a["valid"], b["valid"], strict=True))
    out["speedup"] = a["seconds"] / b["seconds"]
    return out


def _group(name: str) -> str:
    if "lora_" in name and ".decoder." in name:
        return "decoder LoRA, blocks 0-2" if int(name.split("layers.")[1].split(".")[0]) < 3 else "decoder LoRA, blocks 3+"
    head = name.split(".")[0]
    return ".".join(name.split(".")[:2]) if head in ("user_llm", "item_encoder") else head


def gradients(args) -> dict:
    from benchmark.models import build
    from benchmark.seed import seed_everything
    from karma import backbones

    cfg, log = _config_and_log(args.dataset, args.data_dir, [*args.override, "model.karma.fp32_blocks=0"])
    seed_everything(0)
    model = build("action_llm", "default", log, cfg.model, cache_dir=cache_root() / "models")
    model.train()
    dataset = model.train_dataset(log, torch.Generator().manual_seed(0))
    batch = model.collate([dataset[i] for i in range(64)])
    blocks = model.user_llm.decoder.model.layers
    plain = [type(b) for b in blocks]

    def run(autocast: str, fp32_blocks: int, noise_at: int | None = None):
        for block, cls in zip(blocks, plain, strict=True):
            block.__class__ = cls
        for block in blocks[:fp32_blocks]:
            backbones.compute_in_fp32(block)
        model.config.autocast = model.user_llm.config.autocast = autocast
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks in every setting
        hook = None if noise_at is None else blocks[noise_at].register_forward_pre_hook(_relative_noise, with_kwargs=True)
        start = time.perf_counter()
        loss = sum(model.losses(batch, torch.Generator().manual_seed(1)).values())
        loss.backward()
        if hook is not None:
            hook.remove()
        grads = {}
        for name, p in model.named_parameters():
            if p.grad is not None:
                grads.setdefault(_group(name), []).append(p.grad.flatten().clone())
        return float(loss), {k: torch.cat(v) for k, v in grads.items()}, time.perf_counter() - start

    loss32, ref, seconds = run("none", 0)
    out = {"dataset": args.dataset, "batch": 64, "fp32": {"loss": loss32, "seconds": seconds}, "bf16": {}}
    for k in (0, 1, 2, 4):
        loss, grads, seconds = run("bfloat16", k)
        out["bf16"][f"fp32_blocks={k}"] = {
            "loss": loss, "seconds": seconds,
            "gradient_cosine": {g: float(torch.nn.functional.cosine_similarity(grads[g], ref[g], dim=0)) for g in ref}}
        print(k, out["bf16"][f"fp32_blocks={k}"], flush=True)
    # fp32 itself, with bf16-sized noise (2^-9 relative) on one block's input: how sensitive the
    # gradient is to a perturbation of that size, whatever the precision
    out["fp32_with_noise"] = {}
    for block in (0, 3, 10):
        loss, grads, _ = run("none", 0, noise_at=block)
        out["fp32_with_noise"][f"block {block} input"] = {
            "loss": loss,
            "gradient_cosine": {g: float(torch.nn.functional.cosine_similarity(grads[g], ref[g], dim=0)) for g in ref}}
        print("noise", block, out["fp32_with_noise"][f"block {block} input"], flush=True)
    return out


def bf16_speed(args) -> dict:
    """Steps per second of one decoder-shaped linear layer (forward + backward) in fp32 and in bf16."""
    from benchmark.device import native_bf16

    torch.manual_seed(0)
    x = torch.randn(1024, 576, requires_grad=True)
    layer = nn.Linear(576, 1536)
    out = {"native_bf16": native_bf16(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "steps_per_s": {}}
    for dtype in ("fp32", "bf16"):
        rates = []
        for _ in range(args.repeats):
            start, steps = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                    y = layer(x)
                y.float().sum().backward()
                steps += 1
            rates.append(steps / (time.perf_counter() - start))
        out["steps_per_s"][dtype] = max(rates)  # the best repeat: the least disturbed by anything else
        print(dtype, f"{out['steps_per_s'][dtype]:.2f} steps/s", flush=True)
    out["bf16_over_fp32"] = out["steps_per_s"]["bf16"] / out["steps_per_s"]["fp32"]
    return out


def _relative_noise(module, args, kwargs):
    """Forward pre-hook: the block's hidden states times (1 + 2^-9 N(0, 1)), from a fixed stream."""
    x = args[0] if args else kwargs["hidden_states"]
    x = x * (1 + 2.0 ** -9 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7)))
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.preset_checks", description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=["fidelity", "precision", "gradients", "bf16_speed"])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-dir")
    parser.add_argument("--users", type=int, default=300, help="precision: the first N users")
    parser.add_argument("--epochs", type=int, default=2, help="precision: training epochs per dtype")
    parser.add_argument("--seed", type=int, default=0, help="precision: the runs' seed (the spread between seeds "
                        "is the tolerance a precision's difference is read against)")
    parser.add_argument("--dtypes", nargs="+", choices=["none", "bfloat16"], default=["none", "bfloat16"],
                        help="precision: the autocast settings to run (none = fp32)")
    parser.add_argument("--seconds", type=float, default=3.0, help="bf16_speed: timed seconds per repeat")
    parser.add_argument("--repeats", type=int, default=2, help="bf16_speed: repeats per dtype (the best is kept)")
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checks = {"fidelity": fidelity, "precision": precision, "gradients": gradients, "bf16_speed": bf16_speed}
    result = checks[args.check](args)
    result["environment"] = environment()
    name = (("native" if result["native_bf16"] else "emulated") if args.check == "bf16_speed"
            else args.dataset.replace("/", "__"))
    out = Path(args.out or f"results/preset_{args.check}_{name}.json")
    write_text_atomic(out, json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
