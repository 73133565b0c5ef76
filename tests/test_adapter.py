"""Tests for the parameter modes: shared adapters, LoRA rank padding, averaging, and their simulations."""

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st


from p2pfl import assemble
from p2pfl.averaging import mix, push_sum
from p2pfl.config import ConfigError, GossipConfig, NodeProfile, Scenario, TrainConfig, load_scenario
from p2pfl.data import load_source
from p2pfl.learner import Learner
from p2pfl.models import build_model
from p2pfl.models.adapter import LoRALinear, attach
from p2pfl.modes import NodeContext, Received, make_mode
from p2pfl.node import EvalData
from p2pfl.sim import Simulation, SimulatedCompute
from tests.test_sim import TINY as SIM_TINY
from p2pfl.topology import metropolis_hastings_weights
from p2pfl.transport.memory import LinkModel, MemoryNetwork
from tests.test_node import run_all

C, L = 10, 40


def model(arch, embed_dim=32, seed=0, **options):
    torch.manual_seed(seed)
    return build_model(arch, input_length=L, num_classes=C, embed_dim=embed_dim, **options)


# ------------------------------------------------------------------------------------ adapters

@pytest.mark.parametrize("kind, shape", [("bottleneck", (32, 16, C)), ("residual", (32, 16)), ("head", (32, C))])
def test_unlike_backbones_share_one_layout(kind, shape):
    # four architectures, one with a wider embedding (it gets a private projection): one shared vector
    models = [model("mlp"), model("cnn1d", channels=8), model("gru", embed_dim=48), model("transformer")]
    adapters = [attach(m, kind, embed_dim=32, num_classes=C, seed=7) for m in models]
    assert {a.shape for a in adapters} == {shape}
    flats = [a.get_flat() for a in adapters]
    assert len({len(f) for f in flats}) == 1
    for f in flats[1:]:
        np.testing.assert_array_equal(f, flats[0])  # same seed: every node starts from the same adapter
    x = torch.randn(5, L)
    for m in models:
        assert m(x).shape == (5, C)
    assert not isinstance(models[2].head.proj, torch.nn.Identity) and isinstance(models[0].head.proj, torch.nn.Identity)


def test_bottleneck_adapter_starts_as_identity_on_the_embedding():
    m = model("mlp")
    a = attach(m, "bottleneck", embed_dim=32, num_classes=C, seed=0)
    h = torch.randn(3, 32)
    torch.testing.assert_close(a.module(h), a.module.classifier(h))


def test_set_flat_round_trips_and_rejects_wrong_lengths():
    m = model("cnn1d")
    a = attach(m, "bottleneck", embed_dim=32, num_classes=C, seed=0)
    v = np.random.default_rng(0).standard_normal(a.size).astype(np.float32)
    a.set_flat(v)
    np.testing.assert_array_equal(a.get_flat(), v)
    with pytest.raises(ValueError, match=rf"needs \({a.size},\)"):
        a.set_flat(v[:-1])


def test_whole_adapter_is_every_parameter():
    m = model("cnn1d")
    a = attach(m, "whole", embed_dim=32, num_classes=C, seed=0)
    assert a.size == sum(p.numel() for p in m.parameters()) == a.shape[0]


# ---------------------------------------------------------------------------------------- LoRA

def _lora(rank, shared_rank=4, seed=0):
    m = model("mlp", seed=0)  # the common backbone: same seed on every node
    return m, attach(m, "lora", embed_dim=32, num_classes=C, seed=seed, rank=rank, shared_rank=shared_rank)


