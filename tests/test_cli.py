"""The command line and the suite runner, end to end on a tiny embedded catalog."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.run import main
from benchmark.runner.execute import artifact_path

TINY = ["synthetic.n_items=120", "synthetic.n_users=80", "synthetic.image_size=16",
        "train.max_epochs=2", "model.sasrec.hidden=8", "train.progress=false", "models=[popularity,sasrec]"]
# The LLM family through the whole pipeline, on random tiny backbones (no weights needed).
TINY_LLM = [*TINY[:-1], "models=[action_llm,hllm,karma:karma]", "model.karma.tiny=true", "model.hllm.tiny=true",
            "model.karma.retrieval_dim=16", "model.hllm.num_negatives=16"]


def _args(tmp_path: Path) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
            f"leaderboard={tmp_path / 'leaderboard.md'}"]


def test_hugging_face_datasets_is_not_shadowed():
    import datasets

    assert hasattr(datasets, "load_dataset"), datasets.__file__
    assert "site-packages" in datasets.__file__ or "dist-packages" in datasets.__file__


def test_unknown_suite_model_and_key_list_the_valid_choices(tmp_path, capsys):
    with pytest.raises(SystemExit, match="valid suites: full, smoke"):
        main(["--suite", "nope"])
    with pytest.raises(SystemExit, match="valid models: popularity, query_pop, bm25, sasrec, action_llm, hllm, karma"):
        main(["--suite", "smoke", "models=[nope]"])
    with pytest.raises(SystemExit, match=r"(?s)train\.nope.*valid keys:.*train\.patience"):
        main(["--suite", "smoke", "train.nope=1"])
    with pytest.raises(SystemExit, match="unknown dataset 'nope/x'"):
        main(["--suite", "smoke", "datasets=[nope/x]"])
    # a value is checked when the config is composed, before any run: never an untrained model on the board
    with pytest.raises(SystemExit, match="max_epochs"):
        main(["--suite", "smoke", "train.max_epochs=-3"])
    with pytest.raises(SystemExit, match="adapt.query must be one of none, coarse, hem"):
        main(["--suite", "smoke", "adapt.query=title"])


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    assert main(["--suite", "smoke", "--dry-run", *_args(tmp_path), "seeds=[0,1]", "models=[popularity,sasrec]"]) == 0
    out = capsys.readouterr().out
    assert "1 datasets x 2 models/variants x 2 seeds" in out and out.count("[to run]") == 4
    assert not (tmp_path / "results").exists()
    # a variant named twice (alone and through its model) is planned once
    assert main(["--suite", "smoke", "--dry-run", *_args(tmp_path), "seeds=[0]", "models=[karma,karma:karma]"]) == 0
    out = capsys.readouterr().out
    assert "1 datasets x 3 models/variants x 1 seeds" in out and out.count("karma        karma") == 1


def test_full_suite_reports_missing_real_data_in_the_plan(tmp_path, capsys):
    main(["--suite", "full", "--dry-run", *_args(tmp_path), "datasets=[synthetic,amazon2018/Gift_Cards]"])
    assert "! amazon2018/Gift_Cards: no files under" in capsys.readouterr().out


def test_a_scope_plans_a_model_only_on_its_datasets_and_modes(tmp_path, capsys):
    base = ["--suite", "full", "--dry-run", *_args(tmp_path), "datasets=[synthetic,synthetic@300users]",
            "models=[bm25,hllm]", "seeds=[0]"]
    assert main([*base, "scope.hllm.datasets=[]", "scope.hllm.modes=[]"]) == 0  # empty: all of the suite's
    planned = [line.split()[2:5] for line in capsys.readouterr().out.splitlines() if "[to run]" in line]
    assert sorted(p for p in planned if p[2] == "hllm") == sorted([d, m, "hllm"] for m in ("coarse", "hem", "none")
                                                                  for d in ("synthetic", "synthetic@300users"))
    assert main([*base, "scope={hllm: {datasets: [synthetic@300users], modes: [coarse]}}"]) == 0
    planned = [line.split()[2:5] for line in capsys.readouterr().out.splitlines() if "[to run]" in line]
    assert [p for p in planned if p[2] == "hllm"] == [["synthetic@300users", "coarse", "hllm"]]
    assert len([p for p in planned if p[2] == "bm25"]) == 4  # an unscoped model still runs everywhere
    from benchmark.config import RunConfig, Scope
    from benchmark.runner.plan import check_scope

    with pytest.raises(KeyError, match="valid models"):  # a typo would otherwise silently drop the model's runs
        check_scope(RunConfig(scope={"hlm": Scope(modes=["coarse"])}))
    with pytest.raises(ValueError, match="synthetc"):
        check_scope(RunConfig(scope={"hllm": Scope(datasets=["synthetc@300users"])}))
    with pytest.raises(SystemExit, match="scope.hllm.modes must be among none, coarse, hem"):
        main([*base, "scope.hllm.modes=[title]"])
    assert main([*base, "scope={hllm: {datasets: [unisrec/Scientfic@1020users]}}"]) == 0
    assert "! scope.hllm.datasets names unisrec/Scientfic@1020users, not a dataset of this plan" in capsys.readouterr().out
    # the leaderboard's plan is the suite file's widened by the command line's: scopes too
    from benchmark.runner.report import widen_scope

    narrow, wide = Scope(["a"], ["coarse"]), Scope(["b"], [])
    assert widen_scope({"hllm": narrow}, {"hllm": wide}) == {"hllm": Scope(["a", "b"], [])}
    assert widen_scope({"hllm": narrow}, {}) == {}  # unscoped on one side: everywhere


def test_strict_with_jobs_is_refused_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--suite", "smoke", *_args(tmp_path), *TINY, "strict=true", "--jobs", "2"])
    assert "strict=true stops the suite at its first bad record" in capsys.readouterr().err


def test_smoke_suite_writes_records_and_leaderboard_then_skips_done_runs(tmp_path, capsys):
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY]) == 0
    records = sorted((tmp_path / "results" / "records" / "smoke" / "synthetic" / "none").glob("*.json"))
    assert [r.name for r in records] == ["popularity__default__seed0.json", "sasrec__default__seed0.json"]
    record = json.loads(records[1].read_text())
    assert record["config"]["model_config"]["hidden"] == 8
    assert record["selection"]["epochs_run"] >= 1 and record["data_fingerprint"]
    assert 0 <= record["metrics"]["test"]["HR@10"] <= 1 and record["per_impression"].endswith(".npz")
    assert (records[1].parent / record["per_impression"]).exists()
    board = (tmp_path / "leaderboard.md").read_text()
    assert "do not edit" in board and "sasrec" in board and "popularity" in board
    capsys.readouterr()
    before = records[1].stat().st_mtime_ns
    assert main(["--suite", "smoke", "--dry-run", *_args(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert out.count("[done]") == 2 and "runs to do" not in out
    # the plan numbers its units and estimates what is left from the done runs' own times
    assert main(["--suite", "smoke", "--dry-run", *_args(tmp_path), *TINY, "seeds=[0,1]"]) == 0
    out = capsys.readouterr().out
    assert "unit 1   synthetic" in out and "2 runs to do in 2 units" in out and "for the 2 with a done run" in out
    from benchmark.runner.plan import estimate_seconds
    from benchmark.runner.spec import RunSpec

    done = [RunSpec("synthetic", "none", m, "default", 0, records[i]) for i, m in enumerate(["popularity", "sasrec"])]
    timing = json.loads(records[1].read_text())["timing"]
    todo = [RunSpec("synthetic", "none", "sasrec", "default", 1, Path("a")),  # its unit's time
            RunSpec("synthetic", "coarse", "sasrec", "default", 0, Path("b")),  # the same model in another mode
            RunSpec("synthetic", "none", "bm25", "default", 0, Path("c"))]  # nothing to go by
    total, unknown = estimate_seconds(todo, done)
    assert total == pytest.approx(2 * (timing["train_s"] + timing["eval_s"])) and unknown == 1
    # a stale run with no done peer goes by its own old record
    stale = RunSpec("synthetic", "hem", "sasrec2", "default", 0, records[1], stale=True)
    assert estimate_seconds([stale], done) == (pytest.approx(timing["train_s"] + timing["eval_s"]), 0)
    # ... and so does another seed of it with no record yet; a variant never run goes by its model's runs
    sibling = RunSpec("synthetic", "hem", "sasrec2", "default", 1, Path("d"))
    variant = RunSpec("synthetic", "none", "sasrec", "untried", 0, Path("e"))
    assert estimate_seconds([stale, sibling, variant], done) == (pytest.approx(3 * (timing["train_s"] + timing["eval_s"])), 0)
    assert estimate_seconds([sibling], done) == (0.0, 1)  # without the stale record to go by
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY]) == 0
    assert records[1].stat().st_mtime_ns == before  # not re-run
    # a run restricted to one model regenerates the whole suite's leaderboard, not just that model
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY[:-1], "models=[popularity]", "--leaderboard-only"]) == 0
    row = next(line for line in (tmp_path / "leaderboard.md").read_text().splitlines() if line.startswith("| sasrec"))
    assert "1/1" in row and "missing" not in row
    # ... and one restricted to another query mode keeps the suite's own modes' views
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY, "modes=[hem]", "--leaderboard-only"]) == 0
    headings = [line for line in (tmp_path / "leaderboard.md").read_text().splitlines() if line.startswith("### ")]
    assert {"### synthetic · coarse", "### synthetic · hem"} <= set(headings)


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "benchmark.run", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--dry-run" in out and "--data-dir" in out and "full" in out


def test_search_tunes_on_validation_and_the_record_names_the_selected_trial(tmp_path, capsys):
    grid = ["search.enabled=true", "search.trials=2", "+search.grids.sasrec={model.sasrec.lr:[0.01,0.0001]}"]
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY, "models=[sasrec]", *grid]) == 0
    folder = tmp_path / "results" / "records" / "smoke" / "synthetic" / "none"
    search_file = tmp_path / "results" / "search" / "smoke" / "synthetic" / "none" / "sasrec__default.json"
    trials = json.loads(search_file.read_text())["trials"]
    assert [t["overrides"]["model.sasrec.lr"] for t in trials] == [0.01, 0.0001]
    record = json.loads((folder / "sasrec__default__seed0.json").read_text())
    best = max(trials, key=lambda t: t["valid"])
    assert record["search"]["selected"] == best["overrides"]
    assert record["config"]["model_config"]["lr"] == best["overrides"]["model.sasrec.lr"]
    # seed 0 is the search seed: its run is the selected trial itself, not trained a second time ...
    assert record["timing"]["reused_search_trial"] and record["metrics"]["valid"]["NDCG@10"] == best["valid"]
    assert record["timing"]["train_s"] == best["train_s"] > 0  # one clock: the trainer's (kept across resumes)
    # ... and is what training it again gives (trials read back from the file are not kept in memory)
    assert main(["--suite", "smoke", "--overwrite", *_args(tmp_path), *TINY, "models=[sasrec]", *grid]) == 0
    again = json.loads((folder / "sasrec__default__seed0.json").read_text())
    assert not again["timing"]["reused_search_trial"]
    assert again["metrics"]["test"] == record["metrics"]["test"]
    assert json.loads(search_file.read_text())["trials"] == trials  # the search was not re-run
    # a tuned field on the command line does not make the records stale; an untuned one does, and
    # re-runs the search too
    capsys.readouterr()
    assert main(["--suite", "smoke", "--dry-run", *_args(tmp_path), *TINY, "models=[sasrec]", *grid,
                 "model.sasrec.lr=0.5"]) == 0
    assert "[done]" in capsys.readouterr().out
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY, "models=[sasrec]", *grid, "train.patience=1"]) == 0
    rerun = json.loads(search_file.read_text())["trials"]
    assert len(rerun) == 2 and rerun[0]["settings"]["train"]["patience"] == 1 != trials[0]["settings"]["train"]["patience"]
    assert json.loads((folder / "sasrec__default__seed0.json").read_text())["config"]["train"]["patience"] == 1


def test_the_search_seeds_run_takes_the_selected_trial_from_a_search_another_process_ran(tmp_path, capsys):
    """A unit whose search ran in another process (here: one that ran seed 1 only; in the full suite, a variant
    tuned like this model) leaves the selected trial's finished checkpoint; seed 0's run resumes from it and
    ends with the record training it in the search's own process gives."""
    grid = ["search.enabled=true", "search.trials=2", "+search.grids.sasrec={model.sasrec.lr:[0.01,0.0001]}"]
    args = [*_args(tmp_path), *TINY, "models=[sasrec]", *grid]
    assert main(["--suite", "smoke", *args, "seeds=[1]"]) == 0
    capsys.readouterr()
    assert main(["--suite", "smoke", *args, "seeds=[0]"]) == 0
    out = capsys.readouterr().out
    assert "sasrec:default s0: resumed after epoch" in out and "search sasrec" not in out
    folder = tmp_path / "results" / "records" / "smoke" / "synthetic" / "none"
    taken = json.loads((folder / "sasrec__default__seed0.json").read_text())
    reference = tmp_path / "reference"
    assert main(["--suite", "smoke", *_args(reference), *TINY, "models=[sasrec]", *grid, "seeds=[0]"]) == 0
    same_process = json.loads((reference / "results" / "records" / "smoke" / "synthetic" / "none"
                               / "sasrec__default__seed0.json").read_text())
    assert same_process["timing"]["reused_search_trial"] and not taken["timing"]["reused_search_trial"]
    assert taken["metrics"] == same_process["metrics"] and taken["selection"] == same_process["selection"]
    from benchmark.run import compose_config
    from benchmark.runner.execute import checkpoint_dir
    cfg = compose_config("smoke", [f"results_dir={tmp_path / 'results'}"])
    assert not list(checkpoint_dir(cfg).rglob("*.pt"))  # the record is written: nothing left to resume


