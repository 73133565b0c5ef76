"""The emulated LAN (network namespaces this test makes and removes) and LAN discovery: real `p2pfl node`
processes in namespaces, a cable pulled and put back, and nodes that find each other by mDNS. Nothing
here touches the host's interfaces: every address lives inside the namespaces."""

import time

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl import lan
from p2pfl.launch import CableCut, Launch, node_records, plan_nodes
from p2pfl.topology import Topology
from p2pfl.transport.mdns import ring_neighbours
from tests.test_libp2p import TINY_SETS

needs_namespaces = pytest.mark.skipif(lan.available() is not None, reason=str(lan.available()))


def test_link_settings_read_as_people_write_them():
    assert lan.parse_ms("50ms") == 50.0 and lan.parse_ms("0.05s") == 50.0 and lan.parse_pct("2%") == 2.0
    with pytest.raises(ValueError, match="write it as 50ms"):
        lan.parse_ms("fast")
    with pytest.raises(ValueError, match="between 0% and 100%"):
        lan.parse_pct("120%")
    assert lan.Netem(50, 10, 2, "10mbit").args() == ["delay", "50ms", "10ms", "distribution", "normal",
                                                     "loss", "2%", "rate", "10mbit"]
    assert lan.Netem().args() == []


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), degree=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_every_node_choosing_its_ring_neighbours_makes_a_connected_graph(n, degree, seed):
    import random

    ids = [f"12D3KooW{random.Random(seed * 100 + i).getrandbits(64):016x}" for i in range(n)]
    g = nx.Graph()
    g.add_nodes_from(ids)
    for me in ids:
        chosen = ring_neighbours(me, set(ids) - {me}, degree)
        assert len(chosen) == len(set(chosen)) == min(degree, n - 1) and me not in chosen
        g.add_edges_from((me, peer) for peer in chosen)
    assert nx.is_connected(g)


def _namespaces() -> set[str]:
    return set(lan.existing())


@needs_namespaces
def test_the_lan_removes_everything_it_made_also_after_an_error():
    before = _namespaces()
    with pytest.raises(RuntimeError, match="boom"):
        with lan.EmulatedLan(2, netem=lan.Netem(rate="10mbit"), partial=True) as net:
            assert {net.ns(0), net.ns(1), net.bridge_ns} <= _namespaces()
            raise RuntimeError("boom")
    assert _namespaces() == before


def _plans(net, tmp_path, n, rounds, sets=(), **kw):
    names = tuple(f"n{i}" for i in range(n))
    topo = Topology("ring", nx.cycle_graph(n), names, {name: f"{net.address(i)}:4001" for i, name in enumerate(names)})
    return plan_nodes(topo, tmp_path, rounds=rounds, overrides=TINY_SETS + sets, prefix=net.prefix, **kw)


CUT_S = 8.0  # the cable stays out past node.RECONNECT_S: both ends hold a dead connection they must renew


@needs_namespaces
def test_real_nodes_in_namespaces_finish_and_a_cut_node_comes_back_without_a_restart(tmp_path):
    with lan.EmulatedLan(3, netem=lan.Netem(rate="10mbit"), partial=True) as net:
        # rounds of ~0.5 s (200 steps), so that many run after the restore; nobody waits 5 s for the cut node
        plans = _plans(net, tmp_path, 3, rounds=60, sets=("train.local_steps=200", "gossip.wait_timeout=2.0"))
        drill = CableCut(net, plans, node=1, for_s=CUT_S, min_rounds=4)  # 4 of its rounds at least: on a busy
        # machine a round may outlast the seconds
        with Launch(plans) as launch:
            launch.wait(on_tick=drill.tick, tick=0.2, timeout=240)
        assert launch.exit_codes() == {"n0": 0, "n1": 0, "n2": 0}
        ours = node_records(plans[1])
        assert ours[-1]["round"] == 60  # one process all along: it never restarted ...
        cut_off = [r for r in ours if drill.cut_round < r["round"] <= drill.back_round]
        assert sum(r["bytes_in"] == 0 for r in cut_off) >= 3  # ... heard nothing for rounds while cut (the first
        # of them may have heard its neighbours before the cable went) ...
        # ... and heard its neighbours again within the redial backoff's cap (10 s, with jitter) of the restore
        assert drill.heard_after_s is not None and drill.heard_after_s < 20, drill
    assert not any(net.tag in ns for ns in _namespaces())


@needs_namespaces
def test_nodes_without_peers_find_each_other_by_mdns_and_keep_their_degree(tmp_path):
    with lan.EmulatedLan(3) as net:
        plans = _plans(net, tmp_path, 3, rounds=3, dial=False,
                       extra=("--discover", "mdns", "--degree", "2", "--start-timeout", "30"))
        started = time.monotonic()
        with Launch(plans) as launch:
            launch.wait(tick=0.5, timeout=240)
        assert launch.exit_codes() == {"n0": 0, "n1": 0, "n2": 0}
        for p in plans:  # each greeted --degree discovered neighbours before its first round, within 30 s
            log_text = (p.state_dir / "node.log").read_text()
            assert "gave up waiting" not in log_text and "2 neighbour(s) greeted after" in log_text, log_text[-2000:]
            assert node_records(p)[-1]["round"] == 3
        assert time.monotonic() - started < 240
