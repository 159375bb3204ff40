"""The peer comparison's own side: the exported sequences are the log's, in order, and the time-to-target rule."""

from benchmark import peers


def test_exported_sequences_rebuild_each_users_split(tmp_path):
    from benchmark.data.download import data_root
    from benchmark.run import compose_config
    from benchmark.runner import load_log
    from benchmark.runner.spec import mode_config

    cfg = mode_config(compose_config("smoke", [f"data_dir={tmp_path}", "synthetic.n_items=120",
                                               "synthetic.n_users=60", "synthetic.image_size=16"]), "none")
    log = load_log("synthetic", cfg, data_root(cfg.data_dir))
    sequences = peers.user_sequences(log)
    for split, back in (("test", 1), ("valid", 2)):  # leave-one-out in order: what RecBole's LS split takes
        for _, row in log.split(split).iterrows():
            assert sequences[int(row["user"])][-back] == int(row["target"])
    test = log.split("test").iloc[0]
    assert sequences[int(test["user"])][-1 - len(test["history"]):-1] == list(test["history"])
    path = peers.export_atomic(log, tmp_path / "atomic", "syn")
    lines = path.read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    assert len(lines) - 1 == sum(len(s) for s in sequences.values())


def test_seconds_to_reach_counts_training_time_until_the_target():
    epochs = [{"train_s": 10.0, "valid_NDCG@10": 0.01}, {"train_s": 12.0, "valid_NDCG@10": 0.03},
              {"train_s": 11.0, "valid_NDCG@10": 0.05}]
    assert peers.seconds_to_reach(epochs, 0.03) == 22.0
    assert peers.seconds_to_reach(epochs, 0.2) is None


def test_compare_times_our_sasrec_and_the_leaderboard_shows_both(tmp_path):
    import json

    from benchmark.perf_report import render_perf

    peer = {"library": "RecBole", "version": "1.2.1", "epochs": [
        {"epoch": e, "train_s": 200.0, "valid_s": 13.0, "valid_NDCG@10": v, "train_steps": 1027}
        for e, v in ((1, 0.001), (2, 0.002), (3, 0.003))]}
    (tmp_path / "recbole.json").write_text(json.dumps(peer))
    out = tmp_path / "results" / "perf" / "peer_recbole.json"
    assert peers.main(["compare", "--dataset", "synthetic", "--data-dir", str(tmp_path), "--recbole",
                       str(tmp_path / "recbole.json"), "--epochs", "2", "--out", str(out),
                       "synthetic.n_items=120", "synthetic.n_users=60", "synthetic.image_size=16"]) == 0
    result = json.loads(out.read_text())
    ours = result["ours"]
    assert len(ours["epochs"]) == 2 and all(e["train_s"] > 0 and e["valid_s"] > 0 for e in ours["epochs"])
    assert result["target_NDCG@10"] == 0.003 and result["peer"]["median_train_s_per_epoch"] == 200.0
    section = render_perf(tmp_path / "results", [], suite="full", figures_dir=None, link_base=None)
    assert "### Against the peer library: SASRec on synthetic" in section and "RecBole 1.2.1" in section