def test_lora_ranks_pad_to_the_shared_layout_and_truncate_back():
    _, full = _lora(4)
    m2, low = _lora(2)
    assert full.shape == low.shape and full.size == low.size
    layers = [mod for mod in m2.modules() if isinstance(mod, LoRALinear)]
    assert len(layers) == 2 and all(lay.rank == 2 for lay in layers)  # both body layers, not the head
    v = low.get_flat()
    low.set_flat(v)
    np.testing.assert_array_equal(low.get_flat(), v)  # round trip at the node's own rank
    # a full-rank vector (the average of rank-4 and rank-2 nodes) keeps its first 2 components only
    w = np.random.default_rng(1).standard_normal(full.size).astype(np.float32)
    full.set_flat(w)
    low.set_flat(w)
    lay = layers[0]
    a_full = w[:4 * lay.A.shape[1]].reshape(4, -1)
    torch.testing.assert_close(lay.A.detach(), torch.from_numpy(a_full[:2]))
    padded = low.get_flat()
    assert np.count_nonzero(padded) < np.count_nonzero(w)  # the truncated components travel as zeros
    low.set_flat(padded)
    np.testing.assert_array_equal(low.get_flat(), padded)


def test_lora_trains_factors_and_head_only():
    m, a = _lora(2)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".A", ".B")) or n.startswith("head.") for n in trainable)
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    before = a.get_flat()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(m(torch.randn(8, L)), torch.randint(C, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if n in frozen)
    assert not np.array_equal(a.get_flat(), before)


def test_lora_rank_above_the_shared_rank_is_refused():
    with pytest.raises(ValueError, match="between 1 and the shared rank 4"):
        _lora(5)


# ----------------------------------------------------------------------------------- averaging

@st.composite
def connected_graphs(draw):
    n = draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**16))
    g = nx.gnp_random_graph(n, draw(st.floats(0.2, 0.9)), seed=seed)
    g.add_edges_from(nx.utils.pairwise(range(n)))  # a path through all nodes: connected
    return g


@settings(max_examples=40, deadline=None)
@given(g=connected_graphs(), seed=st.integers(0, 2**16))
def test_gossip_averaging_converges_to_the_mean(g, seed):
    w = metropolis_hastings_weights(g)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)  # each node's weights, its own included
    np.testing.assert_allclose(w, w.T)
    x = np.random.default_rng(seed).standard_normal((g.number_of_nodes(), 3)).astype(np.float32)
    mean = x.mean(axis=0)
    for _ in range(3000):
        x = np.stack([mix(x[i], [(w[i, j], x[j]) for j in g.neighbors(i)]) for i in g.nodes])
        if np.abs(x - mean).max() < 1e-4:
            break
    np.testing.assert_allclose(x, np.broadcast_to(mean, x.shape), atol=1e-4)


def test_mix_keeps_a_silent_neighbours_weight_on_self_and_refuses_bad_input():
    own, other = np.zeros(3, np.float32), np.ones(3, np.float32)
    np.testing.assert_allclose(mix(own, [(0.25, other)]), 0.25)
    np.testing.assert_array_equal(mix(own, []), own)
    with pytest.raises(ValueError, match="sum to at most 1"):
        mix(own, [(0.7, other), (0.7, other)])
    with pytest.raises(ValueError, match="shape"):
        mix(own, [(0.5, np.ones(4, np.float32))])


# -------------------------------------------------------------------------------- simulations

# test_sim's tiny scenario, 3 rounds, each knowledge kind in its default codec unless a test says
TINY = {k: v for k, v in SIM_TINY.items() if k != "gossip.codec"} | {"rounds": 3}


def simulate(**overrides):
    return Simulation(load_scenario(None, TINY | overrides), run_dir=None).run()


def test_adapter_mode_with_the_whole_model_is_fedavg_exactly(cache):
    fedavg = simulate(mode="fedavg", profiles=["cnn1d"])
    whole = simulate(mode="adapter", profiles=["cnn1d"], **{"adapter.kind": "whole"})
    keys = ("global_acc", "personal_acc", "test_loss", "train_loss")
    a = sorted((r["node"], r["round"], *(r[k] for k in keys)) for r in fedavg.records)
    b = sorted((r["node"], r["round"], *(r[k] for k in keys)) for r in whole.records)
    assert len(a) == 4 * 3
    np.testing.assert_allclose([x[2:] for x in a], [x[2:] for x in b], rtol=0, atol=1e-6)
    assert fedavg.summary["global"]["mean"] > 0