def test_a_run_that_dies_while_evaluating_is_not_trained_again(tmp_path, capsys, monkeypatch):
    """Training ends before the trained state and the record are written: a process that dies in between
    (here: saving the artifact fails) leaves the finished run's checkpoint, and the next one evaluates from
    it, to the record an uninterrupted run writes, without training again."""
    from benchmark.run import compose_config
    from benchmark.runner import execute
    from benchmark.runner.execute import checkpoint_dir

    args = [*_args(tmp_path), *TINY, "models=[sasrec]"]
    save = execute.save_artifacts

    def dies(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(execute, "save_artifacts", dies)
    assert main(["--suite", "smoke", *args]) != 0
    checkpoints = checkpoint_dir(compose_config("smoke", [f"results_dir={tmp_path / 'results'}"]))
    assert [p.name.split("__")[0] for p in checkpoints.rglob("*.pt")] == ["sasrec"]
    monkeypatch.setattr(execute, "save_artifacts", save)
    capsys.readouterr()
    assert main(["--suite", "smoke", *args]) == 0
    out = capsys.readouterr().out
    assert "sasrec:default s0: resumed after epoch" in out and "s0 epoch 1:" not in out
    assert not list(checkpoints.rglob("*.pt"))
    taken = json.loads((tmp_path / "results" / "records" / "smoke" / "synthetic" / "none"
                        / "sasrec__default__seed0.json").read_text())
    reference = tmp_path / "reference"
    assert main(["--suite", "smoke", *_args(reference), *TINY, "models=[sasrec]"]) == 0
    plain = json.loads((reference / "results" / "records" / "smoke" / "synthetic" / "none"
                        / "sasrec__default__seed0.json").read_text())
    assert taken["metrics"] == plain["metrics"] and taken["selection"] == plain["selection"]


def test_records_of_a_changed_suite_are_stale_rerun_and_left_off_the_leaderboard(tmp_path, capsys):
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY]) == 0
    capsys.readouterr()
    changed = [*TINY, "model.sasrec.dropout=0.4"]  # an untuned setting of sasrec only
    assert main(["--suite", "smoke", "--dry-run", *_args(tmp_path), *changed]) == 0
    out = capsys.readouterr().out
    assert out.count("[done]") == 1 and out.count("[stale") == 1 and "sasrec" in out.split("[stale")[0].splitlines()[-1]
    assert main(["--suite", "smoke", "--leaderboard-only", *_args(tmp_path), *changed]) == 0
    board = (tmp_path / "leaderboard.md").read_text()
    assert "1 stale records" in board
    row = next(line for line in board.splitlines() if line.startswith("| sasrec"))
    assert "missing (0/1)" in row


