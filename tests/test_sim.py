"""Tests for p2pfl.sim: tiny end-to-end simulations (synthetic data, 4 nodes, a few rounds)."""

import json

import numpy as np
import pytest

from p2pfl.config import ConfigError, load_scenario
from p2pfl.metrics import read_metrics
from p2pfl import assemble
from p2pfl.sim import Simulation

ROUNDS = 4
TINY = {
    "name": "tiny",
    "rounds": ROUNDS,
    "seed": 0,
    "profiles": ["mlp", "cnn1d"],
    "embed_dim": 16,
    "workers": 1,
    "data.source": "synthetic",
    "data.samples": 800,
    "data.partition": "shards:2",
    "reference.source": "synthetic",
    "reference.size": 400,
    "reference.slice_size": 200,
    "topology.name": "ring",
    "topology.nodes": 4,
    "train.warmup_steps": 20,
    "train.local_steps": 10,
    "train.batch_size": 32,
    "train.kd_batch_size": 100,
    "gossip.codec": "fp32",  # exact byte arithmetic below; the default codec is covered in test_node
}


def simulate(run_dir, **overrides):
    return Simulation(load_scenario(None, TINY | overrides), run_dir=run_dir).run()


@pytest.fixture(scope="module")
def logits_run(cache, tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def local_run(cache, tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("runs"), mode="local")


def test_summary_has_accuracies_per_arch(logits_run):
    s = logits_run.summary
    assert s["nodes"] == 4 and s["rounds"] == ROUNDS and s["mode"] == "logits"
    assert set(s["per_arch"]) == {"mlp", "cnn1d"}
    for arch in ("mlp", "cnn1d"):
        assert s["per_arch"][arch]["nodes"] == 2
        assert 0.0 < s["per_arch"][arch]["global"]["mean"] <= 1.0
    for what in ("global", "personal"):
        assert s[what]["worst"] <= s[what]["worst_decile"] <= s[what]["mean"]
    assert logits_run.global_mean == s["global"]["mean"] and logits_run.personal_mean == s["personal"]["mean"]
    assert [c["round"] for c in s["curve"]] == list(range(1, ROUNDS + 1))
    assert s["topology"] == {"name": "ring-4", "nodes": 4, "edges": 4}
    assert s["rejected"] == {}


def test_logits_mode_sends_knowledge_and_local_mode_does_not(logits_run, local_run):
    sent = logits_run.summary["bytes_per_node_per_round"]
    # two neighbours x a 200 x 4 fp32 slice each round (plus the warm-up's, less the last round's
    # to neighbours that already left), and a few hundred bytes of hello/bye
    per_round = 2 * 200 * 4 * 4
    assert 0.7 * per_round < sent < 1.1 * per_round * (ROUNDS + 1) / ROUNDS
    local = local_run.summary["bytes_per_node_per_round"]
    assert local * ROUNDS < 2 * 2 * 300  # at most a hello and a bye to each of two neighbours
    assert local < sent / 50
    # with half the classes at each node, the knowledge shows in the global accuracy
    assert logits_run.global_mean > local_run.global_mean + 0.05


def test_metrics_and_summary_files(logits_run):
    lines = read_metrics(logits_run.run_dir / "metrics.jsonl")
    assert len(lines) == 4 * ROUNDS
    assert {(r["node"], r["round"]) for r in lines} == {(f"n{i}", k) for i in range(4) for k in range(1, ROUNDS + 1)}
    documented = {"node", "arch", "round", "time", "train_loss", "contributors", "staleness", "waited",
                  "bytes_out", "bytes_in", "neighbours_up", "rejected", "global_acc", "personal_acc", "test_loss"}
    for r in lines:
        assert documented <= set(r), documented - set(r)
    summary = json.loads((logits_run.run_dir / "summary.json").read_text())
    assert summary["global"] == logits_run.summary["global"]
    assert summary["scenario"]["rounds"] == ROUNDS


def test_same_seed_same_result_other_seed_differs(logits_run, tmp_path):
    def finals(result):
        last = {}
        for r in result.records:
            last[r["node"]] = (r["global_acc"], r["personal_acc"], r["train_loss"])
        return last

    again = simulate(tmp_path / "a")
    assert finals(again) == finals(logits_run)
    assert [r["bytes_out"] for r in again.records] == [r["bytes_out"] for r in logits_run.records]
    other = simulate(tmp_path / "b", seed=1)
    assert finals(other) != finals(logits_run)


def test_worker_threads_do_not_change_the_result(logits_run, tmp_path):
    # FrozenTimePool stops the mock clock while threads compute: simulated time never sees real time
    threaded = simulate(tmp_path, workers=2)
    assert [(r["node"], r["round"], r["global_acc"], r["time"]) for r in threaded.records] == \
        [(r["node"], r["round"], r["global_acc"], r["time"]) for r in logits_run.records]


def test_fedavg_needs_one_architecture(cache, tmp_path):
    with pytest.raises(ConfigError, match="same architecture"):
        simulate(tmp_path, mode="fedavg")


def test_fedavg_with_one_architecture_runs(cache, tmp_path):
    result = simulate(tmp_path, mode="fedavg", profiles=["mlp"], rounds=3)
    s = result.summary
    assert s["nodes"] == 4 and set(s["per_arch"]) == {"mlp"}
    full = s["fedavg_fp32_bytes_per_node_per_round"]  # whole fp32 weights to both neighbours
    assert 0.6 * full < s["bytes_per_node_per_round"] < 1.05 * full * (3 + 1) / 3  # + the warm-up's share
    assert all(r["contributors"] > 0 for r in result.records if r["round"] >= 2)


def test_prototypes_mode_shares_class_means_and_refuses_a_huge_one(cache, tmp_path):
    result = simulate(tmp_path, mode="prototypes", rounds=3, attack=[{"kind": "huge", "nodes": [1]}],
                      **{"train.proto_head_weight": 1.0})  # the classifier taught the pooled classes too
    s = result.summary
    assert all(r["contributors"] > 0 for r in result.records if r["round"] >= 2)
    # 10 classes x 16 dims in fp16 per frame: a few hundred bytes, not a model
    assert s["bytes_per_node_per_round"] < 2_000
    refused = [r["rejected"] for r in result.records if r["node"] in ("n0", "n2") and r["round"] >= 2]
    assert refused and all(r.get("implausible", 0) >= 1 for r in refused)  # n1's neighbours refuse it
    assert s["honest"]["global"]["mean"] > 0.2


@pytest.mark.parametrize("mode", ["prototypes", "fd"])
def test_class_means_with_privacy_is_one_clear_error(mode):
    with pytest.raises(ConfigError, match=f"privacy.epsilon with mode = '{mode}'"):
        load_scenario(None, TINY | {"mode": mode, "privacy.epsilon": 8.0})


def test_fd_mode_distills_own_rows_toward_the_pooled_class_logits(cache, tmp_path):
    result = simulate(tmp_path, mode="fd", rounds=3)
    assert all(r["contributors"] > 0 and r["rejected"] == {} for r in result.records if r["round"] >= 2)
    assert result.summary["bytes_per_node_per_round"] < 2_000  # 10 x 10 fp16 per frame


def test_no_run_dir_writes_nothing(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = Simulation(load_scenario(None, TINY | {"rounds": 1, "mode": "local"}), run_dir=None).run()
    assert result.run_dir is None and len(result.records) == 4
    assert list(tmp_path.iterdir()) == []


def test_changing_the_topology_name_alone_works():
    assert assemble.topology(load_scenario(None, {"topology.name": "ring", "topology.nodes": 4})).n == 4


def test_a_rerun_gets_its_own_folder(tmp_path):
    from p2pfl.files import fresh_dir

    assert fresh_dir(tmp_path, "q") == tmp_path / "q"
    assert fresh_dir(tmp_path, "q") == tmp_path / "q-2"
    assert fresh_dir(tmp_path, "q") == tmp_path / "q-3"
    assert fresh_dir(tmp_path, "other") == tmp_path / "other"


# -- your own data: the reference set follows it ------------------------------------------------------

def _own_npz(path, features=64, rows=600, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    x = rng.normal(size=(rows, features)).astype(np.float32) + y[:, None]  # learnable
    np.savez(path, x=x, y=y)
    return path


def test_a_users_npz_gets_a_held_out_reference_of_its_own_rows(cache, tmp_path):
    npz = _own_npz(tmp_path / "mine.npz")
    s = load_scenario(None, TINY | {"data.source": str(npz), "reference.source": "auto", "reference.size": 10_000})
    data, ref = assemble.data_and_reference(s)
    full = assemble.data_and_reference(load_scenario(None, TINY | {"data.source": str(npz), "mode": "local",
                                                                    "reference.source": "auto"}))[0]
    assert ref.spec.source == "held-out" and ref.x.shape[1:] == (64,)
    assert ref.size == int(0.2 * 480) and ref.spec.slice_size == 96  # a fifth of the 480 training rows, slice cut
    assert len(data.y_train) == 480 - ref.size == len(full.y_train)  # set aside in every mode alike
    rows = {r.tobytes() for r in data.x_train}
    assert not any(r.tobytes() in rows for r in ref.x)  # no node trains on a reference row
    assert assemble.data_and_reference(s)[1].digest == ref.digest  # every node cuts the same rows
    run = Simulation(s, run_dir=None).run()
    assert all(r["rejected"] == {} for r in run.records)
    assert max(r["contributors"] for r in run.records) >= 1


def test_a_data_free_reference_is_noise_with_the_datas_statistics_and_trains_on_every_row(cache, tmp_path):
    npz = _own_npz(tmp_path / "mine.npz")
    s = load_scenario(None, TINY | {"data.source": str(npz), "reference.source": "noise", "reference.size": 2_000})
    data, ref = assemble.data_and_reference(s)
    assert ref.spec.source == "noise" and ref.x.shape == (2_000, 64) and ref.x.dtype == np.float32
    assert len(data.y_train) == 480  # nothing held out
    np.testing.assert_allclose(ref.x.mean(axis=0), data.x_train.mean(axis=0), atol=0.15)
    np.testing.assert_allclose(ref.x.std(axis=0), data.x_train.std(axis=0), rtol=0.1)
    assert assemble.data_and_reference(s)[1].digest == ref.digest  # every node draws the same rows
    other = load_scenario(None, TINY | {"data.source": str(npz), "reference.source": "noise", "reference.seed": 5})
    assert assemble.data_and_reference(other)[1].digest != ref.digest
    run = Simulation(s, run_dir=None).run()
    assert all(r["rejected"] == {} for r in run.records) and max(r["contributors"] for r in run.records) >= 1


def test_a_reference_shaped_unlike_the_data_is_one_clear_error(cache, tmp_path):
    npz = _own_npz(tmp_path / "mine.npz")
    s = load_scenario(None, TINY | {"data.source": str(npz), "reference.source": "synthetic"})
    with pytest.raises(ConfigError, match=r"reference.source = 'synthetic' gives rows of shape \(\d+,\), but data.source"
                                          r" = '.*mine.npz' has inputs of shape \(64,\); use reference.source = "
                                          r"'held-out'"):
        assemble.data_and_reference(s)


def test_generated_data_keeps_its_generator_for_the_reference():
    s = load_scenario(None, TINY | {"reference.source": "auto"})
    assert assemble.reference_source(s) == "synthetic"
    assert assemble.reference_source(load_scenario(None)) == "mnist1d"  # the quickstart's reference is unchanged
    with pytest.raises(ConfigError, match="reference.slice_size = 600 is more than reference.size = 400"):
        load_scenario(None, TINY | {"reference.slice_size": 600})
    with pytest.raises(ConfigError, match="reference.source = 'moon'; choose one of: auto, mnist1d"):
        load_scenario(None, TINY | {"reference.source": "moon"})
