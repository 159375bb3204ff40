"""RecBole 1.2.1's SASRec on an atomic export of a karma-bench split: seconds per training epoch and per
full-catalog validation pass, and validation NDCG@10 after each epoch.

Runs inside RecBole's own virtual environment (``peers/recbole.sh`` makes it); it imports nothing from
karma-bench. The settings match karma-bench's SASRec where RecBole has the same knob: hidden size,
feed-forward width, layers, heads, history length, dropout, full-softmax cross-entropy, batch size,
learning rate, one thread; leave-one-out split in time order, evaluated on the full catalog.

    python peers/recbole_sasrec.py --atomic <folder holding <name>/<name>.inter> --name beauty --epochs 3 \\
        --out results/perf/peer_recbole_raw.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole 1.2.1 predates torch's weights_only default


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atomic", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--inner", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    settings = {
        "data_path": args.atomic, "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "MAX_ITEM_LIST_LENGTH": args.max_len,
        "hidden_size": args.hidden, "inner_size": args.inner, "n_layers": args.layers, "n_heads": args.heads,
        "hidden_dropout_prob": args.dropout, "attn_dropout_prob": args.dropout, "loss_type": "CE",
        "train_neg_sample_args": None, "learning_rate": args.lr, "train_batch_size": args.batch_size,
        "eval_batch_size": 4096, "epochs": args.epochs, "eval_step": 1, "stopping_step": 1000,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10", "device": "cpu", "use_gpu": False,
        "seed": 0, "reproducibility": True, "show_progress": False, "save_dataset": False,
        "save_dataloaders": False, "checkpoint_dir": os.path.join(os.path.dirname(args.out) or ".", "recbole_saved"),
        "log_wandb": False, "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
    }
    config = Config(model="SASRec", dataset=args.name, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    epochs = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        _, result = trainer._valid_epoch(valid_data, show_progress=False)
        epochs.append({"epoch": epoch + 1, "train_s": train_s, "valid_s": time.perf_counter() - start,
                       "valid_NDCG@10": float(result["ndcg@10"]), "train_steps": len(train_data)})
        print(json.dumps(epochs[-1]), flush=True)
    out = {"library": "RecBole", "version": recbole.__version__, "torch": torch.__version__, "threads": 1,
           "settings": {k: v for k, v in settings.items() if k not in ("data_path", "checkpoint_dir")},
           "users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1),
           "interactions": int(dataset.inter_num), "epochs": epochs}
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
