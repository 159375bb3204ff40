"""Table 2 of the paper, per run: the retrieval embedding *generated* from KARMA's next-interest state.

A ``karma_gen`` run trains KARMA exactly as ``karma:karma`` (same selected settings, same seed), then
fits four generators on the trained model's frozen (h, ``v_target``) pairs of the training split
(``funnel.generator_updates`` AdamW updates at 1e-3, batch 256), each producing the target item's
retrieval embedding from h:

- ``diffusion``: a conditional DDPM head predicting the noise (the DDPM default); at test time one
  embedding is sampled with diffusers' DDIM scheduler (eta 0, ``generator_steps`` steps) from
  Gaussian noise;
- ``diffusion_x0``: the same head and sampler, the network predicting the clean embedding x0;
- ``flow``: a conditional rectified-flow head, sampled with ``generator_steps`` Euler steps (the
  paper names diffusion and flow matching together);
- ``ar_mse``: an MLP regressor trained with MSE (the autoregressive state -> next embedding).

All are evaluated exactly like the model's own user embedding u (full catalog, same item embeddings,
same metrics). The mode/mean analysis then draws several samples of each sampled generator for a subset of test
impressions and measures, in the item-embedding space:

- ``spread``: mean pairwise cosine distance between the samples of one impression;
- the cosine of a single sample, of the normalised mean of the samples, and of the AR+MSE output to
  (a) the target item and (b) the centroid of plausible targets: the normalised mean embedding of
  the training clicks under the same query (the "stable centroid" of the paper's reading);
- the same retrieval metrics for the sample mean: if averaging samples (moving from a mode towards
  the mean) retrieves better than one sample, retrieval rewards mean-seeking, as the paper argues.

A run *trained* with a sampled generator objective (``karma_gen:objective_diffusion`` and the like, Table 2
as training objectives) gets the same analysis from ``objective_analysis``: its head's draws against the
discriminative u the same run trained beside it, on the same impressions.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.schema import SearchLog
from benchmark.diagnostics import _figure
from benchmark.evaluate import evaluate
from karma.model import SAMPLED_GENERATORS

GENERATOR_LABELS = {"diffusion": "diffusion (noise pred.)", "diffusion_x0": "diffusion (x0 pred.)", "flow": "flow",
                    "ar_mse": "AR + MSE"}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def plausible_centroids(log: SearchLog, impressions: pd.DataFrame, item_emb: np.ndarray) -> np.ndarray:
    """Per impression, the normalised mean embedding of the training clicks under its query
    (zero row when the query has no training click)."""
    train = log.split("train")
    means = {q: _unit(item_emb[g.to_numpy()].mean(0)) for q, g in train.groupby("query")["target"]}
    zero = np.zeros(item_emb.shape[1])
    return np.stack([means.get(q, zero) for q in impressions["query"]]) if len(impressions) else zero[None, :0]


def mode_mean_analysis(samples: dict[str, np.ndarray], references: dict[str, np.ndarray], targets: np.ndarray,
                       centroids: np.ndarray) -> dict:
    """samples: name -> (n, S, R) normalised draws of one sampled generator; references: name -> (n, R)
    deterministic embeddings (``ar_mse``, a discriminative ``u``); targets, centroids (n, R).

    Per sampled generator: ``spread`` (mean pairwise cosine distance between an impression's draws),
    and the cosine of one draw (``<name>_sample``) and of the normalised mean of the draws
    (``<name>_mean``) to the target and to the centroid; the same cosines for each reference."""
    has_c = np.linalg.norm(centroids, axis=1) > 0

    def cos(a: np.ndarray, b: np.ndarray, rows=slice(None)) -> float:
        return float(np.einsum("nr,nr->n", a[rows], b[rows]).mean()) if len(a[rows]) else float("nan")

    vectors, spread = {}, {}
    for name, draws in samples.items():
        n, s, _ = draws.shape
        sims = np.einsum("nsr,ntr->nst", draws, draws)
        # a distance is >= 0; float32 unit vectors can have a dot product a rounding step above 1
        spread[name] = float(np.clip(1 - sims[:, ~np.eye(s, dtype=bool)], 0, None).mean()) if s > 1 else 0.0
        vectors[f"{name}_sample"], vectors[f"{name}_mean"] = draws[:, 0], _unit(draws.mean(1))
    vectors.update(references)
    return {"impressions": int(len(targets)), "samples": int(next(iter(samples.values())).shape[1]), "spread": spread,
            "cos_target": {k: cos(v, targets) for k, v in vectors.items()},
            "cos_centroid": {k: cos(v, centroids, has_c) for k, v in vectors.items()},
            "with_centroid": int(has_c.sum())}


def analysis_figure(vectors: dict[str, np.ndarray], centroids: np.ndarray, path: Path, title: str) -> Path:
    """Histogram of the cosine to the plausible-target centroid, one series per embedding (n, R)."""
    has_c = np.linalg.norm(centroids, axis=1) > 0
    fig = _figure(1, width=6.5, height=4.0)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(-1, 1, 41)
    for label, x in vectors.items():
        ax.hist(np.einsum("nr,nr->n", x[has_c], centroids[has_c]), bins=bins, alpha=0.45, label=label)
    ax.set_xlabel("cosine to the centroid of plausible targets (same-query training clicks)")
    ax.set_ylabel("test impressions")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def table2_metrics(model, log: SearchLog, test_imp: pd.DataFrame, item_emb: np.ndarray, item_terms, cfg,
                   run, figures_dir: Path) -> dict | None:
    """Test metrics of each generated embedding, plus the mode/mean analysis; None for other models."""
    if not getattr(getattr(model, "config", None), "generators", False):
        return None
    ks, js_k = list(cfg.eval.ks), cfg.eval.js_k
    start = time.perf_counter()
    fit = model.fit_generators(log, cfg.funnel.generator_updates, seed=run.seed)
    steps = model.config.generator_steps
    ddim = f"DDIM, eta 0, {steps} steps (diffusers)"
    out = {"sampler": {"diffusion": f"{ddim}, noise prediction", "diffusion_x0": f"{ddim}, x0 prediction",
                       "flow": f"Euler, {steps} steps"},
           "fit": {"updates": cfg.funnel.generator_updates, "final_losses": fit,
                   "seconds": time.perf_counter() - start}}
    generated = model.generated_user_embeddings(log, test_imp)
    for name in (*SAMPLED_GENERATORS, "ar_mse"):
        out[name] = evaluate(item_emb, generated[name].cpu().numpy(), test_imp, ks=ks, js_k=js_k,
                             item_terms=item_terms, topk_lists=item_terms is not None).metrics
    sub = test_imp.head(cfg.funnel.generator_impressions)
    draws = model.generated_user_embeddings(log, sub, samples=cfg.funnel.generator_samples)
    samples = {name: draws[f"{name}_samples"].cpu().numpy() for name in SAMPLED_GENERATORS}
    out["analysis"] = _analyse(samples, {"ar_mse": draws["ar_mse"].cpu().numpy()}, log, sub, item_emb, cfg,
                               _figure_path(figures_dir, log, f"{run.mode}__seed{run.seed}"),
                               f"{log.name}: generated retrieval embeddings, seed {run.seed}")
    return out


def objective_analysis(model, log: SearchLog, test_imp: pd.DataFrame, item_emb: np.ndarray, cfg, run,
                       figures_dir: Path) -> dict | None:
    """The mode/mean analysis of a run trained with a sampled generator objective (diffusion, flow):
    several draws of its generated retrieval embedding per test impression, against the discriminative
    u the same run trained beside it. None for the other models."""
    objective_draws = getattr(model, "objective_draws", None)
    sub = test_imp.head(cfg.funnel.generator_impressions)
    drawn = objective_draws(sub, cfg.funnel.generator_samples) if objective_draws is not None else None
    if drawn is None:
        return None
    draws, u = (x.float().cpu().numpy() for x in drawn)
    name = model.config.retrieval_objective
    return _analyse({name: draws}, {"u": u}, log, sub, item_emb, cfg,
                    _figure_path(figures_dir, log, f"{run.mode}__{run.variant}__seed{run.seed}"),
                    f"{log.name}: {run.variant}, seed {run.seed}")


def _figure_path(figures_dir: Path, log: SearchLog, stem: str) -> Path:
    return Path(figures_dir) / "mode_mean" / f"{log.name.replace('/', '__')}__{stem}.png"


REFERENCE_LABELS = {"ar_mse": GENERATOR_LABELS["ar_mse"], "u": "discriminative u (same run)"}


def _analyse(samples: dict[str, np.ndarray], references: dict[str, np.ndarray], log: SearchLog, sub: pd.DataFrame,
             item_emb: np.ndarray, cfg, path: Path, title: str) -> dict:
    """mode_mean_analysis of ``samples`` against ``references`` on impressions ``sub``, with each embedding's
    retrieval metrics on that subset and the histogram figure at ``path``."""
    centroids = plausible_centroids(log, sub, item_emb)
    analysis = mode_mean_analysis(samples, references, item_emb[sub["target"].to_numpy()], centroids)
    k = cfg.funnel.generator_samples
    vectors, labels = {}, {}  # key -> (n, R) embedding, key -> figure label
    for name, draws_n in samples.items():
        vectors[f"{name}_sample"], labels[f"{name}_sample"] = draws_n[:, 0], f"{GENERATOR_LABELS[name]}, one sample"
        vectors[f"{name}_mean"], labels[f"{name}_mean"] = _unit(draws_n.mean(1)), f"{GENERATOR_LABELS[name]}, mean of {k}"
    for name, x in references.items():
        vectors[name], labels[name] = x, REFERENCE_LABELS[name]
    ks, js_k = list(cfg.eval.ks), cfg.eval.js_k
    analysis["subset_metrics"] = {key: evaluate(item_emb, users, sub, ks=ks, js_k=js_k, item_terms=None,
                                                topk_lists=False).metrics for key, users in vectors.items()}
    analysis["figure"] = str(analysis_figure({labels[k]: v for k, v in vectors.items()}, centroids, path, title))
    return analysis


def backfill_objective_analysis(record_file: str | Path, data_dir: str | None = None) -> dict | None:
    """Add ``objective_analysis`` to the record of a sampled-objective run that landed before the
    analysis existed, from its saved artifact (the trained state), and return it (None when the run's
    objective is not a sampled one, or it already has one). The rebuilt model must reproduce the
    user embeddings the run stored, or nothing is written."""
    import dataclasses
    from types import SimpleNamespace

    import torch

    from benchmark import records as R
    from benchmark.data.download import cache_root, data_root
    from benchmark.models import model_config, model_spec
    from benchmark.run import compose_config
    from benchmark.runner import load_log
    from benchmark.runner.execute import artifact_path
    from benchmark.runner.spec import mode_config

    path = Path(record_file)
    record = R.read_record(path)
    mc = record["config"]["model_config"]
    if record.get("objective_analysis") is not None or mc.get("retrieval_objective") not in SAMPLED_GENERATORS:
        return None
    cfg = mode_config(compose_config(record["suite"], [f"data_dir={data_dir}"] if data_dir else []), record["mode"])
    torch.set_num_threads(cfg.threads)
    log = load_log(record["dataset"], cfg, data_root(cfg.data_dir))
    if log.fingerprint != record["data_fingerprint"]:
        raise ValueError(f"{path}: the data now loads as {log.fingerprint}, the run saw {record['data_fingerprint']}")
    spec = model_spec(record["model"])
    config = dataclasses.replace(model_config(record["model"], record["variant"], cfg.model),
                                 **{k: tuple(v) if isinstance(v, list) else v for k, v in mc.items()})
    model = spec.cls(log, config, cache_root() / "models")
    artifact = artifact_path(path, cfg.results_dir)
    blob = torch.load(artifact, map_location="cpu", weights_only=False)
    model.load_state_dict(blob["state"], strict=False)
    model.eval()
    test_imp = log.split("test")
    stored = np.asarray(blob["user_embeddings_test"], dtype=np.float32)
    rebuilt = model.user_embeddings(log, test_imp).float().cpu().numpy()
    # the same weights and noise stream; float rounding of h differs at ~1e-6 between processes, and the
    # DDIM sampler's first step amplifies it about 150-fold (a diffusion run rebuilt here: 1.55e-4)
    gap = float(np.abs(rebuilt - stored).max())
    if gap > 1e-3:
        raise ValueError(f"{artifact}: the rebuilt model does not reproduce the run's test user embeddings "
                         f"(max |diff| {gap:.2e}); not written")
    run = SimpleNamespace(mode=record["mode"], variant=record["variant"], seed=record["seed"])
    analysis = objective_analysis(model, log, test_imp, np.asarray(blob["item_embeddings"]), cfg, run,
                                  Path(cfg.results_dir) / "figures")
    analysis["computed_after_the_run"] = {"from": str(artifact.relative_to(cfg.results_dir)),
                                          "max_abs_diff_of_rebuilt_u": gap}
    record["objective_analysis"] = analysis
    R.write_record(path, record)
    return analysis


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Add the mode/mean analysis to sampled-objective run records "
                                                 "that landed before it existed (from their artifacts).")
    parser.add_argument("records", nargs="+", help="record JSON files (results/records/...)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    for record_file in args.records:
        done = backfill_objective_analysis(record_file, args.data_dir)
        print(f"{record_file}: " + ("nothing to add" if done is None else
                                   f"spread {done['spread']}, figure {done['figure']}"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
