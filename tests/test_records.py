"""Run records (atomic, validated, traceable) and the leaderboard reporter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmark import leaderboard, machine, records
from benchmark.leaderboard import BANNER, Gate, render_leaderboard, write_leaderboard
from benchmark.machine import environment, peak_memory_mb
from benchmark.records import (
    Record,
    config_hash,
    read_per_impression,
    read_records,
    record_path,
    write_per_impression,
    write_record,
)

SUITE, VERSION = "mini", "1.0"


def make_record(dataset="amazon/beauty", model="sasrec", variant="ce", seed=0, ndcg=0.1, hr=0.2, mode="none",
                **extra):
    rec = {
        "schema": 2, "suite": SUITE, "suite_version": VERSION, "dataset": dataset, "mode": mode, "model": model,
        "variant": variant, "seed": seed, "config": {"lr": 1e-3, "seed": seed}, "config_hash": "0" * 16,
        "data_fingerprint": "fp123", "adaptation": {"query": "category"},
        "environment": {"git_revision": "abc123", "git_dirty": False},
        "timing": {"train_s": 10.0 + seed, "eval_s": 1.0, "peak_memory_mb": 500.0 + seed,
                   "train_impressions_per_s": None, "eval_users_per_s": 100.0},
        "selection": {"metric": "NDCG@10", "best_epoch": 3, "epochs_run": 5, "valid_value": 0.1},
        "metrics": {"valid": {"NDCG@10": ndcg}, "test": {"NDCG@10": ndcg, "HR@10": hr}, "test_tail": {}},
        "per_impression": None, "created": "2025-01-01T00:00:00Z",
        "data_stats": {"users": 1000, "items": 500, "impressions": 12345, "test_impressions": 1000},
    }
    rec.update(extra)
    return rec


# --------------------------------------------------------------------------- records


def test_record_path_layout(tmp_path):
    p = record_path(tmp_path, SUITE, "amazon/beauty", "coarse", "karma", "full", 2)
    assert p == tmp_path / "records" / SUITE / "amazon__beauty" / "coarse" / "karma__full__seed2.json"


def test_write_record_atomic_sorted_and_nan_as_null(tmp_path):
    p = record_path(tmp_path, SUITE, "amazon/beauty", "none", "sasrec", "ce", 0)
    rec = make_record(ndcg=float("nan"))
    rec["metrics"]["test"]["AUC"] = np.float32(0.5)
    write_record(p, rec)
    assert p.exists() and not list(p.parent.glob("*.tmp"))
    text = p.read_text()
    assert Record(json.loads(text)).metric("NDCG@10") is None and Record(json.loads(text)).metric("HR@10") == 0.2
    assert text.startswith('{\n "adaptation"')  # sorted keys, indent 1
    back = json.loads(text)
    assert back["metrics"]["test"]["NDCG@10"] is None and back["metrics"]["test"]["AUC"] == 0.5


def test_crash_during_write_keeps_old_record(tmp_path, monkeypatch):
    p = record_path(tmp_path, SUITE, "d", "none", "m", "v", 0)
    write_record(p, make_record(ndcg=0.3))
    before = p.read_text()

    def broken_dump(obj, fh, **kw):
        fh.write('{"schema": 1, "half": ')  # half a record, then the process "dies"
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(records.json, "dump", broken_dump)
    with pytest.raises(KeyboardInterrupt):
        write_record(p, make_record(ndcg=0.9))
    assert p.read_text() == before
    assert not list(p.parent.glob("*.tmp"))

    # and a first write that crashes leaves no record at all
    q = record_path(tmp_path, SUITE, "d", "none", "m", "v", 1)
    with pytest.raises(KeyboardInterrupt):
        write_record(q, make_record(seed=1))
    assert not q.exists() and not list(q.parent.glob("*.tmp"))


def test_required_keys_validated(tmp_path):
    rec = make_record()
    del rec["config_hash"], rec["data_fingerprint"]
    del rec["timing"]["train_s"]
    with pytest.raises(ValueError) as err:
        write_record(tmp_path / "x.json", rec)
    msg = str(err.value)
    assert "config_hash" in msg and "data_fingerprint" in msg and "timing.train_s" in msg
    assert not (tmp_path / "x.json").exists()


def test_read_records_skips_corrupt_with_warning(tmp_path):
    good = record_path(tmp_path, SUITE, "d", "none", "m", "v", 0)
    write_record(good, make_record(dataset="d", model="m", variant="v"))
    (good.parent / "m__v__seed1.json").write_text('{"schema": 1, "suite": ')  # truncated
    (good.parent / "m__v__seed2.json").write_text('{"schema": 1}')  # valid JSON, not a record
    (good.parent / "m__v__seed3.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.warns(RuntimeWarning, match="skipping unreadable run record"):
        got = read_records(tmp_path, SUITE)
    assert [r["seed"] for r in got] == [0]
    assert read_records(tmp_path, "no-such-suite") == []


def test_config_hash_stable_and_order_independent():
    a = {"model": {"dim": 64, "layers": 2}, "lr": 0.001, "seeds": [0, 1]}
    b = {"seeds": [0, 1], "lr": 0.001, "model": {"layers": 2, "dim": 64}}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash(a) == config_hash(json.loads(json.dumps(a)))
    assert config_hash(a) != config_hash({**a, "lr": 0.002})


def test_environment_keys(monkeypatch):
    monkeypatch.setattr(machine, "_git", lambda *a: None)  # no git process in tests
    env = environment()
    assert {"git_revision", "git_dirty", "python", "platform", "packages", "device"} <= set(env)
    assert env["git_revision"] == "unknown"
    assert set(env["packages"]) == {"torch", "transformers", "faiss", "numpy", "pandas", "hydra-core",
                                    "bm25s", "karma-bench"}
    assert env["packages"]["numpy"] == np.__version__
    assert env["device"].startswith(("cpu: ", "cuda: "))
    assert "hostname" not in json.dumps(env).lower()
    assert peak_memory_mb() > 0


def test_environment_says_whether_the_cpu_computes_bf16_or_emulates_it(monkeypatch):
    import torch  # noqa: F401  (the field is read only where torch is loaded)

    from benchmark import device

    monkeypatch.setattr(machine, "_git", lambda *a: None)
    for native, word in ((True, "native"), (False, "emulated")):
        monkeypatch.setattr(device, "native_bf16", lambda native=native: native)
        assert environment()["cpu_bf16"] == word


def test_dirty_flag_ignores_results_and_leaderboard(monkeypatch):
    def fake_git(*args):
        if args[0] == "rev-parse":
            return "deadbeef\n"
        return " M leaderboard.md\n?? results/records/x.json\n"

    monkeypatch.setattr(machine, "_git", fake_git)
    assert machine.git_state() == ("deadbeef", False)
    monkeypatch.setattr(machine, "_git", lambda *a: "deadbeef\n" if a[0] == "rev-parse" else " M benchmark/x.py\n")
    assert machine.git_state() == ("deadbeef", True)


def test_per_impression_round_trip(tmp_path):
    p = tmp_path / "records" / "r.npz"
    arrays = {"user": np.arange(5, dtype=np.int64), "ndcg": np.linspace(0, 1, 5, dtype=np.float32)}
    write_per_impression(p, arrays)
    assert p.exists() and not list(p.parent.glob("*.tmp*"))
    back = read_per_impression(p)
    assert set(back) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
        assert back[k].dtype == arrays[k].dtype


# --------------------------------------------------------------------------- leaderboard


def _plan(seeds=(0, 1, 2)):
    def entry(dataset, model, variant, status="planned", mode="none", query_use="optional"):
        return {"dataset": dataset, "mode": mode, "model": model, "variant": variant, "query_use": query_use,
                "seeds": list(seeds), "status": status}

    return [entry("amazon/beauty", "sasrec", "ce", query_use="ignored"), entry("amazon/beauty", "karma", "full"),
            entry("amazon/beauty", "hllm", "base"),
            entry("amazon/toys", "sasrec", "ce", status="dataset missing: raw files not found under data/raw/toys")]


def _records():
    recs = [make_record(model="sasrec", variant="ce", seed=s, ndcg=v, hr=0.3)
            for s, v in zip((0, 1, 2), (0.10, 0.12, 0.14), strict=True)]
    recs += [make_record(model="karma", variant="full", seed=s, ndcg=0.9) for s in (0, 2)]  # 2 of 3 seeds
    recs += [make_record(model="hllm", variant="base", seed=s, ndcg=0.2, hr=float("nan") if s == 1 else 0.4)
             for s in (0, 1, 2)]
    return [Record(r) for r in recs]


def _render(tmp_path, recs=None, plan=None, figures=True, gate=None):
    return render_leaderboard(_records() if recs is None else recs, plan or _plan(), suite=SUITE,
                              suite_version=VERSION, revision="abc123", metrics=["NDCG@10", "HR@10"],
                              figures_dir=tmp_path / "figures" if figures else None, link_base=tmp_path,
                              gate=gate)


def test_leaderboard_names_the_machines_that_made_its_records(tmp_path):
    recs = _records()
    for i, rec in enumerate(recs):  # two CPU kinds, 5 and 3 records
        rec.data["environment"]["device"] = "cpu: AMD EPYC x2" if i < 5 else "cpu: Intel(R) Xeon(R) Processor x2"
    md = _render(tmp_path, recs=recs)
    line = next(x for x in md.splitlines() if x.startswith("- machines (records): "))
    assert "cpu: AMD EPYC x2 (5), cpu: Intel(R) Xeon(R) Processor x2 (3)" in line
    assert "unknown" not in line
    assert "(8)" in _render(tmp_path, recs=_records()).split("- machines (records): ")[1].splitlines()[0]
    recs[0].data["environment"]["cpu_bf16"] = "emulated"  # the same CPU name, bf16 emulated: a kind of its own
    line = next(x for x in _render(tmp_path, recs=recs).splitlines() if x.startswith("- machines (records): "))
    assert "cpu: AMD EPYC x2 (4), cpu: Intel(R) Xeon(R) Processor x2 (3), cpu: AMD EPYC x2 bf16 emulated (1)" in line


def _row(md, model):
    return next(line for line in md.splitlines() if line.startswith(f"| {model} "))


def test_leaderboard_banner_and_header(tmp_path):
    md = _render(tmp_path)
    assert md.splitlines()[0] == BANNER
    assert "do not edit it by hand" in md
    assert f"**{SUITE}** version **{VERSION}**" in md
    assert f"built from 8 records under results/records/{SUITE}" in md
    assert "`abc123`" in md and "data fingerprint: `fp123`" in md
    assert "users 1,000" in md and "items 500" in md


def test_leaderboard_mean_and_student_t_interval(tmp_path):
    # 0.10, 0.12, 0.14: mean 0.12, sd 0.02, sem 0.02/sqrt(3), t(0.975, 2) = 4.302653
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # 0.049683
    assert leaderboard.mean_ci([0.10, 0.12, 0.14]) == pytest.approx((0.12, half), rel=1e-9)
    row = _row(_render(tmp_path), "sasrec")
    assert "0.1200 ± 0.0497" in row and "3/3" in row
    assert "0.3000 ± 0.0000" in row
    assert "| 11.0 " in row and "| 502 " in row  # mean train s, max peak MB


def test_leaderboard_incomplete_cell_is_missing_not_averaged(tmp_path):
    row = _row(_render(tmp_path), "karma")
    assert "missing (2/3)" in row and "2/3" in row
    assert "0.9000" not in row


def test_leaderboard_nan_and_missing_dataset(tmp_path):
    md = _render(tmp_path)
    row = _row(md, "hllm")
    assert "0.2000 ± 0.0000" in row and "n/a" in row
    assert "not run: dataset missing: raw files not found under data/raw/toys" in md
    assert "### amazon/toys · none" in md


def test_leaderboard_single_seed(tmp_path):
    plan = [{"dataset": "amazon/beauty", "mode": "none", "model": "sasrec", "variant": "ce", "seeds": [0],
             "status": "planned"}]
    row = _row(_render(tmp_path, recs=[Record(make_record(ndcg=0.25))], plan=plan, figures=False), "sasrec")
    assert "0.2500 (1 seed)" in row


def test_leaderboard_ignores_other_suite_version(tmp_path):
    recs = _records() + [Record(make_record(model="karma", variant="full", seed=1, ndcg=0.9, suite_version="0.9"))]
    md = _render(tmp_path, recs=recs, figures=False)
    assert "missing (2/3)" in _row(md, "karma")
    assert "1 of another suite or version ignored" in md


def test_leaderboard_figure_and_atomic_write(tmp_path):
    md = _render(tmp_path)
    fig = tmp_path / "figures" / "amazon__beauty__none_NDCG@10.png"
    assert fig.exists() and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](figures/amazon__beauty__none_NDCG@10.png)" in md
    assert not list((tmp_path / "figures").glob("amazon__toys*"))
    out = write_leaderboard(tmp_path / "leaderboard.md", md)
    assert Path(out).read_text() == md and not list(tmp_path.glob("*.tmp"))
    assert _render(tmp_path) == md  # deterministic


def test_unconverged_runs_are_marked_and_the_gate_sorts_views(tmp_path):
    recs = _records()
    recs[0].data["selection"].update(converged=False, best_epoch=40, max_epochs=40)
    pop = [Record(make_record(model="popularity", variant="default", seed=s, ndcg=0.01, hr=0.02)) for s in (0, 1, 2)]
    for r in pop:
        r.data["metrics"]["test"]["HR@50"] = 0.05
    plan = _plan() + [{"dataset": "amazon/beauty", "mode": "none", "model": "popularity", "variant": "default",
                       "query_use": "ignored", "seeds": [0, 1, 2], "status": "planned"}]
    md = _render(tmp_path, recs=recs + pop, plan=plan, figures=False)
    assert "0.1200 ± 0.0497 †" in _row(md, "sasrec") and "| 40/" in _row(md, "sasrec")
    assert "†" not in _row(md, "hllm")
    # 500 items < 1,000: not headline evidence, and the reason is printed
    small = md.split("## Small or saturated sets")[1]
    assert "### amazon/beauty · none" in small and "500 items < 1,000" in small
    md = _render(tmp_path, recs=recs + pop, plan=plan, figures=False, gate=Gate(min_items=100, min_test=100))
    assert "### amazon/beauty · none" in md.split("## Headline")[1].split("## Small")[0]
    assert "`popularity` HR@10 0.020 / HR@50 0.050" in md


def test_runs_whose_training_loss_ended_above_its_first_epoch_are_marked_diverged(tmp_path):
    def history(losses):  # a warm-up stage and the probe are not losses; task terms add to the action loss
        return [{"stage": "warmup", "epoch": 1, "warmup": 9.0}] + [
            {"stage": "main", "epoch": i + 1, "action": a, "task2": t, "valid": 0.1, "probe": {"first": 0.3}}
            for i, (a, t) in enumerate(losses)]
    recs = _records()
    assert not any(r.diverged for r in recs)
    stable = [(0.35, 0.18), (0.16, 0.16), (0.15, 0.30)]  # one term rises, the sum stays below epoch 1's 0.53
    unstable = [(0.35, 0.0), (0.42, 0.0), (0.66, 0.0), (0.50, 0.0)]  # the run observed on Scientific (warm-up seed 1)
    recovered = [(4.67, 0.0), (4.06, 0.0), (5.36, 0.0), (4.95, 0.0), (3.02, 0.0), (2.56, 0.0)]  # HLLM synthetic seed 0
    recs[0].data["selection"]["history"] = history(stable)
    assert not recs[0].diverged
    recs[0].data["selection"]["history"] = history(recovered)  # an early bump that training undoes
    assert not recs[0].diverged
    recs[0].data["selection"]["history"] = history(unstable)
    assert recs[0].diverged
    md = _render(tmp_path, recs=recs, figures=False)
    assert "0.1200 ± 0.0497 ‡" in _row(md, "sasrec") and "‡" not in _row(md, "hllm")
    assert "`‡`: at least one seed's training loss ended" in md


def test_paired_deltas_come_from_the_per_impression_arrays(tmp_path):
    rng = np.random.default_rng(0)
    ranks = {"sasrec": rng.integers(1, 30, size=(3, 400)), "hllm": rng.integers(1, 12, size=(3, 400))}
    recs = []
    for model, variant in (("sasrec", "default"), ("hllm", "base")):
        for s in range(3):
            path = record_path(tmp_path, SUITE, "amazon/beauty", "none", model, variant, s)
            write_per_impression(path.with_suffix(".npz"), {"rank": ranks[model][s], "auc": np.full(400, 0.5)})
            rec = make_record(model=model, variant=variant, seed=s, per_impression=path.with_suffix(".npz").name)
            write_record(path, rec)
    recs = [Record(r.data, r.path) for r in records.read_run_records(tmp_path, SUITE)]
    plan = [{**p, "variant": "default" if p["model"] == "sasrec" else p["variant"]} for p in _plan()
            if p["model"] != "karma" and p["dataset"] == "amazon/beauty"]
    md = _render(tmp_path, recs=recs, plan=plan, figures=False)
    hr = lambda r: (r <= 10).mean(axis=0)  # noqa: E731  (each model averaged over its seeds, per impression)
    want = 100 * float((hr(ranks["hllm"]) - hr(ranks["sasrec"])).mean())
    row = next(line for line in md.split("Paired deltas")[1].splitlines() if line.startswith("| hllm "))
    assert f"{want:+.2f} [" in row and "*" in row  # hllm ranks far better: significant after Holm


def _curve_record(model, variant, seed, curve, stages=("main",)):
    history = [{"stage": "warmup", "epoch": 1, "warmup": 9.0}] if "warmup" in stages else []
    history += [{"stage": "main", "epoch": i + 1, "valid": v} for i, v in enumerate(curve)]
    return Record(make_record(dataset="synthetic", model=model, variant=variant, seed=seed, mode="coarse",
                              selection={"metric": "NDCG@10", "best_epoch": len(curve), "epochs_run": len(curve),
                                         "stopped_by": "patience", "converged": True, "history": history}))


def test_equal_epoch_delta_compares_the_last_epoch_both_reached():
    from benchmark.tables import equal_epoch_delta
    base = _curve_record("action_llm", "default", 0, [0.30, 0.40, 0.45, 0.50])
    slower = _curve_record("karma", "task2", 0, [0.32, 0.43, 0.48], stages=("warmup", "main"))
    e, delta = equal_epoch_delta(slower, base)
    assert e == 3 and delta == pytest.approx(0.03)  # 0.48 - 0.45, not 0.48 - 0.50 (best vs best)
    assert equal_epoch_delta(Record(make_record()), base) is None  # no curve recorded


def test_table1_shows_the_equal_epoch_view():
    from benchmark.tables import render_table1
    recs = [_curve_record("action_llm", "default", s, [0.3, 0.4, 0.5]) for s in (0, 1)]
    recs += [_curve_record("karma", "task2", s, [0.31, 0.42], stages=("warmup", "main")) for s in (0, 1)]
    md = render_table1(recs, suite=SUITE, suite_version=VERSION, seeds=[0, 1], ks=(10, 50),
                       datasets=["synthetic · coarse"])
    row = [line for line in md.splitlines() if line.startswith("| + Task 2")][-1]  # Table 1, then the view
    assert "2.0 / 3.0" in row and "| 2, 2 " in row and "+2.00 ± 0.00" in row


def test_table1_marks_a_row_whose_runs_span_two_kinds_of_cpu():
    from benchmark.tables import MIXED_DEVICES, render_table1

    def rows(devices):  # devices[(model, seed)] of the Task 2 row and its action-only reference
        recs = [_curve_record("action_llm", "default", s, [0.3, 0.4, 0.5]) for s in (0, 1)]
        recs += [_curve_record("karma", "task2", s, [0.31, 0.42], stages=("warmup", "main")) for s in (0, 1)]
        for r in recs:
            r.data["environment"] = {"device": devices.get((r.model, r.seed), "cpu: Intel x2")}
        md = render_table1(recs, suite=SUITE, suite_version=VERSION, seeds=[0, 1], ks=(10, 50),
                           datasets=["synthetic · coarse"])
        return [line for line in md.splitlines() if line.startswith(("| + Task 2", "| action-only"))]

    assert not any(MIXED_DEVICES in line for line in rows({}))  # one CPU: no mark
    assert not any(MIXED_DEVICES in line for line in rows({("action_llm", 1): "cpu: Intel x16"}))  # more cores only
    marked = rows({("action_llm", 1): "cpu: AMD EPYC x2"})  # the reference's seed 1 ran elsewhere
    assert all(f" {MIXED_DEVICES} " in line for line in marked[:2])


def test_the_funnel_tables_show_with_and_without_and_count_significant_paired_intervals():
    from benchmark.tables import render_funnel

    def result(seed, without, with_, low, high):
        ctr = {"without": {"AUC": without, "gAUC": without}, "with": {"AUC": with_, "gAUC": with_},
               "delta_gAUC": with_ - without, "delta_gAUC_ci": {"low": low, "high": high}}
        delta = {"delta": 0.01, "low": low, "high": high}
        return {"dataset": "synthetic", "mode": "coarse", "model": "karma", "variant": "karma", "seed": seed,
                "suite_version": VERSION, "ctr": {"lexical_popularity": ctr, "popularity": ctr},
                "prerank": {"K": 12, "HR_query_pop": 0.2, "HR_pre": 0.3, "HR_fused": 0.31, "delta": delta},
                "recall": {"K": 40, "HR_lexical": 0.4, "HR_embedding": 0.5, "HR_merged": 0.41, "delta": delta}}

    results = [result(0, 0.50, 0.60, 0.02, 0.18), result(1, 0.70, 0.70, -0.05, -0.01)]
    md = render_funnel([], results, suite=SUITE, suite_version=VERSION, seeds=[0, 1])
    ctr = md.split("funnel, CTR")[1].split("###")[0]
    row = next(line for line in ctr.splitlines() if line.startswith("| karma:karma"))
    assert "0.6000 → 0.6500" in row  # seed means of without and with
    assert row.count("1↑ 1↓ of 2") == 2  # one seed's interval above 0, the other's below
    for stage in ("pre-rank", "recall"):
        assert "1↑ 1↓ of 2" in md.split(f"funnel, {stage}")[1].split("###")[0]


def test_a_patience_stop_within_the_curves_own_noise_is_told_from_a_clear_decline():
    def run(curve, stopped_by="patience"):
        r = _curve_record("karma", "karma", 0, curve)
        r.data["selection"]["stopped_by"] = stopped_by
        return r

    noisy_rise = [0.10, 0.14, 0.12, 0.17, 0.15, 0.19, 0.16, 0.18, 0.17]  # best at 6, then noise
    declined = [0.10, 0.14, 0.18, 0.22, 0.26, 0.30, 0.24, 0.20, 0.16]  # peaked, then fell well past the noise
    assert run(noisy_rise).stopped_within_noise() is True
    assert run(declined).stopped_within_noise() is False
    assert run(noisy_rise, "max_epochs").stopped_within_noise() is None  # not a patience stop
    assert run([0.1, 0.2, 0.1, 0.15]).stopped_within_noise() is None  # too few epochs to judge


def test_an_objective_run_at_chance_is_marked_as_such(tmp_path):
    """The convergence lines of Table 2's objectives: a run whose per-impression test AUC is a coin
    flip is marked at chance; one clearly above 0.5 is not; a record without arrays says n/a."""
    from benchmark.tables.table2 import objective_convergence

    rng = np.random.default_rng(0)
    aucs = {"karma": 0.75 + 0.1 * rng.standard_normal(300), "objective_diffusion": rng.uniform(0, 1, 300)}
    index = {}
    for variant, auc in aucs.items():
        model = "karma" if variant == "karma" else "karma_gen"
        path = record_path(tmp_path, SUITE, "synthetic", "coarse", model, variant, 0)
        write_per_impression(path.with_suffix(".npz"), {"rank": np.ones(300, dtype=int), "auc": auc})
        rec = Record(make_record(dataset="synthetic", model=model, variant=variant, seed=0, mode="coarse",
                                 per_impression=path.with_suffix(".npz").name), path)
        index[("synthetic", "coarse", model, variant)] = {0: rec}
    index[("synthetic", "coarse", "karma_gen", "objective_mse")] = {0: Record(make_record(
        dataset="synthetic", model="karma_gen", variant="objective_mse", mode="coarse"))}
    # generator losses: eps stays above what an affine map ignoring h scores (mean abar, 0.276); AR + MSE
    # falls below its 1.0
    curves = {"objective_diffusion": [0.98, 0.72, 0.60], "objective_mse": [2.79, 0.39, 0.27]}
    for variant, curve in curves.items():
        index[("synthetic", "coarse", "karma_gen", variant)][0].data["selection"]["history"] = [
            {"epoch": 1, "stage": "warmup", "warmup": 3.0},
            *({"epoch": e + 1, "stage": "main", "action": 0.5, "generator": v, "valid": 0.01}
              for e, v in enumerate(curve))]
    lines = "\n".join(objective_convergence(index, [("synthetic", "coarse")])).splitlines()
    row = lambda label: next(line for line in lines if line.startswith(f"| {label}"))  # noqa: E731
    assert row("discriminative KARMA").rstrip(" |").endswith("yes")
    assert "at chance" not in row("discriminative KARMA") and "at chance" in row("diffusion (ε) generates u")
    assert row("AR + MSE generates u").rstrip(" |").endswith("n/a")  # no arrays: not judged
    assert "3 / 5" in row("AR + MSE generates u")  # selected / last epoch
    cells = lambda label: [c.strip() for c in row(label).strip(" |").split("|")]  # noqa: E731
    assert cells("diffusion (ε) generates u")[5:7] == ["0.980 → 0.600", "0.276 **not reached**"]
    assert cells("AR + MSE generates u")[5:7] == ["2.790 → 0.270", "1.000"]
    assert cells("discriminative KARMA")[5:7] == ["n/a", "n/a"]  # no generator


def test_the_objective_runs_mode_mean_rows_average_the_landed_seeds_and_name_them():
    """Table 2 (objectives): a sampled objective's analysis is averaged over the seeds that have it; u,
    the run's discriminative embedding, is a row of its own without a spread."""
    from benchmark.tables.table2 import objective_mode_mean

    def analysis(spread, cos_one, hr):
        names = ["flow_sample", "flow_mean", "u"]
        return {"samples": 4, "spread": {"flow": spread}, "cos_target": dict.fromkeys(names, cos_one),
                "cos_centroid": dict.fromkeys(names, 0.5), "impressions": 8, "with_centroid": 8,
                "subset_metrics": {n: {"HR@10": hr} for n in names}}

    runs = {seed: Record(make_record(dataset="synthetic", model="karma_gen", variant="objective_flow", seed=seed,
                                     mode="coarse", objective_analysis=analysis(0.2 * (seed + 1), 0.1 * seed, 0.25)))
            for seed in (0, 2)}
    runs[1] = Record(make_record(dataset="synthetic", model="karma_gen", variant="objective_flow", seed=1,
                                 mode="coarse"))  # landed before the analysis existed: left out
    lines = objective_mode_mean({("synthetic", "coarse", "karma_gen", "objective_flow"): runs},
                                [("synthetic", "coarse")], 10, Path("."))
    rows = [line for line in "\n".join(lines).splitlines() if line.startswith(("| synthetic", "|  "))]
    assert len(rows) == 3 and "flow matching generates u" in rows[0] and "| 0, 2 " in rows[0]
    assert "0.400" in rows[0] and "1 sample" in rows[0]  # spread: mean of 0.2 and 0.6
    assert "0.100" in rows[0] and "25.00" in rows[0]  # cos -> target: mean of 0 and 0.2; HR@10 in points
    assert "mean of 4" in rows[1] and "discriminative u (same run)" in rows[2] and "0.400" not in rows[2]
    assert objective_mode_mean({}, [("synthetic", "coarse")], 10, Path(".")) == []