def test_adapter_and_hybrid_run_on_mixed_models_and_send_what_they_say(cache):
    adapter = simulate(mode="adapter", profiles=["mlp", "cnn1d"], **{"gossip.codec": "fp32"})
    hybrid = simulate(mode="hybrid", profiles=["mlp", "cnn1d"], **{"gossip.codec": "fp32"})
    # shared bottleneck adapter at embed_dim 16: 16*16+16 + 16*16+16 + 16*4+4 values (4 classes)
    values = (16 * 16 + 16) * 2 + 16 * 4 + 4
    for run in (adapter, hybrid):
        assert all(r["rejected"] == {} for r in run.records)
        assert all(r["contributors"] == 2 for r in run.records if r["round"] >= 2)
    # in round 2 (round 1 adds hellos, in the last some neighbours have left) each node sends its
    # adapter in fp32 to its 2 ring neighbours, plus small framing
    per_round = np.mean([r["bytes_out"] for r in adapter.records if r["round"] == 2])
    assert 2 * 4 * values < per_round < 2 * 4 * values * 1.1
    assert all(r["inbox"] == {"logits": 2, "params": 2} for r in hybrid.records if r["round"] == 2)
    assert all(r["inbox"] == {"params": 2} for r in adapter.records if r["round"] == 2)
    hybrid_round = np.mean([r["bytes_out"] for r in hybrid.records if r["round"] == 2])
    # hybrid's auto adapter is the residual one (no classifier: 544 values), plus fp32 logits on a
    # 200-row slice of 4 classes, to each of 2 neighbours
    assert 2 * (544 + 200 * 4) * 4 < hybrid_round < 2 * (544 + 200 * 4) * 4 * 1.1


def test_parameter_modes_refuse_unlike_backbones_where_they_need_one():
    with pytest.raises(ConfigError, match="same architecture"):
        assemble.plans(load_scenario(None, TINY | {"mode": "adapter", "adapter.kind": "lora"}), *_data_and_topology())
    with pytest.raises(ConfigError, match="adapter.kind = 'hat'; choose one of: auto, bottleneck"):
        load_scenario(None, {"mode": "adapter", "adapter.kind": "hat"})


def _data_and_topology():
    scenario = load_scenario(None, TINY)
    return assemble.data_and_reference(scenario)[0], assemble.topology(scenario)


async def test_a_node_with_another_adapter_shape_is_refused_at_hello(autojump_clock, cache, caplog):
    data = load_source("synthetic", num_samples=400, seed=42)
    train = TrainConfig(warmup_steps=2, local_steps=2, batch_size=16)
    nodes = []
    async with MemoryNetwork(LinkModel(latency=0.01), seed=0) as net:
        for name, other, bottleneck in (("a", "b", 16), ("b", "a", 8)):
            m = build_model("mlp", input_length=data.input_shape[-1], num_classes=data.num_classes, embed_dim=16)
            adapter = attach(m, "bottleneck", embed_dim=16, num_classes=data.num_classes, seed=0, bottleneck=bottleneck)
            learner = Learner(m, data.x_train[:100], data.y_train[:100], num_classes=data.num_classes, config=train,
                              total_steps=10, seed=0, adapter=adapter)
            scenario = Scenario(mode="adapter", rounds=2, gossip=GossipConfig(wait_timeout=1.0))
            plan = assemble.node_plan(scenario, 0, name, NodeProfile(name="mlp", arch="mlp"), np.arange(100),
                                      {other: 0.5})
            nodes.append(assemble.make_node(scenario, plan, learner=learner, mode=make_mode("adapter"),
                                            transport=net.endpoint(name), reference=None,
                                            test=EvalData(data.x_test, data.y_test), compute=SimulatedCompute(0.01)))
        await run_all(nodes)
    for node in nodes:
        assert node.counters.rejected["mismatch"] >= 1
        assert all(p.inbox.latest == {} for p in node.peers.values())  # nothing of the other's was averaged in
    assert "adapter shape differs: ours (16, 16, 4), theirs (16, 8, 4)" in caplog.text


