"""Tests for p2pfl.topology: generators, files, connectivity and mixing weights."""

import os
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.topology import (
    GENERATORS,
    Topology,
    TopologyError,
    check_connected,
    describe,
    load_topology,
    make_topology,
    metropolis_hastings_weights,
    neighbors,
    resolve_topology,
    save_topology,
)

REPO = Path(__file__).resolve().parent.parent
RANDOM = ["erdos-renyi", "small-world", "watts-strogatz", "barabasi-albert", "random-regular"]


def edges(g):
    return sorted(tuple(sorted(e)) for e in g.edges)


# ---- generators


@pytest.mark.parametrize("name", list(GENERATORS))
@pytest.mark.parametrize("n", [6, 12, 31, 64])
@pytest.mark.parametrize("seed", [0, 7])
def test_generators_connected_simple_right_size(name, n, seed):
    if name == "random-regular" and n % 2:
        n += 1  # n*d must be even for d=3
    g = make_topology(name, n, seed=seed)
    assert sorted(g.nodes) == list(range(n))
    assert not g.is_directed() and not g.is_multigraph()
    assert nx.number_of_selfloops(g) == 0
    check_connected(g)


@pytest.mark.parametrize("name", ["ring", "line", "star", "complete", "grid", "torus", "erdos-renyi"])
def test_tiny_graphs(name):
    for n in (1, 2, 3):
        g = make_topology(name, n)
        assert g.number_of_nodes() == n and nx.number_of_selfloops(g) == 0
        check_connected(g)


@pytest.mark.parametrize("name", RANDOM)
def test_seed_determinism(name):
    a, b = make_topology(name, 32, seed=3), make_topology(name, 32, seed=3)
    assert edges(a) == edges(b)
    assert edges(a) != edges(make_topology(name, 32, seed=4))


def test_known_shapes():
    assert edges(make_topology("ring", 4)) == [(0, 1), (0, 3), (1, 2), (2, 3)]
    assert edges(make_topology("star", 4)) == [(0, 1), (0, 2), (0, 3)]
    assert make_topology("complete", 6).number_of_edges() == 15
    g = make_topology("grid", 12)  # 3 x 4 is the most square factorization
    assert g.number_of_edges() == 3 * 3 + 2 * 4
    assert make_topology("grid", 12, rows=2).number_of_edges() == 2 * 5 + 1 * 6
    assert all(d == 4 for _, d in make_topology("torus", 16).degree)
    assert all(d == 3 for _, d in make_topology("random-regular", 10, seed=1).degree)
    assert all(d == 6 for _, d in make_topology("random-regular", 10, seed=1, d=6).degree)
    assert make_topology("barabasi-albert", 20, m=3).number_of_edges() == 3 * (20 - 3)


def test_params_from_strings_and_aliases():
    a = make_topology("small-world", 16, seed=0, k="4", p="0.2")
    assert edges(a) == edges(make_topology("Watts_Strogatz", 16, seed=0))


def test_unknown_name_lists_choices():
    with pytest.raises(TopologyError, match=r"unknown topology 'moebius'; choose one of: ring, line, star"):
        make_topology("moebius", 8)


@pytest.mark.parametrize(
    "name, n, params, needle",
    [
        ("ring", 0, {}, "n must be >= 1"),
        ("ring", 2.5, {}, "n must be an integer"),
        ("ring", 8, {"k": 2}, "ring takes no parameters"),
        ("small-world", 16, {"q": 1}, "allowed: k, p"),
        ("small-world", 4, {}, "k=4 needs n > k"),
        ("small-world", 16, {"k": 3}, "k must be even"),
        ("small-world", 16, {"p": 1.5}, "p must be a probability"),
        ("erdos-renyi", 16, {"p": "x"}, "p must be a probability"),
        ("random-regular", 9, {}, "n*d must be even"),
        ("random-regular", 8, {"d": 8}, "d must be in 1..7"),
        ("barabasi-albert", 8, {"m": 0}, "m must be in 1..7"),
        ("grid", 12, {"rows": 5}, "choose rows from: 1, 2, 3, 4, 6, 12"),
    ],
)
def test_bad_parameters(name, n, params, needle):
    with pytest.raises(TopologyError, match=needle.replace("*", r"\*").replace("(", r"\(")):
        make_topology(name, n, **params)


def test_never_connected_names_parameter():
    with pytest.raises(TopologyError, match="raise p"):
        make_topology("erdos-renyi", 40, p=0.01)
    with pytest.raises(TopologyError, match="raise d"):
        make_topology("random-regular", 400, d=1)


# ---- connectivity, weights, describe