def test_search_refuses_unequal_budgets(tmp_path):
    grid = ["search.enabled=true", "search.trials=2", "+search.grids.sasrec={model.sasrec.lr:[0.01,0.001,0.1]}"]
    with pytest.raises(ValueError, match="same tuning budget"):
        main(["--suite", "smoke", *_args(tmp_path), *TINY, "models=[sasrec]", *grid])


def test_llm_family_runs_through_the_pipeline_and_fills_table_1(tmp_path):
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY_LLM]) == 0
    folder = tmp_path / "results" / "records" / "smoke" / "synthetic" / "coarse"
    names = sorted(p.name for p in folder.glob("*.json"))
    assert names == ["action_llm__default__seed0.json", "action_llm__warmup__seed0.json", "hllm__default__seed0.json",
                     "karma__karma__seed0.json"]
    warm = json.loads((folder / "action_llm__warmup__seed0.json").read_text())
    assert warm["selection"]["history"][0]["stage"] == "warmup" and warm["config"]["model_config"]["w_task1"] == 0
    assert warm["mode"] == "coarse" and warm["adaptation"]["query"] == "coarse"
    karma = json.loads((folder / "karma__karma__seed0.json").read_text())
    assert karma["config"]["model_config"]["w_task1"] > 0 and karma["selection"]["history"][0]["stage"] == "warmup"
    # what a reader needs to trust an LLM row: its weights, precision and throughput, in every record
    info = karma["model_info"]
    assert info["weights"] and info["dtype"] and 0 <= info["target_text"]["digit_token_share"] <= 1
    assert karma["timing"]["train_tokens_per_s"] > 0 and karma["timing"]["train_impressions_per_s"] > 0
    board = (tmp_path / "leaderboard.md").read_text()
    assert "Table 1" in board and "KARMA: Task 1 + Task 2" in board
    paired = board.split("## Table 1, paired")[1].split("\n## ")[0]
    assert "| KARMA: Task 1 + Task 2 " in paired and "p=" in paired  # a paired test vs action-only, per row
    assert "| + semantic warm-up only (no Task 1 / 2) " in paired
    # the funnel pass evaluates every run from its stored embeddings; collapse diagnostics are per run
    funnel_file = tmp_path / "results" / "funnel" / "smoke" / "synthetic" / "coarse" / "karma__karma__seed0.json"
    funnel = json.loads(funnel_file.read_text())
    assert {"ctr", "prerank", "recall"} <= set(funnel) and funnel["source"]["record"].endswith("karma__karma__seed0.json")
    assert 0 <= funnel["prerank"]["HR_fused"] <= 1 and "delta_gAUC" in funnel["ctr"]["popularity"]
    assert funnel["recall"]["lexical_valid_hr_by_k"][str(funnel["recall"]["K"])] <= 0.5
    before = karma["diagnostics"]["before_training"]  # the same statistics on the untrained model
    assert 0 < before["item_encoder_attention"]["norm_entropy"] <= 1 and before["decoder_attention"]["layers"]
    attention = karma["diagnostics"]["item_encoder_attention"]
    assert 0 < attention["norm_entropy"] <= 1 and Path(attention["heatmap"]).exists()
    assert "Funnel evaluations" in board and "synthetic · coarse: collapse" in board
    assert "Collapse per layer and head" in board  # before training, action-only and KARMA per decoder layer
    probes = [h["probe"] for h in karma["selection"]["history"] if h["stage"] == "main"]
    assert probes and all(0 < p["norm_entropy"] <= 1 for p in probes)  # the item encoder after every epoch
    assert "item encoder at equal epochs" in board
    decoder = karma["diagnostics"]["decoder_attention"]
    assert decoder["layers"] and all(0 < layer["norm_entropy"] <= 1 for layer in decoder["layers"])
    assert 0 < decoder["norm_entropy"] <= 1 and 0 < decoder["first"] <= 1 and Path(decoder["heatmap"]).exists()
    # action-only vs KARMA heat maps side by side, linked from the leaderboard
    assert "action-only LLM vs KARMA" in board
    compare = tmp_path / "results" / "figures" / "attention_compare" / "synthetic__coarse__decoder_attention.png"
    assert compare.exists() and "attention_compare/synthetic__coarse__decoder_attention.png" in board
    # each run keeps its trained state and the embeddings its metrics came from (re-evaluation
    # without retraining): the saved embeddings rank every test target where the record says, up
    # to the history items the evaluator masks
    artifact = torch.load(artifact_path(folder / "karma__karma__seed0.json", tmp_path / "results"), weights_only=False)
    assert any(".lora_" in k for k in artifact["state"]) and artifact["initial_item_embeddings"] is not None
    per = np.load(folder / karma["per_impression"])
    scores = artifact["user_embeddings_test"] @ artifact["item_embeddings"].T
    unmasked = (scores >= scores[np.arange(len(scores)), per["target"]][:, None]).sum(1)
    assert (unmasked >= per["rank"]).all() and (unmasked - per["rank"] <= 20).all()


