"""The leaderboard's speed section: every ``results/perf/<dataset>.json`` (``python -m benchmark.perf``) as a
table, and per measured dataset the cost-vs-quality figure: test HR@10 (mean over seeds, 95% interval)
against training seconds and against per-request inference latency, one point per model, the Pareto
front drawn through the points no other model beats on both axes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tabulate import tabulate

from benchmark.models import ACTION_ONLY, MODELS, infers_like_action_only
from benchmark.records import Record, _atomic_write, dataset_dirname
from benchmark.stats import mean_ci

QUALITY = "HR@10"


def read_perf(results_dir: Path) -> list[dict]:
    folder = Path(results_dir) / "perf"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


ACTION_ONLY_NAME = ":".join(ACTION_ONLY)


def _num(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def cost_points(records: list[Record], perf: dict, suite: str) -> list[dict]:
    """One point per model:variant on ``perf``'s dataset view: HR@10 over its seeds (the view's mode, or
    ``none`` for a query-blind model, which stands for every mode), mean training seconds, and the
    measured ms per request where perf timed that model."""
    by_model: dict[str, list[Record]] = {}
    for r in records:
        if r.suite != suite or r.dataset != perf["dataset"] or r.model not in MODELS:
            continue
        blind = MODELS[r.model].query_use == "ignored"
        if r.mode == perf["mode"] or (blind and r.mode == "none"):
            by_model.setdefault(f"{r.model}:{r.variant}", []).append(r)
    points = []
    for name, runs in sorted(by_model.items()):
        hr = [r.metric(f"test/{QUALITY}") for r in runs]
        train = [r.timing("train_s") for r in runs]
        if any(v is None for v in hr):
            continue
        mean, half = mean_ci([float(v) for v in hr])
        timed = (perf["models"].get(name) or {}).get("evaluation") or {}
        borrowed = not timed and name != ACTION_ONLY_NAME and infers_like_action_only(*name.split(":"))
        if borrowed:  # the same inference path: action-only's measured latency is this model's
            timed = (perf["models"].get(ACTION_ONLY_NAME) or {}).get("evaluation") or {}
        points.append({"model": name, "seeds": len(runs), "hr": mean, "hr_ci": half,
                       "train_s": sum(t for t in train if t is not None) / max(sum(t is not None for t in train), 1),
                       "ms_per_request": timed.get("ms_per_request"), "latency_of_action_only": borrowed})
    return points


def pareto(points: list[dict], cost: str) -> list[str]:
    """The models on the front: no other point has both a lower ``cost`` and a higher HR."""
    have = [p for p in points if p.get(cost) is not None]
    return [p["model"] for p in have
            if not any(q[cost] <= p[cost] and q["hr"] >= p["hr"] and (q[cost], q["hr"]) != (p[cost], p["hr"])
                       for q in have)]


def _figure(path: Path, title: str, points: list[dict]) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    for ax, cost, label in zip(fig.subplots(1, 2), ("train_s", "ms_per_request"),
                               ("training seconds (mean over seeds)", "inference ms per request"), strict=True):
        have = [p for p in points if p.get(cost) is not None]
        for p in have:
            ax.errorbar(p[cost], p["hr"], yerr=p["hr_ci"] or 0, fmt="o", capsize=3)
            ax.annotate(p["model"].removesuffix(":default"), (p[cost], p["hr"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        front = sorted((p for p in have if p["model"] in pareto(have, cost)), key=lambda p: p[cost])
        if len(front) > 1:
            ax.plot([p[cost] for p in front], [p["hr"] for p in front], "--", color="grey", lw=1)
        ax.set_xscale("symlog", linthresh=1.0 if cost == "train_s" else 0.1)  # untrained models sit at 0
        ax.set_xlabel(label)
        ax.set_ylabel(f"test {QUALITY}")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, metadata={"Software": None}),
                         binary=True)


def render_perf(results_dir: Path, records: list[Record], *, suite: str, figures_dir: Path | None,
                link_base: Path | None) -> str:
    """The speed and memory section ('' when no perf file exists)."""
    files = [p for p in read_perf(results_dir) if p.get("suite") == suite]
    peer = Path(results_dir) / "perf" / "peer_recbole.json"
    peer_lines = render_peer(json.loads(peer.read_text())) if peer.is_file() and suite == "full" else []
    if not files and not peer_lines:
        return ""
    out = ["## Speed and memory", "",
           "Measured by `python -m benchmark.perf` in one process per dataset, on the machine named under each "
           "table (a load average above its thread count means the timings were contended). Training: optimiser "
           "steps on the trainer's batches; evaluation: embedding the test split, then the exact full-catalog "
           "ranking, against a plain batched matrix-product top-K over the same embeddings (their ratio is the "
           "cost of the harness's ranking); ms/request = (embedding + ranking) / test impressions; peak = the "
           "resident memory of the process that measured that model alone (one process per model)."]
    for perf in files:
        rows = []
        for name, m in perf["models"].items():
            if "error" in m:
                rows.append([name, f"failed: {m['error']}", "", "", "", "", ""])
                continue
            train, ev = m.get("training") or {}, m["evaluation"]
            rows.append([name, _num(train.get("impressions_per_s"), ".0f"), _num(train.get("tokens_per_s"), ".0f"),
                         _num(ev["users_per_s"], ".0f"), _num(ev["rank_over_plain_topk"], ".2f"),
                         _num(ev["ms_per_request"], ".2f"), _num(m["peak_memory_mb"], ".0f")])
        machine = perf["machine"]
        out += ["", f"### {perf['dataset']} · {perf['mode']} ({perf['n_items']:,} items)", "",
                tabulate(rows, headers=["model", "train impressions/s", "train tokens/s", "eval users/s",
                                        "ranking / plain top-K", "ms/request", "peak MiB"], tablefmt="github")]
        latency = perf.get("karma_vs_action_only")
        if latency:
            ratio, spread = latency["ratio_karma_over_action_only"], latency.get("ratio_range_over_rounds")
            cell = {k: f"{ratio[k]:.2f}x" + (f" (rounds {spread[k][0]:.2f}–{spread[k][1]:.2f})" if spread else "")
                    for k in ("items", "users")}
            out += ["", f"KARMA / action-only at inference, median of alternating rounds: catalog embedding "
                        f"{cell['items']}, user embedding {cell['users']} ({latency['impressions']} impressions; "
                        f"identical scores: {latency['identical_scores']})"
                        + ("" if spread else "; measured before the per-round spread was recorded")
                        + ("; the rounds alternate which model goes first" if latency.get("first_per_round")
                           else "; action-only went first in every round") + "."]
        visual = perf.get("visual_cache") or {}
        if "skipped" in visual:
            out += ["", f"Visual-feature cache: not measured ({visual['skipped']})."]
        elif visual:
            out += ["", f"Visual-feature cache ({visual['encoder']}, {visual['images']} images): miss "
                        f"{visual['miss']['seconds']:.1f} s, hit {visual['hit']['seconds']:.2f} s "
                        f"({visual['miss_over_hit']:.0f}x)."]
        load = machine.get("load_average_before"), machine.get("load_average_after")
        out += ["", f"Machine: {machine.get('device')}, {perf['threads']} thread(s), load average "
                    f"{load[0][0]:.2f} before / {load[1][0]:.2f} after; revision {machine.get('git_revision', '?')[:7]}"
                    f"{' (dirty)' if machine.get('git_dirty') else ''}; `{perf['command']}`."]
        points = cost_points(records, perf, suite)
        if points:
            prow = [[p["model"], p["seeds"], f"{p['hr']:.4f} ± {p['hr_ci']:.4f}" if p["hr_ci"] else f"{p['hr']:.4f}",
                     _num(p["train_s"], ".0f"), _num(p["ms_per_request"], ".2f")
                     + (" (action-only's)" if p["latency_of_action_only"] and p["ms_per_request"] is not None else "")]
                    for p in points]
            fronts = {c: pareto(points, c) for c in ("train_s", "ms_per_request")}
            out += ["", f"Cost against quality on this view (suite `{suite}` records; on the Pareto front, by "
                        f"training time: {', '.join(fronts['train_s']) or '—'}; by latency: "
                        f"{', '.join(fronts['ms_per_request']) or '—'}):", "",
                    tabulate(prow, headers=["model", "seeds", f"test {QUALITY}", "train s", "ms/request"],
                             tablefmt="github")]
            if figures_dir is not None:
                fig = _figure(Path(figures_dir) / f"{dataset_dirname(perf['dataset'])}__{perf['mode']}_cost.png",
                              f"{perf['dataset']} · {perf['mode']}: test {QUALITY} against cost", points)
                rel = os.path.relpath(fig, link_base) if link_base is not None else fig
                out += ["", f"![cost vs quality, {perf['dataset']}]({rel})"]
    return "\n".join(out + peer_lines)


def render_peer(peer: dict) -> list[str]:
    """The peer-library comparison (``peers/recbole.sh``)."""
    rows = []
    for side in (peer["peer"], peer["ours"]):
        first = side["epochs"][0]
        reach = side.get("train_s_to_reach_peer_final_NDCG@10")
        rows.append([f"{side['library']} {side.get('version', '')}".strip(), first["train_steps"],
                     f"{side['median_train_s_per_epoch']:.1f}", f"{side['median_valid_s']:.1f}",
                     " / ".join(f"{e['valid_NDCG@10']:.4f}" for e in side["epochs"][:3]),
                     "not reached" if reach is None else f"{reach:.0f}"])
    machine = peer.get("machine", {})
    return ["", f"### Against the peer library: SASRec on {peer['dataset']} ({peer['mode']})", "",
            "RecBole's SASRec and this project's, same split (leave-one-out in order), hidden size 64, feed-forward 64, "
            "2 layers, 1 head, 50 items, dropout 0.2, full-softmax cross-entropy, batch 128, lr 2e-3, one thread each "
            "(`bash peers/recbole.sh`; RecBole in its own venv). RecBole makes every prefix a sample, hence its many more "
            "steps; both rank the full catalog with the user's history masked, each with its own evaluator.", "",
            tabulate(rows, headers=["library", "steps/epoch", "s/epoch", "s/validation", "valid NDCG@10, epochs 1-3",
                                    f"train s to NDCG@10 {peer['target_NDCG@10']:.4f}"], tablefmt="github",
                     disable_numparse=True),
            "", f"Machine: {machine.get('device', '?')}; revision {str(machine.get('git_revision', '?'))[:7]}."]