def test_a_run_that_never_beat_its_first_epoch_is_told_apart_from_one_that_trained():
    failed = [0.030, 0.004, 0.005, 0.014, 0.013, 0.015, 0.011, 0.016]  # Scientific warm-up seed 1's shape
    trained = [0.030, 0.035, 0.04, 0.038, 0.037, 0.036]
    assert _curve_record("action_llm", "warmup", 1, failed).never_improved
    assert not _curve_record("action_llm", "warmup", 0, trained).never_improved
    assert not _curve_record("action_llm", "warmup", 0, [0.03]).never_improved  # one epoch: nothing to beat
    # a warm-up stage before the main one does not count as the first epoch
    assert _curve_record("karma", "task2", 0, failed, stages=("warmup", "main")).never_improved


def test_loss_spikes_are_rises_above_the_running_minimum_of_the_action_loss():
    def with_losses(action, task2=None, best=None):
        rec = _curve_record("karma", "task2", 1, [0.1] * len(action), stages=("warmup", "main"))
        for h, a in zip([h for h in rec.history if h["stage"] == "main"], action, strict=True):
            h["action"] = a
            if task2 is not None:
                h["task2"] = task2
        rec.data["selection"]["best_epoch"] = best or len(action)
        return rec

    # Scientific Task 2 seed 1's tail: 0.071 -> 0.387 at its last epoch; a 20% rise is not a spike
    assert with_losses([0.36, 0.09, 0.071, 0.085, 0.387]).loss_spikes() == [5]
    assert with_losses([0.36, 0.30, 0.25, 0.24]).loss_spikes() == []
    assert with_losses([0.36, 0.10, 0.125, 0.14]).loss_spikes() == [4]  # 0.14 > 1.3 x 0.10; 0.125 is not
    # the warm-up stage's loss is not the main stage's: a high warm-up loss is no running minimum
    assert with_losses([0.5, 0.4]).loss_spikes() == []
    # the action term alone is read: a large, falling task term cannot hide the action loss's spike
    assert with_losses([0.20, 0.10, 0.20], task2=5.0).loss_spikes() == [3]
    assert with_losses([0.20, 0.10, 0.20], task2=5.0).loss_curve()[-1] == (3, pytest.approx(5.2))
    scheduled = with_losses([0.20, 0.10])
    scheduled.history[-1]["lr"] = 3e-4  # a scheduled run's rate is kept beside its losses, never summed in
    assert scheduled.loss_curve()[-1] == (2, pytest.approx(0.10))

    from benchmark.tables import render_table1
    recs = [_curve_record("action_llm", "default", s, [0.3, 0.4, 0.5]) for s in (0, 1)]
    recs += [with_losses([0.36, 0.09, 0.07, 0.39], best=2), with_losses([0.36, 0.5, 0.3, 0.2], best=4)]
    recs[-1].data["seed"] = 0
    line = next(line for line in render_table1(recs, suite=SUITE, suite_version=VERSION, seeds=[0, 1], ks=(10, 50),
                                                 datasets=["synthetic · coarse"]).splitlines()
                if line.startswith("Convergence:"))
    assert "inside the patience window that stopped the run, in 1 of the 4 runs" in line
    assert "synthetic karma:task2 seed 1 (epochs 4; selected 2)" in line
    assert "at or before the selected epoch in 1 (synthetic karma:task2 seed 0)" in line


def test_table1_names_the_runs_that_failed_to_train():
    from benchmark.tables import render_table1
    recs = [_curve_record("action_llm", "default", s, [0.3, 0.4, 0.5]) for s in (0, 1)]
    recs += [_curve_record("action_llm", "warmup", 0, [0.3, 0.35]),
             _curve_record("action_llm", "warmup", 1, [0.3, 0.1, 0.2])]
    line = next(line for line in render_table1(recs, suite=SUITE, suite_version=VERSION, seeds=[0, 1], ks=(10, 50),
                                                 datasets=["synthetic · coarse"]).splitlines()
                if line.startswith("Convergence:"))
    assert "1 never beat their first epoch's validation value" in line
    assert "synthetic action_llm:warmup seed 1 (3 epochs)" in line and "warmup seed 0" not in line
