"""leaderboard.md from the records alone: the plan lays it out, the renderers in ``benchmark.leaderboard``
and ``benchmark.tables`` fill it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from benchmark import machine
from benchmark import records as R
from benchmark.config import typed
from benchmark.data import adapt as A
from benchmark.funnel.runs import read_funnel_results
from benchmark.leaderboard import render_leaderboard, write_leaderboard
from benchmark.models import model_spec
from benchmark.paper_comparison import render_paper_comparison
from benchmark.perf_report import render_perf
from benchmark.runner.plan import plan
from benchmark.runner.spec import mode_config
from benchmark.runner.staleness import record_is_current
from benchmark.tables import (
    render_attention_comparison,
    render_collapse_profiles,
    render_funnel,
    render_table1,
    render_table1_paired,
    render_table2,
    render_table2_objectives,
)

LEADERBOARD_METRICS = ["NDCG@10", "HR@10", "HR@50", "MRR", "gAUC", "JS@50", "test_tail/NDCG@10", "test_tail/HR@50"]


SUITE_ORDER = ["full", "smoke"]



def tuning_note(cfg) -> str:
    """The tuning budget as the leaderboard states it, from the suite's own search settings."""
    if not cfg.search.enabled:
        return "none: every model runs its config's defaults (no search)."
    grids = cfg.search.grids
    axes = "; ".join(f"`{name}`: " + " x ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in sorted(grid.items()))
                     for name, grid in grids.items())
    return (f"every searched model gets the same {cfg.search.trials} trials on seed {cfg.search.seed}, scored "
            f"on validation {cfg.eval.selection_metric} (a grid of 8 two-level points is halved to its 2^(3-1) "
            f"fraction); the selected setting then runs every seed and is tested once. Grids: {axes}. The LLM "
            "family is searched once, on the action-only LLM; every Table 1 row reuses its selection, so a row's "
            "delta is its train-only losses' effect. Models without a grid (popularity, query_pop, bm25, "
            "external models) run their defaults.")


def external_models(folder: Path) -> list[str]:
    """Import paths of the external models with records under a suite's folder (they join its plan, so
    the leaderboard shows them like the built-in ones); one that no longer imports is left out."""
    names = sorted({p.name.split("__", 1)[0] for p in folder.glob("*/*/*__seed*.json")} if folder.exists() else set())
    out = []
    for name in (n for n in names if "." in n):
        try:
            model_spec(name)
            out.append(name)
        except KeyError as err:
            print(f"warning: records of {name} left out of the leaderboard: {err}", flush=True)
    return out


def widen_scope(a: dict, b: dict) -> dict:
    """Two scopes as one that plans what either plans: a model unscoped in either (or with an empty list,
    "all") stays unscoped there; otherwise the union of the lists."""
    out = {}
    for model in set(a) & set(b):
        lists = {part: [getattr(a[model], part), getattr(b[model], part)] for part in ("datasets", "modes")}
        out[model] = dataclasses.replace(a[model], **{
            part: [] if not all(pair) else list(dict.fromkeys([*pair[0], *pair[1]])) for part, pair in lists.items()})
    return out


