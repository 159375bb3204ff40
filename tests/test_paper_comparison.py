"""The paper-vs-benchmark section: the paper's numbers beside ours, computed from the records."""

from benchmark.paper_comparison import render_paper_comparison
from benchmark.records import Record


def _record(model, variant, seed, gauc, hr):
    return Record({"suite": "full", "suite_version": "2", "dataset": "d", "mode": "coarse", "model": model,
                   "variant": variant, "seed": seed, "metrics": {"test": {"gAUC": gauc, "HR@10": hr}},
                   "timing": {}})


def _funnel(model, variant, seed):  # a funnel result (benchmark.funnel.runs) of the KARMA runs
    return {"suite_version": "2", "dataset": "d", "mode": "coarse", "model": model, "variant": variant, "seed": seed,
            "ctr": {"lexical_popularity": {"delta_AUC": 0.002}}, "prerank": {"delta": {"delta": 0.03}},
            "recall": {"delta": {"delta": 0.01}}}


def test_our_deltas_are_computed_per_seed_beside_the_papers(tmp_path):
    records = [_record("action_llm", "default", s, 0.70, 0.10) for s in (0, 1)]
    records += [_record("karma", "karma", s, 0.71, 0.12 + 0.02 * s) for s in (0, 1)]
    text = render_paper_comparison(records, suite="full", suite_version="2", views=[("d", "coarse"), ("e", "coarse")],
                                   seeds=[0, 1], ks=(10, 50), results_dir=tmp_path,
                                   funnel_results=[_funnel("karma", "karma", s) for s in (0, 1)])
    assert "### d · coarse" in text and "### e · coarse" not in text  # a view without LLM records is left out
    karma = next(line for line in text.splitlines() if line.startswith("| Table 1: KARMA"))
    assert "+0.97 gAUC, +22.57 HR@200" in karma  # the paper's, as printed
    assert "+1.00 ± 0.00 gAUC" in karma and "+3.00 ± 12.71 HR@10" in karma  # ours: +2 and +4 points, t(1) interval
    assert "pending (0/2 seeds)" in next(line for line in text.splitlines() if line.startswith("| Table 1: + Task 1"))
    prerank = next(line for line in text.splitlines() if line.startswith("| Pre-ranking"))
    assert "KARMA +3.00" in prerank and "action-only pending" in prerank