def test_delta_coded_adapters_cost_fewer_bytes_and_resync_after_loss(cache):
    plain = simulate(mode="adapter", profiles=["cnn1d"], rounds=6, **{"gossip.codec": "int8"})
    delta = simulate(mode="adapter", profiles=["cnn1d"], rounds=6,
                     **{"gossip.codec": "int8+z", "gossip.delta": True, "gossip.key_every": 3})
    assert all(r["delta_behind"] == 0 for r in delta.records)
    assert delta.summary["bytes_per_node_per_round"] < plain.summary["bytes_per_node_per_round"]
    assert abs(delta.global_mean - plain.global_mean) < 0.05
    # 20% of messages lost: differences to a lost frame are dropped until the next key frame
    lossy = simulate(mode="adapter", profiles=["cnn1d"], rounds=6, seed=1,
                     **{"gossip.delta": True, "gossip.key_every": 3, "network.loss": 0.2, "gossip.wait_timeout": 2.0})
    assert sum(r["delta_behind"] for r in lossy.records if r["round"] == 6) > 0
    assert {r["round"] for r in lossy.records} == set(range(1, 7))


@settings(max_examples=30, deadline=None)
@given(g=connected_graphs(), seed=st.integers(0, 2**16))
def test_push_sum_reaches_the_plain_mean_where_uniform_weights_are_not_symmetric(g, seed):
    # each node weighs itself and its neighbours uniformly, as a real node that cannot see the graph does
    n = g.number_of_nodes()
    share = {i: 1.0 / (g.degree(i) + 1) for i in g.nodes}
    x0 = np.random.default_rng(seed).standard_normal((n, 2)).astype(np.float32)
    x, mass = x0.copy(), np.ones(n)
    for _ in range(3000):
        sent = {i: (mass[i] * share[i], x[i].copy()) for i in g.nodes}  # every neighbour gets the same share
        for i in g.nodes:
            x[i], mass[i] = push_sum(x[i], mass[i] * share[i], [sent[j] for j in g.neighbors(i)])
        if np.abs(x - x0.mean(axis=0)).max() < 1e-4:
            break
    np.testing.assert_allclose(x, np.broadcast_to(x0.mean(axis=0), x.shape), atol=1e-4)
    np.testing.assert_allclose(mass.sum(), n)  # mass is conserved


def test_plain_mixing_with_uniform_weights_is_biased_where_push_sum_is_not():
    g = nx.star_graph(4)  # the hub has 4 neighbours, each leaf 1: the uniform weights are far from symmetric
    x = np.arange(5, dtype=np.float32)[:, None]
    for _ in range(200):
        x = np.stack([mix(x[i], [(1.0 / (g.degree(i) + 1), x[j]) for j in g.neighbors(i)]) for i in g.nodes])
    assert abs(float(x[0, 0]) - 2.0) > 0.2  # not the mean 2.0: plain mixing needs symmetric weights


def test_push_sum_refuses_non_positive_mass():
    with pytest.raises(ValueError, match="masses must be > 0"):
        push_sum(np.zeros(2, np.float32), 0.0, [])


class FlatLearner:
    """Just the vector a parameter mode averages."""

    def __init__(self, v):
        self.v = np.asarray(v, np.float32)

    def get_flat(self):
        return self.v.copy()

    def set_flat(self, v):
        self.v = np.asarray(v, np.float32)


def test_push_sum_adds_a_neighbours_mass_once_however_long_its_frame_stays_newest():
    mode = make_mode("adapter", averaging="push-sum")
    ctx = NodeContext(FlatLearner([0.0]), None, 0.5, GossipConfig())
    out = mode.share(ctx, 0)[0]
    assert out.mass == 1.0 and mode.mass == 0.5  # half kept, half to the one neighbour
    frame = Received("b", 0, "params", np.array([1.0], np.float32), 0, 0, np.zeros(2), 0.5, mass=0.5)
    mode.absorb(ctx, [frame], 1)
    assert mode.mass == 1.0 and ctx.learner.v[0] == 0.5
    mode.absorb(ctx, [frame], 2)  # the neighbour is slow: the same frame again adds nothing
    assert mode.mass == 1.0 and ctx.learner.v[0] == 0.5
    mode.share(ctx, 2)
    mode.reclaim(0.5)  # the neighbour was down: its share could not be sent and stays here
    assert mode.mass == 1.0