def test_check_connected_messages():
    g = nx.Graph([(0, 1), (1, 2), (3, 4)])
    g.add_node(5)
    with pytest.raises(TopologyError, match=r"3 components: \[0, 1, 2\] \(3 nodes\); \[3, 4\]") as e:
        check_connected(g)
    assert "add edges" in str(e.value)
    with pytest.raises(TopologyError, match="no nodes"):
        check_connected(nx.Graph())


def test_neighbors_sorted():
    g = make_topology("star", 5)
    assert neighbors(g, 0) == [1, 2, 3, 4] and neighbors(g, 3) == [0]


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 24))
    pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from((u, v) for u, v in draw(st.lists(pairs, max_size=60)) if u != v)
    if draw(st.booleans()):  # a random spanning path makes it connected
        order = draw(st.permutations(range(n)))
        nx.add_path(g, order)
    return g


@settings(max_examples=150, deadline=None)
@given(graphs())
def test_mh_weights_properties(g):
    w = metropolis_hastings_weights(g)
    n = g.number_of_nodes()
    assert w.shape == (n, n)
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w.sum(axis=1), np.ones(n))
    np.testing.assert_allclose(w.sum(axis=0), np.ones(n))
    assert (w >= 0).all() and (np.diag(w) > 0).all()
    adj = nx.to_numpy_array(g, nodelist=range(n)) > 0
    off = ~adj & ~np.eye(n, dtype=bool)
    assert (w[off] == 0).all() and (w[adj] > 0).all()
    d = describe(g)
    assert d["nodes"] == n and 0.0 <= d["spectral_gap"] <= 1.0
    if nx.is_connected(g) and n > 1:
        assert d["spectral_gap"] > 0


def test_mh_exact_values():
    w = metropolis_hastings_weights(make_topology("line", 3))  # degrees 1, 2, 1
    np.testing.assert_allclose(w, [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]])


def test_mh_needs_int_nodes():
    with pytest.raises(TopologyError, match="from_graph"):
        metropolis_hastings_weights(nx.Graph([("a", "b")]))


def test_describe():
    d = describe(make_topology("ring", 8))
    assert (d["nodes"], d["edges"], d["diameter"], d["min_degree"], d["max_degree"]) == (8, 8, 4, 2, 2)
    assert d["mean_degree"] == 2.0
    assert 0 < d["spectral_gap"] < describe(make_topology("complete", 8))["spectral_gap"] == pytest.approx(1.0)
    assert describe(nx.Graph([(0, 1), (2, 3)]))["diameter"] is None


# ---- files


def sample(hosts=True):
    g = make_topology("small-world", 12, seed=5)
    h = {"n0": "192.168.1.20:4001", "n3": "[fe80::1]:4002"} if hosts else {}
    return Topology.from_graph("sw-12", g, hosts=h)


@pytest.mark.parametrize("suffix", [".toml", ".graphml", ".edges", ".txt"])
def test_round_trip(tmp_path, suffix):
    t = sample(hosts=suffix in (".toml", ".graphml"))
    path = tmp_path / f"sw-12{suffix}"
    save_topology(t, path)
    back = load_topology(path)
    assert back == t
    assert edges(back.graph) == edges(t.graph) and back.names == t.names and back.hosts == t.hosts
    save_topology(back, path)  # overwrite is fine and leaves no temp files
    assert os.listdir(tmp_path) == [path.name]


def test_round_trip_custom_names(tmp_path):
    g = nx.Graph([("zeta", "alpha"), ("alpha", "mid"), ("mid", "zeta")])
    t = Topology.from_graph("tri", g, hosts={"alpha": "host.lan:80"})
    assert t.names == ("zeta", "alpha", "mid")
    for suffix in (".toml", ".graphml"):
        save_topology(t, tmp_path / f"tri{suffix}")
        assert load_topology(tmp_path / f"tri{suffix}") == t


def test_save_is_deterministic(tmp_path):
    save_topology(sample(), tmp_path / "a.toml")
    save_topology(sample(), tmp_path / "b.toml")
    assert (tmp_path / "a.toml").read_bytes() == (tmp_path / "b.toml").read_bytes()


def test_failed_save_leaves_no_temp(tmp_path, monkeypatch):
    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_topology(sample(), tmp_path / "x.toml")
    assert os.listdir(tmp_path) == []


def test_edges_cant_hold_hosts(tmp_path):
    with pytest.raises(TopologyError, match="save as .toml"):
        save_topology(sample(), tmp_path / "x.edges")