def test_multimodal_row_and_table_2_come_from_the_suite(tmp_path):
    models = "models=[karma:karma,karma_visual,karma_gen:generators,karma_gen:objective_mse]"
    grid = ["search.enabled=true", "search.trials=2", "+search.grids.action_llm={model.karma.lr:[0.001,0.003]}",
            "model.karma.head_hidden=16",
            "model.karma.generator_steps=3", "funnel.generator_samples=3", "funnel.generator_impressions=20",
            "funnel.generator_updates=3"]
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY_LLM[:6], models, *TINY_LLM[7:], *grid]) == 0
    folder = tmp_path / "results" / "records" / "smoke" / "synthetic" / "coarse"
    karma = json.loads((folder / "karma__karma__seed0.json").read_text())
    visual = json.loads((folder / "karma_visual__visual__seed0.json").read_text())
    gen = json.loads((folder / "karma_gen__generators__seed0.json").read_text())
    # the visual run names its feature encoder and its image coverage, and trained the visual head
    assert visual["visual_features"]["encoder"] == "tiny-pixels"
    assert visual["adaptation"]["images"]["with_image"] == visual["data_stats"]["items"]
    assert "visual" in visual["selection"]["history"][-1]
    # every Table 1 row and Table 2's run reuse the action-only LLM's search (no trials of their own)
    for record in (karma, visual, gen):
        assert record["search"]["tuned_like"] == "action_llm:default"
        assert record["search"]["selected"] == karma["search"]["selected"]
    searches = tmp_path / "results" / "search" / "smoke" / "synthetic" / "coarse"
    assert [p.name for p in searches.glob("*.json")] == ["action_llm__default.json"]
    assert gen["metrics"]["test"] == karma["metrics"]["test"]  # detached readouts leave KARMA's own path unchanged
    for name in ("diffusion", "diffusion_x0", "flow", "ar_mse"):
        assert 0 <= gen["table2"][name]["HR@10"] <= 1 and 0 <= gen["table2"][name]["gAUC"] <= 1
    assert gen["table2"]["fit"]["updates"] == 3
    assert set(gen["table2"]["fit"]["final_losses"]) == {"gen_diffusion", "gen_diffusion_x0", "gen_flow", "gen_mse"}
    analysis = gen["table2"]["analysis"]
    assert analysis["samples"] == 3 and min(analysis["spread"].values()) >= 0 and Path(analysis["figure"]).exists()
    board = (tmp_path / "leaderboard.md").read_text()
    assert "+ visual reconstruction" in board and "## Table 2" in board and "Mode-seeking vs mean-seeking" in board
    assert "diffusion (x0 pred.) generator (1 sample)" in board and "diffusion (x0 pred.), mean of 3" in board
    # Table 2 as a training objective: KARMA whose retrieval embedding the MSE generator produces
    mse = json.loads((folder / "karma_gen__objective_mse__seed0.json").read_text())
    assert mse["config"]["model_config"]["retrieval_objective"] == "mse" and "generator" in mse["selection"]["history"][-1]
    assert mse["metrics"]["test"] != karma["metrics"]["test"]  # it retrieves with the generated embedding
    objectives = board.split("## Table 2, as training objectives")[1].split("\n## ")[0]
    assert "| AR + MSE generates u " in objectives and "p=" in objectives