def test_adapter_mode_with_push_sum_runs_in_a_simulation(cache):
    run = simulate(mode="adapter", profiles=["mlp", "cnn1d"], **{"gossip.averaging": "push-sum"})
    assert all(r["rejected"] == {} for r in run.records)
    assert run.global_mean > 0
    with pytest.raises(ConfigError, match="gossip.averaging = 'gossip'; choose one of: auto, metropolis, push-sum"):
        load_scenario(None, {"gossip.averaging": "gossip"})


def test_lora_nodes_of_two_ranks_train_together(cache, tmp_path):
    low = tmp_path / "cnn1d-r2.toml"
    low.write_text('arch = "cnn1d"\nlora_rank = 2\n[arch_options]\nchannels = 8\n')
    high = tmp_path / "cnn1d-r4.toml"
    high.write_text('arch = "cnn1d"\n[arch_options]\nchannels = 8\n')
    run = simulate(mode="adapter", profiles=[str(low), str(high)], **{"adapter.kind": "lora", "adapter.lora_rank": 4})
    assert all(r["rejected"] == {} for r in run.records)
    assert all(r["inbox"] == {"params": 2} for r in run.records if r["round"] == 2)
    # one architecture, two profiles: the summary also groups by profile
    assert set(run.summary["per_arch"]) == {"cnn1d"} and set(run.summary["per_profile"]) == {"cnn1d-r2", "cnn1d-r4"}
    with pytest.raises(ConfigError, match="lora_rank = 2 is above the shared adapter.lora_rank = 1"):
        simulate(mode="adapter", profiles=[str(low), str(high)], **{"adapter.kind": "lora", "adapter.lora_rank": 1})


def test_push_sum_mass_is_what_a_checkpoint_keeps():
    mode = make_mode("adapter", averaging="push-sum")
    ctx = NodeContext(FlatLearner([0.0]), None, 0.25, GossipConfig())
    mode.share(ctx, 0)
    assert mode.state() == {"mass": 0.25}
    again = make_mode("hybrid", averaging="push-sum")  # hybrid keeps its adapter's mass the same way
    again.load_state(mode.state())
    assert again.state() == {"mass": 0.25}
    assert make_mode("adapter").state() == {}  # metropolis mixing keeps no numbers


def test_reputations_are_what_a_checkpoint_keeps_too():
    """A restarted node goes on distrusting whom it distrusted: a crash is no clean slate for a liar."""
    from p2pfl.modes import RunningMeans

    means = RunningMeans()
    means.update("liar", 0.0), means.update("honest", 1.0), means.update("liar", 0.1)
    again = RunningMeans()
    again.load("support:", means.state("support:") | {"standing:other": 0.5, "support:bad": float("nan")})
    assert again.state("s:") == {"s:honest": 1.0, "s:liar": pytest.approx(0.03)}
    assert list(again.state("s:")) == ["s:honest", "s:liar"]  # least recently heard first, as saved
    assert again.update("liar", float("nan")) == pytest.approx(0.03)  # nothing to judge: the saved mean
    saved = {"mass": 0.5, "support:a": 0.2, "standing:b": 0.3}
    hybrid = make_mode("hybrid", averaging="push-sum")  # both channels' reputations and the mass
    hybrid.load_state(saved)
    assert hybrid.state() == saved
    logits, adapter = make_mode("logits"), make_mode("adapter")
    logits.load_state(saved), adapter.load_state(saved)
    assert logits.state() == {"support:a": 0.2} and adapter.state() == {"standing:b": 0.3}