def test_toml_nodes_inferred_in_natural_order(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('edges = [["n10", "n2"], ["n2", "n1"], ["n1", "n0"], ["n0", "n10"]]\n')
    t = load_topology(p)
    assert t.name == "t" and t.names == ("n0", "n1", "n2", "n10")
    assert edges(t.graph) == [(0, 1), (0, 3), (1, 2), (2, 3)]


def test_edge_list_comments(tmp_path):
    p = tmp_path / "g.txt"
    p.write_text("# a triangle\n0 1  # first\n1 2\n\n2 0\n")
    t = load_topology(p)
    assert t.names == ("0", "1", "2") and t.graph.number_of_edges() == 3


@pytest.mark.parametrize(
    "body, needle",
    [
        ('nodes = ["a", "b"]\n', "missing key 'edges'"),
        ('nodes = ["a", "b"]\nedges = [["a", "c"]]\n', "unknown node 'c'"),
        ('edges = [["a", "a"]]\n', "self-loop on 'a'"),
        ('nodes = ["a", "a"]\nedges = []\n', "nodes has duplicate name 'a'"),
        ('edges = [["a", "b"]]\n[hosts]\na = "192.168.1.2"\n', "hosts.a"),
        ('edges = [["a", "b"]]\n[hosts]\na = "192.168.1.2:70000"\n', "hosts.a"),
        ('edges = [["a", "b"]]\n[hosts]\nz = "h:1"\n', "hosts names unknown node 'z'"),
        ('edges = [["a", "b", "c"]]\n', r"edges\[0\] must be a pair"),
        ('edges = [["a", 1]]\n', r"edges\[0\]\[1\] must be a node name"),
        ('edges = [["a", "b"]]\nedge = []\n', "unknown key 'edge'"),
        ("edges = [\n", "invalid TOML"),
        ("edges = []\n", "no nodes"),
    ],
)
def test_bad_toml(tmp_path, body, needle):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(TopologyError, match=needle) as e:
        load_topology(p)
    assert str(p) in str(e.value)


def test_bad_other_files(tmp_path):
    (tmp_path / "x.edges").write_text("a b c\n")
    with pytest.raises(TopologyError, match="line 1"):
        load_topology(tmp_path / "x.edges")
    (tmp_path / "x.graphml").write_text("<graphml><oops")
    with pytest.raises(TopologyError, match="x.graphml"):
        load_topology(tmp_path / "x.graphml")
    with pytest.raises(TopologyError, match="unsupported suffix '.json'"):
        load_topology(tmp_path / "x.json")
    with pytest.raises(TopologyError, match="not found"):
        load_topology(tmp_path / "missing.toml")


def test_topology_validates():
    with pytest.raises(TopologyError, match="duplicate node names"):
        Topology("t", nx.path_graph(2), ("a", "a"), {})
    with pytest.raises(TopologyError, match="graph nodes must be 0..2"):
        Topology("t", nx.path_graph(2), ("a", "b", "c"), {})


# ---- resolve


def test_resolve(tmp_path):
    t = resolve_topology("ring", 8, seed=0)
    assert t.name == "ring-8" and t.names[0] == "n0" and t.n == 8
    path = tmp_path / "r.toml"
    save_topology(t, path)
    assert resolve_topology(str(path), None, 0) == t
    assert resolve_topology(str(path), 8, 0) == t
    with pytest.raises(TopologyError, match="has 8 nodes but n=16"):
        resolve_topology(str(path), 16, 0)
    with pytest.raises(TopologyError, match="only apply to generated"):
        resolve_topology(str(path), None, 0, k=4)
    with pytest.raises(TopologyError, match="needs n"):
        resolve_topology("ring", None, 0)
    with pytest.raises(TopologyError, match="not found"):
        resolve_topology(str(tmp_path / "nope.toml"), None, 0)
    with pytest.raises(TopologyError, match="choose one of: ring"):
        resolve_topology("moebius", 8, 0)


def test_resolve_rejects_disconnected_file(tmp_path):
    p = tmp_path / "split.toml"
    p.write_text('edges = [["a", "b"], ["c", "d"]]\n')
    with pytest.raises(TopologyError, match=r"2 components: \[a, b\]"):
        resolve_topology(str(p), None, 0)


@pytest.mark.parametrize("stem, n", [("ring-8", 8), ("small-world-16", 16), ("small-world-32", 32),
                                     ("torus-16", 16), ("lan-example", 8)])
def test_shipped_topologies(stem, n):
    t = resolve_topology(str(REPO / "topologies" / f"{stem}.toml"), n, 0)
    assert t.name == stem
    if stem == "small-world-16":  # the quickstart graph is exactly the generator's seed-0 output
        assert edges(t.graph) == edges(make_topology("small-world", 16, seed=0, k=4, p=0.2))
    if stem == "lan-example":
        assert len(t.hosts) == 8 and all(h.startswith("192.168.1.") for h in t.hosts.values())