def regenerate_leaderboard(cfg, problems_by_suite: dict[str, dict[str, str]] | None = None) -> Path:
    """leaderboard.md from every suite's records: full first, then smoke, then others."""
    from hydra import compose

    results = Path(cfg.results_dir)
    suites_dir = results / "records"
    present = sorted(p.name for p in suites_dir.iterdir() if p.is_dir()) if suites_dir.exists() else []
    suites = [s for s in SUITE_ORDER if s in present] + [s for s in present if s not in SUITE_ORDER]
    revision, dirty = machine.git_state()
    link_base = Path(cfg.leaderboard).resolve().parent  # figures are linked relative to leaderboard.md
    sections = []
    for suite in suites:
        file_cfg = typed(compose(config_name="config", overrides=[f"suite={suite}"]))
        suite_cfg = cfg if suite == cfg.suite else file_cfg
        # The leaderboard shows the whole suite: a run restricted on the command line (datasets=[...],
        # models=[...], seeds=[...], modes=[...]) adds to the suite file's plan and never hides the rest of it.
        widened = {key: list(dict.fromkeys([*getattr(file_cfg, key), *getattr(suite_cfg, key)]))
                   for key in ("datasets", "models", "seeds", "modes")}
        widened["models"] += [m for m in external_models(suites_dir / suite) if m not in widened["models"]]
        widened["scope"] = widen_scope(file_cfg.scope, suite_cfg.scope)
        suite_cfg = dataclasses.replace(suite_cfg, data_dir=cfg.data_dir, results_dir=cfg.results_dir, **widened)
        runs, problems = plan(suite_cfg)
        problems.update((problems_by_suite or {}).get(suite, {}))
        entries = {}
        for r in runs:
            key = (r.dataset, r.mode, r.model, r.variant)
            entries.setdefault(key, {"dataset": r.dataset, "mode": r.mode, "model": r.model,
                                     "variant": r.variant, "query_use": model_spec(r.model).query_use,
                                     "seeds": [], "status": "planned"})["seeds"].append(r.seed)
            if r.dataset in problems:
                entries[key]["status"] = f"dataset missing: {problems[r.dataset]}"
        records = R.read_run_records(results, suite)  # read once, rendered into every table
        memo = {}
        current = [r for r in records if r.suite != suite
                   or (r.mode in A.QUERY_MODES and record_is_current(r.data, mode_config(suite_cfg, r.mode), memo))]
        funnel_results = read_funnel_results(results, suite, current)
        stale = len(records) - len(current)
        text = render_leaderboard(current, list(entries.values()), suite=suite, stale=stale,
                                  suite_version=str(suite_cfg.suite_version),
                                  revision=f"{revision}{' (dirty)' if dirty else ''}",
                                  metrics=LEADERBOARD_METRICS, figures_dir=results / "figures",
                                  link_base=link_base, tuning=tuning_note(suite_cfg))
        sections.append(text)
        # Tables 1 and 2, the funnel and the heat maps are laid out per (dataset, mode) view, "dataset · mode"
        llm_views = sorted({f"{r.dataset} · {r.mode}" for r in runs if r.model in ("action_llm", "karma")
                            and r.dataset not in problems})
        ks = sorted(suite_cfg.eval.ks)
        if llm_views and any(r.model == "karma" for r in runs):
            sections.append(render_table1(current, suite=suite,
                                          suite_version=str(suite_cfg.suite_version), seeds=list(suite_cfg.seeds),
                                          ks=(ks[0], ks[-1]), datasets=llm_views))
            pairs = sorted({(r.dataset, r.mode) for r in runs if r.model == "karma"
                            and r.dataset not in problems})
            sections.append(render_table1_paired(current, suite=suite, suite_version=str(suite_cfg.suite_version),
                                                 views=pairs, seeds=list(suite_cfg.seeds), ks=(ks[0], ks[-1])))
            sections.append(render_paper_comparison(current, suite=suite, suite_version=str(suite_cfg.suite_version),
                                                    views=pairs, seeds=list(suite_cfg.seeds), ks=(ks[0], ks[-1]),
                                                    results_dir=results, funnel_results=funnel_results))
        if any(r.model == "karma_gen" and r.variant.startswith("objective_") for r in runs):
            views = sorted({(r.dataset, r.mode) for r in runs if r.model == "karma_gen" and r.dataset not in problems})
            sections.append(render_table2_objectives(current, suite=suite, suite_version=str(suite_cfg.suite_version),
                                                     views=views, seeds=list(suite_cfg.seeds), ks=(ks[0], ks[-1]),
                                                     link_base=link_base))
        if any(r.model == "karma_gen" for r in runs):
            sections.append(render_table2(current, suite=suite,
                                          suite_version=str(suite_cfg.suite_version), seeds=list(suite_cfg.seeds),
                                          ks=(ks[0], ks[-1]), datasets=llm_views,
                                          link_base=link_base))
        funnel = render_funnel(current, funnel_results, suite=suite,
                               suite_version=str(suite_cfg.suite_version), seeds=list(suite_cfg.seeds))
        if "### " in funnel:
            sections.append(funnel)
        heatmaps = render_attention_comparison(current, suite=suite,
                                               suite_version=str(suite_cfg.suite_version),
                                               figures_dir=results / "figures",
                                               link_base=link_base)
        if heatmaps:
            sections.append(heatmaps)
        profiles = render_collapse_profiles(current, suite=suite, suite_version=str(suite_cfg.suite_version),
                                            figures_dir=results / "figures", link_base=link_base)
        if profiles:
            sections.append(profiles)
        speed = render_perf(results, current, suite=suite, figures_dir=results / "figures", link_base=link_base)
        if speed:
            sections.append(speed)
    path = Path(cfg.leaderboard)
    write_leaderboard(path, "\n\n".join(sections) + "\n")
    print(f"wrote {path} ({', '.join(suites) or 'no records yet'})")
    return path