def test_a_failed_run_lets_the_rest_finish_then_the_suite_exits_non_zero(tmp_path, monkeypatch, capsys):
    import benchmark.runner.suite as suite

    real = suite.run_one

    def flaky(run, *args, **kwargs):
        if run.model == "sasrec":
            raise RuntimeError("boom")
        return real(run, *args, **kwargs)

    monkeypatch.setattr(suite, "run_one", flaky)
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY]) == 1
    err = capsys.readouterr().err
    assert "runs that failed or were skipped:" in err and "sasrec:default seed 0: RuntimeError: boom" in err
    records = tmp_path / "results" / "records" / "smoke" / "synthetic" / "none"
    assert (records / "popularity__default__seed0.json").exists()  # the other run finished
    assert not (records / "sasrec__default__seed0.json").exists()
    assert (tmp_path / "leaderboard.md").exists()  # and the leaderboard was written


def _bad_sequence_file(root: Path) -> None:
    """An ID-only dataset, s3rec/Tiny, whose line 3 is not space-separated ids (a bad record)."""
    lines = [f"u{u} " + " ".join(f"i{(u + k) % 30}" for k in range(6)) for u in range(40)]
    lines.insert(2, "u99\tnot\tids")
    folder = root / "s3rec" / "Tiny"
    folder.mkdir(parents=True)
    (folder / "user_sequence.txt").write_text("\n".join(lines) + "\n")


