"""Learners on Ray actors (p2pfl/ray_learners.py): placement, settings, and a local cluster on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from p2pfl.config import ConfigError, load_scenario
from p2pfl.ray_learners import RayCluster, place
from p2pfl.sim import Simulation

TINY = {"topology.nodes": 6, "rounds": 3, "train.local_steps": 10, "train.warmup_steps": 20,
        "data.samples": 2000, "data.test_size": 300}


def test_place_spreads_each_architecture_over_the_shards():
    s = load_scenario(None, {"topology.nodes": 14, "profiles": ["mlp", "cnn1d", "gru", "gru"]})
    plans = Simulation(s, run_dir=None).build().plans
    groups = place(plans, 3)
    assert sorted(p.index for g in groups for p in g) == list(range(14))  # each node once
    for arch in ("mlp", "cnn1d", "gru"):
        counts = [sum(p.profile.arch == arch for p in g) for g in groups]
        assert max(counts) - min(counts) <= 1, (arch, counts)
    assert [len(g) for g in place(plans[:2], 3)] == [1, 1, 0]  # more shards than nodes: some get none


@pytest.mark.parametrize("value", ["yes", "6379"])
def test_a_bad_ray_setting_names_the_key_and_the_fix(value):
    with pytest.raises(ConfigError, match=r"ray = .*'auto'.*HOST:PORT"):
        load_scenario(None, {"ray": value})


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "ray" else True)
    with pytest.raises(ConfigError, match=r"pip install 'p2pfl\[ray\]'"):
        Simulation(load_scenario(None, {"ray": "local"}), run_dir=None).run()


def test_a_head_that_does_not_answer_fails_at_once_with_the_command_that_starts_one():
    import socket

    pytest.importorskip("ray")

    with socket.socket() as free:  # a port nobody listens on: bound, never listening
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"nothing answers there.*ray start --head --port {port}"):
            RayCluster(f"127.0.0.1:{port}")._connect()
    with pytest.raises(ConfigError, match="HOST:PORT"):
        RayCluster("somewhere:notaport")._connect()


def test_a_scenario_error_comes_before_any_cluster_starts(monkeypatch):
    pytest.importorskip("ray")
    started = []
    monkeypatch.setattr(RayCluster, "_connect", lambda self: started.append(self))
    with pytest.raises(ValueError, match="k=4 needs n > k"):  # a TopologyError
        Simulation(load_scenario(None, {"ray": "local", "topology.nodes": 4}), run_dir=None).run()
    assert not started


def test_what_a_remote_learner_lacks_is_named_with_the_way_round_it():
    from p2pfl.ray_learners import Facts, RemoteLearner

    built = Simulation(load_scenario(None, {"topology.nodes": 6}), run_dir=None).build()
    plan, real = built.plans[0], built.learners[0]
    proxy = RemoteLearner(None, 0, Facts.of(real), plan, built.dataset, {})
    assert proxy.num_classes == real.num_classes and proxy.adapter.size == real.adapter.size
    assert (proxy.x == real.x).all() and (proxy.y == real.y).all()  # the driver's own copy of the node's rows
    with pytest.raises(AttributeError, match=r"'optimizer': with ray, node n0's learner lives on a Ray shard.*ray = ''"):
        proxy.optimizer


def _records(run_root: Path) -> list[dict]:
    (metrics,) = run_root.glob("*/metrics.jsonl")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return sorted(rows, key=lambda r: (r["node"], r["round"], r.get("incarnation", 0)))


@pytest.mark.slow
def test_after_a_run_on_ray_every_node_holds_its_trained_learner(cache, monkeypatch):
    """In this process (a Ray cluster of its own, before the module's cluster: one process, one Ray)."""
    pytest.importorskip("ray")
    from p2pfl.learner import Learner

    ray_tmp = tempfile.mkdtemp(prefix="p2pray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        result = Simulation(load_scenario(None, TINY | {"ray": "local", "mode": "fedavg", "profiles": ["mlp"]}),
                            run_dir=None).run()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    for node, learner in zip(result.nodes, result.learners):
        assert isinstance(learner, Learner) and node.learner is learner and node.ctx.learner is learner
    data = result.built.dataset
    last = max((r for r in result.records if r["node"] == "n0" and "global_acc" in r), key=lambda r: r["round"])
    # the model that came back is the one the last round evaluated on the shard
    assert result.learners[0].evaluate(data.x_test, data.y_test).global_acc == last["global_acc"]
    assert result.summary["ray"]["nodes_per_shard"] and sum(result.summary["params"].values()) > 0


@pytest.fixture(scope="module")
def cluster():
    """A head and one more node, each one worker CPU, both on 127.0.0.1 only; gone afterwards."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # Ray's sessions and its "current cluster" file in a short folder of our own, not the host's /tmp/ray
    # (its socket paths live there: a unix socket path has ~107 bytes); no usage report leaves the machine
    ray_tmp = tempfile.mkdtemp(prefix="p2pray-", dir="/tmp")
    made = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", ray_tmp)
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        try:
            made = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
            made.add_node(num_cpus=1, node_ip_address="127.0.0.1")
            yield made
        finally:
            if made is not None:
                made.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _sim(runs: Path, *extra: str) -> list[str]:
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    return [sys.executable, "-m", "p2pfl.cli", "sim", *sets, "--runs", str(runs), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["--set=events=[{at=2,crash=[1]},{at=3,rejoin=[1]}]"],  # logits; a checkpoint to the shard and back
    ["--mode", "fd"],  # class means of the node's own rows, taught on them (RemoteLearner.x / y)
    ["--mode", "fedavg", "--archs", "mlp"],  # flat parameters out and in
], ids=["logits-crash-rejoin", "fd", "fedavg"])
def test_a_two_worker_local_ray_cluster_gives_the_records_of_one_process(cluster, tmp_path, cache, extra):
    on_ray = subprocess.run(_sim(tmp_path / "ray", *extra, "--ray", cluster.address, "--json", "-"),
                            capture_output=True, text=True, timeout=300)
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    here = subprocess.run(_sim(tmp_path / "here", *extra), capture_output=True, text=True, timeout=300)
    assert here.returncode == 0, here.stderr[-3000:]
    summary = json.loads(on_ray.stdout)
    assert summary["ray"]["cpus"] == 2 and sorted(summary["ray"]["nodes_per_shard"]) == [3, 3]
    if "events" in extra[0]:
        assert [e["event"] for e in summary["events"]] == ["crash", "rejoin"]
    a, b = _records(tmp_path / "here"), _records(tmp_path / "ray")
    assert Counter(r["node"] for r in a) == Counter(r["node"] for r in b) and len(a) >= 18
    assert a == b  # bit for bit: the same kernels on one thread, whichever process runs them


@pytest.mark.slow
def test_a_worker_lost_mid_run_ends_it_with_one_line_that_names_the_node(cluster, tmp_path, cache):
    import time

    extra = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")  # ours to lose: 3 shards, one on it
    runs = tmp_path / "runs"
    proc = subprocess.Popen(_sim(runs, "--ray", cluster.address, "--set=rounds=200"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(runs.glob("*/metrics.jsonl"))
            if files and len(files[0].read_text().splitlines()) >= 6:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        cluster.remove_node(extra, allow_graceful=False)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the shard holding learner n" in lines[0] and "is gone" in lines[0], err[-3000:]
