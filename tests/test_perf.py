"""``python -m benchmark.perf`` on the embedded catalog: every number it reports exists and is sane, and the
leaderboard's speed section and cost-vs-quality front are built from it."""

import json

from benchmark import perf
from benchmark.perf_report import pareto, render_perf
from benchmark.records import Record

# tiny random LLM backbones: the test checks what perf measures and reports, not the real model's speed
SMALL = ["synthetic.n_items=120", "synthetic.n_users=60", "synthetic.image_size=16", "model.sasrec.hidden=8",
         "model.karma.tiny=true"]


def test_perf_measures_training_evaluation_and_inference(tmp_path):
    out = tmp_path / "perf" / "synthetic.json"
    assert perf.main(["--suite", "smoke", "--data-dir", str(tmp_path), "--steps", "1", "--repeats", "3",
                      "--models", "popularity:default", "sasrec:default", "action_llm:default", "karma:karma",
                      "--latency-impressions", "16", "--out", str(out), *SMALL]) == 0
    result = json.loads(out.read_text())
    assert result["models"]["popularity:default"]["training"] is None  # nothing to train
    for name in ("sasrec:default", "action_llm:default", "karma:karma"):
        m = result["models"][name]
        assert m["training"]["impressions_per_s"] > 0 and m["evaluation"]["users_per_s"] > 0
        assert m["evaluation"]["rank_over_plain_topk"] > 0 and m["peak_memory_mb"] > 0
        assert m["compute_device"] == "cpu"  # the default; device=cuda moves the timed model
    assert result["models"]["action_llm:default"]["training"]["tokens_per_s"] > 0  # the LLM counts its tokens
    assert result["models"]["sasrec:default"]["training"]["tokens_per_s"] is None
    assert result["karma_vs_action_only"]["identical_scores"] is True
    low, high = result["karma_vs_action_only"]["ratio_range_over_rounds"]["users"]
    assert 0 < low <= result["karma_vs_action_only"]["ratio_karma_over_action_only"]["users"] <= high
    assert result["karma_vs_action_only"]["first_per_round"] == ["action_llm", "karma", "action_llm"]  # A B, B A
    assert result["machine"]["cpu_count"] >= 1 and "git_revision" in result["machine"]
    section = render_perf(tmp_path, [], suite="smoke", figures_dir=tmp_path / "figures", link_base=tmp_path)
    assert "## Speed and memory" in section and "karma:karma" in section and "KARMA / action-only" in section


def _record(model, hr, train_s, seed=0):
    return Record({"suite": "full", "suite_version": "2", "dataset": "d", "mode": "coarse", "model": model,
                   "variant": "default", "seed": seed, "metrics": {"test": {"HR@10": hr}},
                   "timing": {"train_s": train_s}})


def test_the_pareto_front_keeps_only_undominated_models(tmp_path):
    points = [{"model": "cheap", "hr": 0.10, "train_s": 1.0}, {"model": "dominated", "hr": 0.09, "train_s": 5.0},
              {"model": "best", "hr": 0.20, "train_s": 50.0}]
    assert pareto(points, "train_s") == ["cheap", "best"]
    perf_file = tmp_path / "perf" / "d.json"
    perf_file.parent.mkdir()
    perf_file.write_text(json.dumps({
        "suite": "full", "dataset": "d", "mode": "coarse", "n_items": 10, "threads": 1, "command": "x",
        "models": {"sasrec:default": {"training": {"impressions_per_s": 1.0, "tokens_per_s": None},
                                      "evaluation": {"users_per_s": 5.0, "rank_over_plain_topk": 1.5,
                                                     "ms_per_request": 2.0}, "peak_memory_mb": 10.0}},
        "machine": {"device": "cpu", "load_average_before": [0.1], "load_average_after": [0.2]}}))
    records = [_record("sasrec", 0.2, 10.0, s) for s in range(3)] + [_record("popularity", 0.05, 0.0)]
    section = render_perf(tmp_path, records, suite="full", figures_dir=tmp_path / "fig", link_base=tmp_path)
    row = next(line for line in section.splitlines() if line.startswith("| sasrec:default") and "± " in line)
    assert [c.strip() for c in row.strip("|").split("|")] == ["sasrec:default", "3", "0.2000 ± 0.0000", "10", "2.00"]
    assert "by training time: popularity:default, sasrec:default" in section
    assert (tmp_path / "fig" / "d__coarse_cost.png").is_file()


def test_variants_on_the_action_only_inference_path_take_its_latency_and_others_do_not():
    from benchmark.perf_report import cost_points

    def rec(model, variant):
        return Record({**_record(model, 0.1, 5.0).data, "variant": variant})

    perf_result = {"dataset": "d", "mode": "coarse",
                   "models": {"action_llm:default": {"evaluation": {"ms_per_request": 27.0}}}}
    records = [rec("action_llm", "default"), rec("karma", "task2"), rec("karma_gen", "objective_flow")]
    got = {p["model"]: (p["ms_per_request"], p["latency_of_action_only"]) for p in cost_points(records, perf_result, "full")}
    # Task 2's heads are train-only: it scores like action-only; a generated retrieval embedding does not
    assert got == {"action_llm:default": (27.0, False), "karma:task2": (27.0, True),
                   "karma_gen:objective_flow": (None, False)}