def test_strict_stops_at_the_first_bad_record_and_exits_non_zero(tmp_path, capsys):
    _bad_sequence_file(tmp_path / "data")
    args = [*_args(tmp_path), *TINY[:-1], "models=[popularity]", "datasets=[s3rec/Tiny,synthetic]"]
    assert main(["--suite", "smoke", *args, "strict=true"]) == 2
    err = capsys.readouterr().err
    assert "strict mode" in err and "user_sequence.txt:3" in err and "1 later runs not run" in err
    records = tmp_path / "results" / "records" / "smoke"
    assert not list(records.rglob("*.json"))  # the synthetic run, planned after it, never ran
    assert not (tmp_path / "leaderboard.md").exists()
    # without strict the record is counted and skipped, both datasets run and the funnel pass passes over
    # the ID-only one (it has no search mode to evaluate in)
    assert main(["--suite", "smoke", *args]) == 0
    assert sorted(p.parent.parent.name for p in records.rglob("*.json")) == ["s3rec__Tiny", "synthetic"]
    assert (tmp_path / "leaderboard.md").exists()


def test_strict_stops_at_the_first_failed_run(tmp_path, monkeypatch, capsys):
    import benchmark.runner.suite as suite

    called = []

    def crash(run, *args, **kwargs):
        called.append(run.model)
        raise RuntimeError("boom")

    monkeypatch.setattr(suite, "run_one", crash)
    assert main(["--suite", "smoke", *_args(tmp_path), *TINY, "strict=true"]) == 2
    assert called == ["popularity"]  # sasrec, planned after it, never ran
    err = capsys.readouterr().err
    assert "strict mode: stopped at the first failed or skipped run" in err and "RuntimeError: boom" in err
    assert not (tmp_path / "leaderboard.md").exists()


