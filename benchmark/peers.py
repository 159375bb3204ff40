"""karma-bench's SASRec against a peer library's (RecBole 1.2.1) on one split: ``peers/recbole.sh`` drives it.

    python -m benchmark.peers export --data-dir ../shared/data --out <folder>        # RecBole atomic files
    python -m benchmark.peers compare --data-dir ../shared/data --recbole <recbole.json> --out results/perf/peer_recbole.json

``export`` writes the dataset's user sequences (``s3rec/Beauty`` by default, in mode ``none``) as RecBole's
``<name>/<name>.inter`` (user, item, position as the timestamp), so RecBole's leave-one-out split in time
order is this benchmark's split. ``compare`` trains the project's SASRec with the same settings on one
thread, timing every training epoch and validation pass, and writes both sides with the seconds each
needs to reach RecBole's last-epoch validation NDCG@10. Differences that stay: RecBole makes every prefix
of a training sequence a sample (many more, smaller steps per epoch) where the project trains each
sequence once, predicting every next item; each side validates with its own full-catalog evaluator
(both mask the user's history items).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmark import machine
from benchmark import records as R

SETTINGS = ["model.sasrec.hidden=64", "model.sasrec.inner_size=64", "model.sasrec.layers=2", "model.sasrec.heads=1",
            "model.sasrec.max_len=50", "model.sasrec.dropout=0.2", "model.sasrec.lr=2e-3", "train.batch_size=128"]


def _log(dataset: str, data_dir: str | None, mode: str = "none", overrides: list[str] = ()):
    from benchmark.data.download import data_root
    from benchmark.run import compose_config
    from benchmark.runner import load_log
    from benchmark.runner.spec import mode_config

    cfg = mode_config(compose_config("full", [*SETTINGS, *overrides, *([f"data_dir={data_dir}"] if data_dir else [])]),
                      mode)
    return load_log(dataset, cfg, data_root(cfg.data_dir)), cfg


def user_sequences(log) -> dict[int, list[int]]:
    """Each user's whole item sequence in order: the earliest impression's history, then every target."""
    imp = log.impressions.sort_values(["user", "timestamp"], kind="stable")
    out = {}
    for user, rows in imp.groupby("user", sort=True):
        out[int(user)] = [*np.asarray(rows["history"].iloc[0]).tolist(), *rows["target"].astype(int).tolist()]
    return out


def export_atomic(log, folder: Path, name: str = "beauty") -> Path:
    path = Path(folder) / name / f"{name}.inter"
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, items in user_sequences(log).items():
        lines += [f"u{user}\ti{item}\t{t}" for t, item in enumerate(items)]
    return R.write_text_atomic(path, "\n".join(lines) + "\n")


def train_ours(log, cfg, epochs: int) -> dict:
    """The project's SASRec, ``epochs`` epochs on one thread: per epoch, training and validation seconds and
    validation NDCG@10 (the trainer's own loop; selection plays no part)."""
    import dataclasses

    import torch

    from benchmark.models import build
    from benchmark.runner.execute import evaluate_split
    from benchmark.seed import seed_everything
    from benchmark.trainer import TrainConfig, train

    torch.set_num_threads(1)
    generator = seed_everything(0)
    model = build("sasrec", "default", log, cfg.model)
    marks, start = [], time.perf_counter()

    def validate(m) -> float:
        t0 = time.perf_counter()
        result, _ = evaluate_split(m, log, "valid", cfg, None, with_lists=False)
        marks.append((t0, time.perf_counter(), result.metrics["NDCG@10"]))
        return result.metrics["NDCG@10"]

    train_cfg = dataclasses.replace(TrainConfig(batch_size=cfg.train.batch_size), max_epochs=epochs, patience=epochs,
                                    progress=False)
    train(model, log, train_cfg, generator, validate, lr=model.config.lr, desc="sasrec")
    loader_steps = -(-len(model.train_dataset(log, torch.Generator())) // cfg.train.batch_size)
    out, previous = [], start
    for i, (t0, t1, value) in enumerate(marks, 1):
        out.append({"epoch": i, "train_s": t0 - previous, "valid_s": t1 - t0, "valid_NDCG@10": value,
                    "train_steps": loader_steps})
        previous = t1
    return {"library": "karma-bench", "settings": SETTINGS, "epochs": out}


def seconds_to_reach(epochs: list[dict], target: float) -> float | None:
    """Training seconds (validation excluded) until the first epoch whose validation NDCG@10 >= ``target``."""
    total = 0.0
    for e in epochs:
        total += e["train_s"]
        if e["valid_NDCG@10"] >= target:
            return total
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.peers", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["export", "compare"])
    parser.add_argument("--dataset", default="s3rec/Beauty")
    parser.add_argument("--data-dir")
    parser.add_argument("--recbole", help="compare: the JSON peers/recbole_sasrec.py wrote")
    parser.add_argument("--epochs", type=int, default=10, help="compare: epochs of the project's SASRec")
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for benchmark.run")
    args = parser.parse_intermixed_args(argv)
    log, cfg = _log(args.dataset, args.data_dir, overrides=args.overrides)
    if args.command == "export":
        print(f"wrote {export_atomic(log, Path(args.out))}")
        return 0
    if not args.recbole:
        parser.error("compare needs --recbole")
    peer = json.loads(Path(args.recbole).read_text())
    ours = train_ours(log, cfg, args.epochs)
    target = peer["epochs"][-1]["valid_NDCG@10"]
    for side in (peer, ours):
        side["median_train_s_per_epoch"] = float(np.median([e["train_s"] for e in side["epochs"]]))
        side["median_valid_s"] = float(np.median([e["valid_s"] for e in side["epochs"]]))
        side["train_s_to_reach_peer_final_NDCG@10"] = seconds_to_reach(side["epochs"], target)
    result = {"dataset": args.dataset, "mode": "none", "peer": peer, "ours": ours, "target_NDCG@10": target,
              "machine": machine.environment()}
    R.write_text_atomic(Path(args.out), json.dumps(result, indent=1, default=str))
    print(f"RecBole {peer['median_train_s_per_epoch']:.0f} s/epoch, ours {ours['median_train_s_per_epoch']:.0f}; "
          f"to RecBole's {len(peer['epochs'])}-epoch NDCG@10 {target:.4f}: RecBole "
          f"{peer['train_s_to_reach_peer_final_NDCG@10']:.0f} s, ours {ours['train_s_to_reach_peer_final_NDCG@10']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