@pytest.mark.parametrize("override,message", [
    ("modes=[bogus]", "modes must be a non-empty list of none, coarse, hem"),
    ("model.sasrec.loss=foo", "'ce' or 'sampled'"),
    ("model.sasrec.heads=3", "heads must divide hidden"),
    ("eval.selection_metric=HR@7", "K in eval.ks"),
    ("model.karma.w_task1=-1", "loss weights"),
    ("model.karma.autocast=fp8", "'bfloat16', 'none', 'auto'"),
    ("model.hllm.init_logit_scale=1000", "init_logit_scale in"),
    ("train.max_epochs=-3", "must be >= 1"),
    ("train.grad_clip=-1", "train.grad_clip must be >= 0"),
    ("seeds=[-1]", "seeds >= 0"),
    ("eval.tail_max_train=-1", "eval.tail_max_train >= 0"),
    ("funnel.ctr_folds=1", "funnel.ctr_folds must be >= 2, got 1"),
    ("funnel.generator_updates=0", "funnel.generator_updates must be >= 1, got 0"),
    ("funnel.n_boot=0", "funnel.n_boot must be >= 1"),
    ("funnel.probe_items=0", "funnel.probe_items must be >= 1"),
    ("funnel.recall_max_lexical_hr=0", "funnel.recall_max_lexical_hr must be in (0, 1]"),
    ("search.trials=0", "search.trials must be >= 1"),
    ("search.seed=-1", "search.seed >= 0"),
    ("images.timeout_s=0", "images.timeout_s must be > 0"),
    ("adapt.k_core=-1", "adapt.k_core must be >= 0"),
    ("adapt.n_exposures=0", "adapt.n_exposures must be >= 1"),
    ("adapt.max_history=0", "adapt.max_history must be >= 1"),
    ("adapt.min_user_events=2", "adapt.min_user_events must be >= 3"),
    ("adapt.test_frac=0.95", "adapt.valid_frac and adapt.test_frac must be > 0 with a sum < 1"),
    ("model.sasrec.lr=0", "lr and init_std > 0"),
    ("model.karma.lr=0", "lr and lora_alpha must be > 0"),
    ("model.hllm.lr=-1e-3", "lr and lora_alpha must be > 0"),
    ("model.karma.score_scale=0", "score_scale and temperature must be > 0"),
    ("model.karma.temperature=-0.1", "score_scale and temperature must be > 0"),
    ("model.hllm.item_tokens=0", "item_tokens >= 1"),
    ("model.bm25.popularity_weight=-1", "model.bm25.popularity_weight must be >= 0"),
    ("model.query_pop.match_weight=0", "model.query_pop.match_weight must be > 0"),
    ("synthetic.explore_prob=1.5", "synthetic.explore_prob must be in [0, 1]"),
])
def test_bad_settings_fail_when_the_config_is_composed_with_the_valid_choices(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--suite", "smoke", "--dry-run", *_args(tmp_path), override])
    assert message in str(exit_info.value.code)  # exits with the message, before any run


def test_a_setting_a_variant_never_reads_does_not_make_its_records_stale():
    from benchmark.run import compose_config
    from benchmark.runner.settings import untuned_settings
    from benchmark.runner.staleness import settings_agree

    cfg = compose_config("full", ["model.karma.decode_budget=300"])
    for model, variant, reads in (("action_llm", "default", False), ("action_llm", "warmup", False),
                                  ("karma", "task1", True), ("karma", "karma", True)):
        want = untuned_settings(cfg, model, variant)
        recorded = {**want, "model_config": {**want["model_config"], "decode_budget": 1000}}  # a record made at 1000
        assert ("decode_budget" in want["model_config"]) is reads
        assert settings_agree(want, recorded, ('patience', 9)) is not reads  # stale only where Task 1 / Task 2 read the budget


PATIENCE_9 = ("patience", 9)  # a run that patience stopped after epoch 9


def test_a_field_added_with_a_new_behaviour_makes_older_records_stale_and_others_do_not():
    from benchmark.run import compose_config
    from benchmark.runner.settings import untuned_settings
    from benchmark.runner.staleness import settings_agree

    cfg = compose_config("full", [])
    want = untuned_settings(cfg, "hllm", "default")
    assert want["model_config"]["match_input_norm"] is True
    older = {**want, "model_config": {k: v for k, v in want["model_config"].items() if k != "match_input_norm"}}
    assert not settings_agree(want, older, PATIENCE_9)  # saved before the field: it ran with the items as they were
    assert settings_agree({**want, "model_config": {**want["model_config"], "match_input_norm": False}}, older,
                          PATIENCE_9)
    no_use_exposures = {**want, "model_config": {k: v for k, v in want["model_config"].items()
                                                 if k != "use_exposures"}}
    assert settings_agree(want, no_use_exposures, PATIENCE_9)  # a field added with the old behaviour as its default


def test_baselines_never_import_the_evaluation_stage():
    """One direction of data flow: a baseline model may read the data schema and lexical scorer, never the
    harness that evaluates it (funnel, evaluation, runner)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    banned = ("benchmark.funnel", "benchmark.evaluate", "benchmark.runner")
    found = []
    for file in sorted((root / "baselines").glob("*.py")) + sorted((root / "karma").glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{file.name}: {n}" for n in names if n.startswith(banned)]
    assert not found, found


def test_a_raised_epoch_floor_retires_only_the_runs_patience_stopped_below_it():
    from benchmark.run import compose_config
    from benchmark.runner.settings import untuned_settings
    from benchmark.runner.staleness import settings_agree, trial_stop

    want = untuned_settings(compose_config("full", ["train.min_epochs=8"]), "sasrec", "default")
    assert want["train"]["min_epochs"] == 8
    older = {**want, "train": {k: v for k, v in want["train"].items() if k != "min_epochs"}}  # ran with no floor
    assert settings_agree(want, older, ("patience", 8)) and settings_agree(want, older, ("patience", 15))
    assert not settings_agree(want, older, ("patience", 7))  # the floor would have trained it on
    assert settings_agree(want, older, ("max_epochs", 5)) and settings_agree(want, older, ("nothing to train", None))
    assert not settings_agree(want, older, ("unknown", None))
    higher = {**want, "train": {**want["train"], "min_epochs": 10}}
    assert not settings_agree(want, higher, ("patience", 12))  # a lower floor might have stopped it sooner
    assert not settings_agree(want, {**older, "train": {**older["train"], "patience": 5}}, ("patience", 15))
    # a trial stops at max(best + patience, its floor), capped: best 1 + patience 3 stops after epoch 4
    stamped = {"settings": {"train": {"patience": 3, "max_epochs": 30}}}
    assert trial_stop({**stamped, "best_epoch": 1}) == ("patience", 4)
    assert trial_stop({**stamped, "best_epoch": 28}) == ("max_epochs", 30)
    floored = {"settings": {"train": {"patience": 3, "max_epochs": 30, "min_epochs": 8}}, "best_epoch": 1}
    assert trial_stop(floored) == ("patience", 8) and trial_stop({**stamped, "best_epoch": None})[0] == "nothing to train"


def test_a_search_that_selects_another_setting_makes_the_old_selection_stale(tmp_path, capsys):
    from benchmark.run import compose_config
    from benchmark.runner.spec import mode_config
    from benchmark.runner.staleness import record_is_current

    grid = ["search.enabled=true", "search.trials=2", "+search.grids.sasrec={model.sasrec.lr:[0.01,0.0001]}"]
    args = [*_args(tmp_path), *TINY, "models=[sasrec]", *grid]
    assert main(["--suite", "smoke", *args]) == 0
    cfg = compose_config("smoke", [f"data_dir={tmp_path / 'data'}", f"results_dir={tmp_path / 'results'}", *TINY,
                                   "models=[sasrec]", *grid])
    search_file = tmp_path / "results" / "search" / "smoke" / "synthetic" / "none" / "sasrec__default.json"
    record_file = tmp_path / "results" / "records" / "smoke" / "synthetic" / "none" / "sasrec__default__seed0.json"
    record, saved = json.loads(record_file.read_text()), json.loads(search_file.read_text())
    cfg = mode_config(cfg, record["mode"])
    assert record_is_current(record, cfg)
    other = next(t for t in saved["trials"] if t["overrides"] != record["search"]["selected"])
    other["valid"] = max(t["valid"] for t in saved["trials"]) + 1.0  # the other setting now wins
    search_file.write_text(json.dumps(saved))
    assert not record_is_current(record, cfg)
    saved["trials"].remove(other)  # its trial must train again: the record is not judged meanwhile
    search_file.write_text(json.dumps(saved))
    assert record_is_current(record, cfg)
    untuned = compose_config("smoke", [f"data_dir={tmp_path / 'data'}", f"results_dir={tmp_path / 'results'}",
                                       *TINY, "models=[sasrec]"])
    assert not record_is_current(record, mode_config(untuned, record["mode"]))  # the grid is gone: defaults now


def test_a_kept_checkpoint_lets_a_higher_epoch_cap_train_on_from_the_last_epoch(tmp_path, capsys):
    """keep_checkpoints=true (the full suite's setting) leaves each finished run's checkpoint; the same suite
    with a higher cap trains the stale run on from its last epoch, to the record of a run trained under the
    new cap from the start."""
    from benchmark.run import compose_config
    from benchmark.runner.execute import checkpoint_dir

    args = [*_args(tmp_path), *TINY, "models=[sasrec]", "keep_checkpoints=true", "train.patience=9"]
    assert main(["--suite", "smoke", *args]) == 0
    checkpoints = checkpoint_dir(compose_config("smoke", [f"results_dir={tmp_path / 'results'}"]))
    assert [p.name.split("__")[0] for p in checkpoints.rglob("*.pt")] == ["sasrec"]  # kept past its record
    capsys.readouterr()
    assert main(["--suite", "smoke", *args, "train.max_epochs=4"]) == 0
    out = capsys.readouterr().out
    assert "sasrec:default s0: resumed after epoch 2" in out and "s0 epoch 1:" not in out and "s0 epoch 3:" in out
    taken = json.loads((tmp_path / "results" / "records" / "smoke" / "synthetic" / "none"
                        / "sasrec__default__seed0.json").read_text())
    reference = tmp_path / "reference"
    assert main(["--suite", "smoke", *_args(reference), *TINY, "models=[sasrec]", "train.patience=9",
                 "train.max_epochs=4"]) == 0
    plain = json.loads((reference / "results" / "records" / "smoke" / "synthetic" / "none"
                        / "sasrec__default__seed0.json").read_text())
    assert taken["selection"]["epochs_run"] == 4
    assert taken["metrics"] == plain["metrics"] and taken["selection"] == plain["selection"]
