"""Attacks change what an attacker sends, nothing else; the claims defence bounds what a lie can move."""

from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.attacks import Attacker, attackers
from p2pfl.config import AttackConfig, ConfigError, GossipConfig, load_scenario
from p2pfl.consensus import Contribution, bound_claims, class_weights, teacher
from p2pfl.modes import Mode, Outgoing, Teaching

C = 4
LOGITS = np.array([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -4.0]], np.float32)


class Fixed(Mode):
    """An honest mode that shares fixed knowledge, to see exactly what a lie makes of it."""

    name, kinds = "logits", ("logits",)

    def __init__(self, out):
        self.out = out

    def share(self, ctx, round_idx):
        return [self.out]

    def absorb(self, ctx, inbox, round_idx):
        return Teaching()


CTX = SimpleNamespace(gossip=GossipConfig(logit_range=8.0), learner=SimpleNamespace(num_classes=C))


def lie(kind, out=None, strength=0.0, heard=(), round_idx=1, start=0):
    honest = Fixed(out or Outgoing("logits", LOGITS, 0, 2))
    a = Attacker(honest, AttackConfig(kind=kind, count=1, strength=strength, start=start), seed=0)
    a.absorb(CTX, list(heard), round_idx)
    return a.share(CTX, round_idx)[0]


def test_logit_lies_rewrite_the_payload_as_named():
    np.testing.assert_array_equal(lie("shift").array.argmax(1), [3, 3])  # the least likely class, at full confidence
    assert lie("shift").array.max() == 4.0 and lie("shift").array.min() == -4.0  # the logit range's ends
    np.testing.assert_array_equal(lie("uniform").array, 0)
    np.testing.assert_array_equal(lie("invert").array, -LOGITS)
    reordered = lie("reorder").array
    np.testing.assert_array_equal(np.sort(reordered, 1), np.sort(LOGITS, 1))  # the same confidences ...
    np.testing.assert_array_equal(reordered.argmax(1), LOGITS.argmin(1))  # ... given to the least likely class
    np.testing.assert_array_equal(lie("scale", strength=3).array, 3 * LOGITS)
    inflated = lie("inflate")
    np.testing.assert_array_equal(inflated.array, LOGITS)  # honest logits ...
    np.testing.assert_array_equal(inflated.label_counts, [10_000] * C)  # ... with a claim of huge data
    both = lie("shift+inflate")
    assert both.array.argmax(1).tolist() == [3, 3] and both.label_counts.sum() == 4 * 10_000


def test_an_attack_waits_for_its_start_round_and_replay_resends_the_first_frame():
    assert lie("invert", round_idx=3, start=5).array is LOGITS
    honest = Fixed(Outgoing("logits", LOGITS, 0, 2))
    a = Attacker(honest, AttackConfig(kind="replay", count=1), seed=0)
    first = a.share(CTX, 0)[0]
    honest.out = Outgoing("logits", -LOGITS, 2, 2)
    assert a.share(CTX, 1)[0] is first  # the old slice, the old opinion


def test_parameter_lies():
    x = np.arange(1, 6, dtype=np.float32)
    out = Outgoing("params", x)
    heard = [SimpleNamespace(kind="params", array=x + d) for d in (0.0, 2.0)]
    np.testing.assert_array_equal(lie("sign-flip", out).array, -x)
    assert lie("huge", out).array[0] == pytest.approx(1e36)
    assert np.all(np.isfinite(lie("huge", out).array))  # finite: the wire lets it through
    np.testing.assert_allclose(lie("alie", out, heard=heard).array, x + 1.0 + 1.0)  # mean + 1 std
    np.testing.assert_allclose(lie("ipm", out, heard=heard).array, -0.5 * (x + 1.0))
    assert lie("gaussian", out).array.shape == x.shape
    assert lie("shift", out).array is x  # a logits lie leaves a parameter payload alone


def test_dissensus_pushes_away_from_the_consensus_in_either_payload():
    x = np.arange(1, 6, dtype=np.float32)
    heard = [SimpleNamespace(kind="params", array=x + d) for d in (0.0, 2.0)]  # their mean: x + 1
    np.testing.assert_allclose(lie("dissensus", Outgoing("params", x), heard=heard).array, x - 1.0)
    np.testing.assert_allclose(lie("dissensus", Outgoing("params", x), heard=heard, strength=3).array, x - 3.0)
    assert lie("dissensus", Outgoing("params", x)).array is x  # nothing heard yet: nothing to push from

    # logits: away from what it was taught (here the uniform consensus), so its own ranking, sharper; late, about
    # the slice its neighbours last spoke of (a round's own slice is never taught before the node speaks of it)
    a, ctx, heard = _taught_attacker("dissensus")
    a.absorb(ctx, heard, 3)
    sent = a.share(ctx, 3)
    assert [(o.ref_start, o.ref_count, o.round) for o in sent] == [(4, 2, 2)]
    own = LOGITS - LOGITS.max(axis=1, keepdims=True)
    np.testing.assert_allclose(sent[0].array - sent[0].array.max(axis=1, keepdims=True), 2 * own, atol=1e-5)


def _taught_attacker(kind):
    """An attacker taught the uniform consensus on rows 4-5, having heard a neighbour's round-2 frame about them."""
    class Taught(Fixed):
        taught = (np.full((6, C), 1.0 / C, np.float32), np.array([-1, -1, -1, -1, 3, 3]))

    learner = SimpleNamespace(num_classes=C, logits=lambda x: LOGITS[:len(x)])
    ctx = SimpleNamespace(gossip=GossipConfig(logit_range=40.0), learner=learner,
                          reference=SimpleNamespace(rows=lambda start, count: np.arange(start, start + count),
                                                    x=np.zeros((6, 3), np.float32)))
    heard = [SimpleNamespace(kind="logits", round=2, ref_start=4, ref_count=2)]
    return Attacker(Taught(Outgoing("logits", LOGITS, 0, 2)), AttackConfig(kind=kind, count=1), seed=0), ctx, heard


def test_echo_answers_late_with_the_consensus_it_was_taught_and_only_once_per_round_heard():
    a, ctx, heard = _taught_attacker("echo")
    assert a.share(ctx, 1) == []  # heard nothing yet: nothing to echo, nothing sent
    a.absorb(ctx, heard, 3)
    sent = a.share(ctx, 3)
    assert [(o.ref_start, o.ref_count, o.round) for o in sent] == [(4, 2, 2)]  # the neighbours' slice and round
    np.testing.assert_allclose(np.ptp(sent[0].array, axis=1), 0.0, atol=1e-5)  # the uniform consensus it was taught
    a.absorb(ctx, heard, 4)
    assert a.share(ctx, 4) == []  # nothing newer heard: round 2 was answered already


@pytest.mark.parametrize("kind", ["echo", "dissensus"])
def test_in_hybrid_this_rounds_params_frame_does_not_hold_back_the_late_logits(kind):
    # hybrid shares this round's params beside its logits: a late answer must be newer than our last late
    # logits, not than the params frame (which is always this round's, so every late answer would be refused)
    a, ctx, _ = _taught_attacker(kind)
    params = Outgoing("params", np.ones(3, np.float32))
    a.honest.kinds = ("logits", "params")
    a.honest.share = lambda ctx, round_idx: [Outgoing("logits", LOGITS, 0, 2), params]
    for round_idx in (3, 4, 5):
        a.absorb(ctx, [SimpleNamespace(kind="logits", round=round_idx - 1, ref_start=4, ref_count=2)], round_idx)
        sent = {o.kind: o.round for o in a.share(ctx, round_idx)}
        assert sent == {"logits": round_idx - 1, "params": None}


@pytest.mark.parametrize("kind, words", [
    ("invert+echo", ["echo", "undoing invert", "echo+invert"]),
    ("shift+scale+dissensus", ["dissensus", "undoing shift+scale", "dissensus+shift+scale"]),
    ("inflate+replay", ["replay", "replay+inflate"]),
    ("echo+uniform", ["echo and uniform", "only the last"]),
    ("shift+silent", ["silent alone"]),
])
def test_a_chain_whose_later_lie_would_undo_an_earlier_one_is_refused_with_the_order_that_works(kind, words):
    with pytest.raises(ConfigError) as e:
        load_scenario(None, {"attack": [{"kind": kind, "count": 1}]})
    assert all(w in str(e.value) for w in words), str(e.value)


def test_in_a_simulation_an_echo_travels_late_about_the_slice_its_neighbours_spoke_of(cache):
    from p2pfl.sim import Simulation
    from tests.test_sim import TINY

    s = load_scenario(None, TINY | {"topology.name": "ring", "topology.nodes": 4, "rounds": 4,
                                    "attack": [{"kind": "echo", "nodes": [1]}]})
    result = Simulation(s, run_dir=None).run()
    liar = result.built.plans[1].node_id
    neighbour = next(n for n in result.nodes if liar in n.peers)
    echoed = neighbour.peers[liar].inbox.latest["logits"]
    honest = [n.peers[m].inbox.latest["logits"] for n in result.nodes for m in n.peers if m != liar]
    assert echoed.round < max(k.round for k in honest)  # late: a round behind the honest frames
    assert (echoed.ref_start, echoed.ref_count) == neighbour.ctx.reference.slice_bounds(echoed.round)  # its slice


def test_bottleneck_placement_takes_the_most_central_nodes():
    barbell = nx.barbell_graph(5, 1)  # two 5-cliques joined through node 5: the path 4 - 5 - 6 carries it all
    s = load_scenario(None, {"attack": [{"kind": "dissensus", "count": 3, "place": "bottleneck"}]})
    assert set(attackers(s, barbell)) == {4, 5, 6}
    with pytest.raises(ConfigError, match="attack.place = 'middle'; choose one of: random, bottleneck"):
        load_scenario(None, {"attack": [{"kind": "shift", "count": 1, "place": "middle"}]})


def test_attackers_are_chosen_by_count_share_or_index_and_checked():
    s = load_scenario(None, {"attack": [{"kind": "shift", "count": 3}, {"kind": "uniform", "nodes": [0]}]})
    g16 = nx.cycle_graph(16)
    chosen = attackers(s, g16)
    assert len(chosen) == 4 and chosen[0].kind == "uniform"
    assert chosen == attackers(s, g16)  # seeded: the same run picks the same liars
    # a listed node the count would have picked is taken first: the count still gets its 3, elsewhere
    seeded = min(attackers(load_scenario(None, {"attack": [{"kind": "shift", "count": 3}]}), g16))
    both = attackers(load_scenario(None, {"attack": [{"kind": "shift", "count": 3},
                                                     {"kind": "uniform", "nodes": [seeded]}]}), g16)
    assert both[seeded].kind == "uniform" and sum(a.kind == "shift" for a in both.values()) == 3
    with pytest.raises(ValueError, match=r"\[2\] are listed by two \[\[attack\]\] tables"):
        attackers(load_scenario(None, {"attack": [{"kind": "shift", "nodes": [1, 2]},
                                                  {"kind": "uniform", "nodes": [2]}]}), g16)
    assert len(attackers(load_scenario(None, {"attack": [{"kind": "invert", "fraction": 0.2}]}), g16)) == 3
    with pytest.raises(ConfigError, match="exactly one of count, fraction, nodes or neighbours"):
        load_scenario(None, {"attack": [{"kind": "shift"}]})
    with pytest.raises(ConfigError, match="attack.kind = 'lies'"):
        load_scenario(None, {"attack": [{"kind": "lies", "count": 1}]})
    with pytest.raises(ValueError, match="not node indices"):
        attackers(load_scenario(None, {"attack": [{"kind": "shift", "nodes": [40]}]}), g16)
    with pytest.raises(ValueError, match="30 attackers asked for, but only 16 of the 16 nodes"):
        attackers(load_scenario(None, {"attack": [{"kind": "shift", "count": 30}]}), g16)
    with pytest.raises(ValueError, match="all 16 nodes attackers; leave at least one honest node"):
        attackers(load_scenario(None, {"attack": [{"kind": "shift", "fraction": 0.99}]}), g16)
    with pytest.raises(ValueError, match="only 1 of the 16 nodes are left"):  # an earlier table took the rest
        attackers(load_scenario(None, {"attack": [{"kind": "shift", "count": 15}, {"kind": "uniform", "count": 2}]}), g16)


def test_attackers_can_surround_every_honest_node():
    """neighbours = 2: enough liars that each honest node has two attacking neighbours, where the graph
    allows it (a greedy cover: on a ring of 8 the best is every other node, 4; greedy may take 5)."""
    from p2pfl.assemble import topology

    ring = nx.cycle_graph(8)
    bad = attackers(load_scenario(None, {"attack": [{"kind": "shift", "neighbours": 2}]}), ring)
    assert 4 <= len(bad) <= 5 and all(sum(u in bad for u in ring[v]) == 2 for v in ring if v not in bad)
    s = load_scenario(None, {"attack": [{"kind": "shift", "neighbours": 2}]})  # quickstart: small-world, k = 4
    graph = topology(s).graph
    bad = attackers(s, graph)
    honest = [v for v in graph if v not in bad]
    assert honest and all(sum(u in bad for u in graph[v]) >= min(2, graph.degree[v]) for v in honest)
    with pytest.raises(ConfigError, match="exactly one of count, fraction, nodes or neighbours"):
        load_scenario(None, {"attack": [{"kind": "shift", "neighbours": 2, "count": 1}]})


def test_a_cover_a_low_degree_node_cannot_have_says_so(caplog):
    """neighbours = 2 on a path: the end nodes have one neighbour each, so all they have attack, and the
    run is told who is short of the cover (a ring, where every node can get it, says nothing)."""
    with caplog.at_level("WARNING", logger="p2pfl.attacks"):
        bad = attackers(load_scenario(None, {"attack": [{"kind": "shift", "neighbours": 2}]}), nx.cycle_graph(8))
    assert bad and not caplog.records
    path = nx.path_graph(6)
    with caplog.at_level("WARNING", logger="p2pfl.attacks"):
        bad = attackers(load_scenario(None, {"attack": [{"kind": "shift", "neighbours": 2}]}), path)
    short = [v for v in path if v not in bad and sum(u in bad for u in path[v]) < 2]
    assert short and all(path.degree[v] < 2 or all(u in bad for u in path[v]) for v in short)
    (record,) = caplog.records
    assert f"honest node(s) {short} have fewer attacking neighbours" in record.getMessage()


# -- the claims defence ---------------------------------------------------------------------------------

def _contribution(rng, counts, confident=None):
    z = rng.normal(size=(50, C)).astype(np.float32)
    if confident is not None:
        z[:, confident] += 8.0
    return Contribution(z, np.asarray(counts, dtype=np.int64))


def test_a_liar_with_huge_counts_cannot_move_the_teacher_past_its_clipped_share():
    rng = np.random.default_rng(0)
    honest = [_contribution(rng, [100, 60, 30, 10], confident=0) for _ in range(5)]
    liar = _contribution(rng, [10**15] * C, confident=3)  # a confident wrong class, and data it never had
    raw, bounded = class_weights([*honest, liar], 0.02), class_weights(bound_claims([*honest, liar]), 0.02)
    assert raw[-1].min() > 0.999  # undefended, the liar owns every class ...
    assert (teacher([*honest, liar]).argmax(1) == 3).all()  # ... and every row
    # bounded, it weighs what a node with CLAIM_FACTOR (4) x the median data (200) would: 800 samples
    assert bound_claims([*honest, liar])[-1].label_counts.sum() == pytest.approx(4.0 * 200)
    assert bounded[-1, 0] == pytest.approx((200 + 0.02 * 800) / (200 + 0.02 * 800 + 5 * (100 + 0.02 * 200)))
    # what it does not do: on a class the honest nodes hold little of, the bounded liar still leads
    # (measured in the robustness benchmark; why claims is not on by default)
    assert bounded[-1, 3] > 0.5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 300), min_size=C, max_size=C), min_size=2, max_size=6), st.integers(0, 9))
def test_bounding_claims_never_moves_an_honest_consensus_whose_claims_are_plausible(counts, seed):
    totals = np.array([sum(c) for c in counts], dtype=float)
    cap = 4.0 * max(totals[0], float(np.percentile(totals, 50, method="lower")), 1.0)
    rng = np.random.default_rng(seed)
    contribs = [_contribution(rng, c) for c in counts]
    bounded = bound_claims(contribs)
    for c, b, t in zip(contribs, bounded, totals):
        if t <= cap:
            assert b is c  # within the bound: untouched
        else:
            assert b.label_counts.sum() == pytest.approx(cap)
    if (totals <= cap).all():
        np.testing.assert_array_equal(teacher(bounded), teacher(contribs))


def test_in_a_simulation_liars_are_marked_reported_apart_and_trusted_less(cache):
    from p2pfl.sim import Simulation
    from tests.test_sim import TINY

    s = load_scenario(None, TINY | {"topology.name": "ring", "topology.nodes": 6, "rounds": 4,
                                    "attack": [{"kind": "shift+inflate", "nodes": [2]}]})
    result = Simulation(s, run_dir=None).run()
    liar = result.built.plans[2].node_id
    assert result.summary["attackers"] == {liar: "shift+inflate"}
    assert result.summary["honest"]["nodes"] == 5
    assert all(("attacker" in r) == (r["node"] == liar) for r in result.records)
    # what its frames carried: the claim went over the wire to its neighbours
    neighbour = next(n for n in result.nodes if liar in n.peers)
    assert neighbour.peers[liar].inbox.latest["logits"].label_counts == (10_000,) * 2 * 2  # C = 4 classes
    # every honest node keeps a trust per neighbour it heard (agreement with the others' pool, in [0, 1])
    last = [r for r in result.records if r["round"] == 4]
    assert all(0.0 <= v <= 1.0 for r in last for v in r["trust"].values())
    peers = {n.node_id: set(n.peers) for n in result.nodes}
    assert all(set(r["trust"]) <= peers[r["node"]] for r in last)
    assert any(liar in r["trust"] for r in last)


# -- self-centred clipping of parameters ----------------------------------------------------------------

def test_clipping_leaves_honest_neighbours_and_bounds_a_far_one():
    from p2pfl.averaging import clip_around

    own = np.zeros(4, np.float32)
    honest = [np.array([1.0, 0, 0, 0], np.float32), np.array([0, 1.2, 0, 0], np.float32),
              np.array([0, 0, 0.9, 0], np.float32)]
    liar = np.array([-1e6, 0, 0, 0], np.float32)
    out = clip_around(own, [*honest, liar])
    for h, o in zip(honest, out[:3]):
        assert o is h  # within the radius: untouched
    assert np.linalg.norm(out[3]) == pytest.approx(2.0 * 1.0)  # 2 x the lower median distance (1.0)
    assert out[3][0] < 0  # in the direction it lies


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3), st.integers(1, 6), st.integers(0, 99))
def test_clipped_vectors_never_leave_the_ball(own, n, seed):
    from p2pfl.averaging import clip_around

    rng = np.random.default_rng(seed)
    own = np.asarray(own, np.float32)
    received = [(own + rng.normal(scale=10.0 ** rng.integers(-2, 7), size=3)).astype(np.float32) for _ in range(n)]
    dist = sorted(float(np.linalg.norm(x.astype(np.float64) - own)) for x in received)
    radius = 2.0 * dist[(n - 1) // 2]
    rounding = 8 * np.finfo(np.float32).eps * (float(np.abs(own).max()) + 1.0)  # float32 at own's magnitude
    for x in clip_around(own, received):
        assert np.linalg.norm(x.astype(np.float64) - own) <= radius * (1 + 1e-5) + rounding


# -- the parameter reputation defence --------------------------------------------------------------------

def _at(cosine: float, norm: float, axis: int = 1) -> np.ndarray:
    """A vector of `norm` at `cosine` with (1, 0, 0)."""
    v = np.zeros(3)
    v[0], v[axis] = cosine, np.sqrt(1 - cosine ** 2)
    return (norm * v).astype(np.float32)


def test_standing_keeps_near_aligned_neighbours_whole_and_takes_far_or_opposed_ones_away():
    from p2pfl.averaging import STANDING_FAR, STANDING_NEAR, alignment, spread, standings, toward

    own = np.zeros(3, np.float32)
    received = [np.array([1.0, 0, 0], np.float32), np.array([0, 1.5, 0], np.float32), np.array([0, 0, -40], np.float32),
                np.array([0, 0, 60], np.float32)]
    np.testing.assert_allclose(spread(own, received), [1 / 1.5, 1.0, 40 / 1.5, 60 / 1.5])  # the lower median: 1.5
    np.testing.assert_array_equal(spread(own, [own, own, received[0]]), [0.0, 0.0, np.inf])  # the near half agrees
    ours = np.array([3.0, 4.0, 0.0], np.float32)
    np.testing.assert_allclose(alignment(ours, [ours * 2, -ours, np.array([0, 0, 1.0], np.float32), own]), [1, -1, 0, 0])
    np.testing.assert_array_equal(alignment(own, [ours, -ours]), [1.0, 1.0])  # no direction of ours: distance judges
    own = np.array([1.0, 0, 0], np.float32)
    honest = [_at(0.9, 2.0), _at(0.9, 2.0, axis=2), _at(0.9, 2.0) * np.array([1, -1, 1], np.float32)]  # equally near
    flip = _at(-0.9, 1.0)  # near (1.7 median distances), but pointing away from us
    assert spread(own, [*honest, flip])[-1] < STANDING_NEAR
    assert standings(own, [*honest, flip]) == [1.0, 1.0, 1.0, 0.0]
    assert standings(own, [*honest[:2], flip, flip])[2:] == [0.0, 0.0]  # half of them away: the yardstick is aligned
    # a lone neighbour, or a majority, pointing away is no yardstick: cut all the same
    assert standings(own, [flip]) == [0.0]
    assert standings(own, [honest[0], flip, flip * 1.01]) == [1.0, 0.0, 0.0]
    half = own + (STANDING_NEAR + STANDING_FAR) / 2 * (honest[0] - own)  # aligned, but reaching far
    far = own + 2 * STANDING_FAR * (honest[0] - own)
    assert standings(own, [*honest, half, far])[3:] == [pytest.approx(0.5), 0.0]
    # unlike initialisations (real nodes with different seeds): nobody points our way, nobody is cut for it
    unaligned = [_at(c, 1.0, axis) for c, axis in ((0.02, 1), (0.0, 2), (-0.02, 1), (0.01, 2))]
    assert min(standings(own, unaligned)) >= 0.9
    np.testing.assert_allclose(toward(np.zeros(3, np.float32), received[2], 0.25), [0, 0, -10])
    assert toward(own, received[0], 1.0) is received[0]
    assert standings(own, []) == []
    assert standings(own, [*honest, np.full(3, np.inf, np.float32)]) == [1.0, 1.0, 1.0, 0.0]  # unjudgeable: nothing


def _param_mode_absorbs(inbox_rounds, defence="auto"):
    """What an adapter node at (4, 4) holds after absorbing each round's (sender, vector) pairs at weight 0.25."""
    from p2pfl.modes import NodeContext, Received, make_mode

    learner = SimpleNamespace()
    learner.get_flat = lambda: learner.v.copy()
    learner.set_flat = lambda v: setattr(learner, "v", np.asarray(v, np.float32))
    mode, out = make_mode("adapter"), []
    ctx = NodeContext(learner, None, 0.25, GossipConfig(defence=defence))
    for r, pairs in enumerate(inbox_rounds, 1):
        learner.v = np.full(2, 4.0, np.float32)  # the same own vector each round: only the verdict changes
        teaching = mode.absorb(ctx, [Received(s, r - 1, "params", np.asarray(v, np.float32), 0, 0, np.zeros(2), 0.25)
                                     for s, v in pairs], r)
        out.append((learner.v.copy(), teaching.weighed))
    return out


def test_a_sign_flipper_moves_us_nothing_and_regains_its_weight_only_slowly():
    honest = [("a", [5.0, 4.0]), ("b", [4.0, 5.0]), ("c", [5.0, 5.0])]
    flip = ("liar", [-4.0, -4.0])  # as near as twice our norm, but pointing the other way
    (held, weighed), = _param_mode_absorbs([honest + [flip]])
    np.testing.assert_allclose(held, 0.25 * np.array([14.0 + 4.0, 14.0 + 4.0]))  # the liar's share stays on us
    assert weighed["liar"] == 0.0 and all(weighed[s] == 1.0 for s in "abc")
    (undefended, _), = _param_mode_absorbs([honest + [flip]], defence="none")
    np.testing.assert_allclose(undefended, [2.5, 2.5])  # what the defence took away
    # three rounds of lies, then an honest-looking vector: the running mean keeps most of its pull away
    rounds = _param_mode_absorbs([honest + [flip]] * 3 + [honest + [("liar", [5.0, 4.0])]])
    assert rounds[-1][1]["liar"] == pytest.approx(0.3)  # REPUTATION_MEMORY 0.7 of the old 0
    # honest neighbours are never cut: the same vectors every round keep their whole weight
    assert all(w == {"a": 1.0, "b": 1.0, "c": 1.0} for _, w in _param_mode_absorbs([honest] * 4))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.integers(0, 99))
def test_standing_never_lets_a_sender_pull_beyond_the_far_edge(n, seed):
    """Whatever the vectors, a neighbour's pull after the reputation defence is at most STANDING_FAR lower-median
    distances: the ball the defence bounds every contribution to, liars or not."""
    from p2pfl.averaging import STANDING_FAR, standings, toward

    rng = np.random.default_rng(seed)
    own = rng.normal(size=4).astype(np.float32)
    received = [(own + rng.normal(scale=10.0 ** rng.integers(-2, 6), size=4)).astype(np.float32) for _ in range(n)]
    dist = sorted(float(np.linalg.norm(x.astype(np.float64) - own)) for x in received)
    yardstick = dist[(n - 1) // 2]
    for x, f in zip(received, standings(own, received)):
        moved = toward(own, x, f)
        assert np.linalg.norm(moved.astype(np.float64) - own) <= STANDING_FAR * yardstick * (1 + 1e-5) + 1e-5


def test_defences_combine_and_bad_ones_are_named():
    from p2pfl.config import parse_defence

    assert parse_defence("auto") == {"claims", "reputation"} and parse_defence("none") == set()
    assert parse_defence("claims+clip") == {"claims", "clip"}
    with pytest.raises(ConfigError, match="gossip.defence = 'shield'"):
        GossipConfig(defence="shield")


# -- the reputation defence -----------------------------------------------------------------------------

def _confident(rng, classes, rows=60, strength=6.0):
    """Logits confident in `classes[r % len(classes)]` on row r."""
    z = rng.normal(size=(rows, C)).astype(np.float32)
    z[np.arange(rows), [classes[r % len(classes)] for r in range(rows)]] += strength
    return z


def test_self_support_judges_neighbours_on_the_classes_our_labels_know():
    from p2pfl.consensus import reputation_factor, self_support

    rng = np.random.default_rng(0)
    own = Contribution(_confident(rng, [0, 1]), np.array([100, 100, 0, 0]))
    peer = Contribution(_confident(rng, [0, 1]), np.array([50, 50, 50, 0]))  # knows our classes, says so
    unaware = Contribution(np.zeros((60, C), np.float32), np.array([0, 0, 80, 80]))  # never saw them: chance
    liar = Contribution(-_confident(rng, [0, 1]), np.array([50, 50, 50, 0]))  # claims our classes, inverts them
    support = self_support([own, peer, unaware, liar])
    assert support[0] == 1.0 and support[1] == pytest.approx(1.0, abs=1e-3) and support[2] == pytest.approx(1.0)
    assert support[3] < 0.01
    assert [reputation_factor(s) for s in support] == [1.0, pytest.approx(1.0, abs=0.01), 1.0, 0.0]
    # rows we are unsure of, or of classes we hold no labels of, judge nobody
    unsure = Contribution(np.zeros((60, C), np.float32), np.array([100, 100, 0, 0]))
    assert np.isnan(self_support([unsure, liar])[1])
    elsewhere = Contribution(_confident(rng, [2, 3]), np.array([100, 100, 0, 0]))
    assert np.isnan(self_support([elsewhere, liar])[1])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 99), st.integers(1, 5), st.floats(0.0, 1.0))
def test_a_neighbour_that_says_what_we_say_is_never_down_weighted(seed, n, noise):
    """Whatever the rows and claims: a neighbour whose probabilities are ours, or sharper in our top
    class, keeps its full weight (a reputation cut needs a contradiction of what our labels know)."""
    from p2pfl.consensus import reputation_factor, self_support

    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(40, C)) * 4).astype(np.float32)
    own = Contribution(z, rng.integers(0, 100, size=C))
    sharper = z.copy()
    sharper[np.arange(40), z.argmax(1)] += noise * 5
    others = [Contribution(z if k % 2 else sharper, rng.integers(0, 100, size=C)) for k in range(n)]
    for s in self_support([own, *others])[1:]:
        assert np.isnan(s) or reputation_factor(s) == 1.0


@pytest.mark.parametrize("mode, attack", [("logits", "shift"), ("adapter", "sign-flip"), ("fd", "shift"),
                                          ("prototypes", "sign-flip")])
def test_in_a_simulation_reputation_cuts_a_liar_with_honest_counts_and_counts_it(cache, mode, attack):
    from p2pfl.node import DISTRUSTED
    from p2pfl.sim import Simulation
    from tests.test_sim import TINY

    s = load_scenario(None, TINY | {"topology.name": "ring", "topology.nodes": 6, "rounds": 4, "mode": mode,
                                    "gossip.defence": "claims+reputation",
                                    "attack": [{"kind": attack, "nodes": [2]}]})
    result = Simulation(s, run_dir=None).run()
    liar = result.built.plans[2].node_id
    last = [r for r in result.records if r["round"] == 4 and r["node"] != liar]
    kept = {r["node"]: r["reputation"] for r in last}
    near = [k[liar] for k in kept.values() if liar in k]
    honest = [v for k in kept.values() for pid, v in k.items() if pid != liar]
    # a neighbour that could judge it (confident rows of its own classes; tiny models have few) cut it; no
    # honest neighbour lost its weight
    assert near and min(near) < DISTRUSTED <= min(honest)
    neighbours = [n for n in result.nodes if liar in n.peers]
    assert any(n.counters.rejected["distrusted"] > 0 for n in neighbours)
    assert all(n.counters.rejected["distrusted"] == 0 for n in result.nodes if n not in neighbours)
    assert all(n.status()["neighbours"][liar]["reputation"] == n.peers[liar].reputation for n in neighbours)


# -- per-class knowledge (fd, prototypes) and push-sum masses: a well-formed lie within every wire limit --------

def _per_class_absorb(mode_name, own, received, defence, counts=None):
    """What a node of `mode_name` (fd, prototypes) makes of (sender, (C, x) array) frames at weight 0.25 each,
    holding labels of every class (or `counts`) and one labelled row per class."""
    from p2pfl.modes import NodeContext, Received, make_mode

    c = len(own)
    learner = SimpleNamespace(num_classes=c, label_counts=np.full(c, 50, np.int64) if counts is None else counts,
                              x=torch.zeros(c, 2), y=torch.arange(c), class_means=lambda logits: own.copy())
    mode = make_mode(mode_name)
    ctx = NodeContext(learner, None, 0.25, GossipConfig(defence=defence))
    return mode.absorb(ctx, [Received(s, 0, mode.kinds[0], np.asarray(v, np.float32), 0, 0,
                                      np.full(c, 50, np.int64) if k is None else k, 0.25)
                             for s, v, k in received], 1)


def _liar_moves_each_class(own, size):
    """own, with each class row's weight moved to the next class by `size` (the fd lie: every class taught as
    another), well inside modes.plausible's radius."""
    c = len(own)
    lie = own.astype(np.float64).copy()
    lie[np.arange(c), (np.arange(c) + 1) % c] += size
    return lie.astype(np.float32)


def test_an_fd_liar_with_huge_but_plausible_logits_cannot_take_the_teacher():
    own = 4.0 * np.eye(C, dtype=np.float32)
    honest = [(s, own + np.float32(0.1) * i, None) for i, s in enumerate("abc")]
    liar = ("liar", _liar_moves_each_class(own, 300.0), None)  # p(true class) = e^-296 in its softmax
    for defence in ("none", "claims", "auto"):
        t = _per_class_absorb("fd", own, honest + [liar], defence)
        p = t.probs.numpy()
        # probabilities are pooled, not logits: the liar pulls by its weight's share (1/5), never decides
        assert (p.argmax(axis=1) == np.arange(C)).all(), defence
        assert p[np.arange(C), np.arange(C)].min() > 0.5, defence
    clean = _per_class_absorb("fd", own, honest, "auto").probs.numpy()
    t = _per_class_absorb("fd", own, honest + [liar], "auto")
    assert t.weighed["liar"] == 0.0 and all(t.weighed[s] == 1.0 for s in "abc")  # its classes moved: cut
    np.testing.assert_allclose(t.probs.numpy(), clean, atol=1e-6)  # as if it had not spoken
    unsure = 0.5 * np.eye(C, dtype=np.float32)  # our own model gives our classes ~0.4: no confident row of ours
    t = _per_class_absorb("fd", unsure, [("a", unsure, None), ("liar", _liar_moves_each_class(unsure, 30.0), None)],
                          "auto")
    assert t.weighed == {"a": 1.0, "liar": 0.0}  # judged by what its rows claim, not by our confidence


def test_a_prototype_liar_is_cut_on_the_classes_both_hold_and_a_stranger_to_them_is_not():
    rng = np.random.default_rng(0)
    own = rng.normal(size=(C, 8)).astype(np.float32)
    honest = [(s, own + rng.normal(scale=0.1, size=own.shape).astype(np.float32), None) for s in "abc"]
    liar = ("liar", own + np.float32(40.0), None)  # every coordinate shifted: far, but within 100x our norm
    only_other = np.array([0, 0, 50, 50], np.int64)
    mine = np.array([50, 50, 0, 0], np.int64)
    stranger = ("stranger", own + rng.normal(scale=0.1, size=own.shape).astype(np.float32), only_other)
    t = _per_class_absorb("prototypes", own, honest + [liar, stranger], "auto", counts=mine)
    assert t.weighed["liar"] == 0.0 and all(t.weighed[s] == 1.0 for s in "abc")
    assert t.weighed["stranger"] == 1.0  # no class in common: nothing to judge it by, a stranger keeps its weight
    clean = _per_class_absorb("prototypes", own, honest + [stranger], "auto", counts=mine).anchors.numpy()
    np.testing.assert_allclose(t.anchors.numpy(), clean, atol=1e-5)
    undefended = _per_class_absorb("prototypes", own, honest + [liar, stranger], "none", counts=mine)
    assert np.abs(undefended.anchors.numpy() - clean).max() > 5.0  # what the defence took away
    clipped = _per_class_absorb("prototypes", own, honest + [liar, stranger], "claims+clip", counts=mine)
    spread = np.abs(clean[:2] - own[:2]).max()
    assert np.abs(clipped.anchors.numpy()[:2] - own[:2]).max() < 10 * spread + 1.0  # our classes: bounded pull


def test_a_push_sum_share_of_the_wires_largest_mass_is_bounded_like_a_claim():
    from p2pfl.consensus import CLAIM_FACTOR
    from p2pfl.modes import NodeContext, Received, make_mode
    from p2pfl.wire import MAX_MASS

    learner = SimpleNamespace(v=np.full(3, 4.0, np.float32))
    learner.get_flat = lambda: learner.v.copy()
    learner.set_flat = lambda v: setattr(learner, "v", np.asarray(v, np.float32))
    honest = [("a", [5.0, 4.0, 4.0]), ("b", [4.0, 5.0, 4.0]), ("c", [4.0, 4.0, 5.0])]
    mode = make_mode("adapter", averaging="push-sum")
    mode.mass = 0.25  # what it kept after sending its shares
    frames = [Received(s, 0, "params", np.asarray(v, np.float32), 0, 0, np.zeros(3), 0.25, mass=0.25)
              for s, v in honest] + [Received("liar", 0, "params", np.full(3, 5.4, np.float32), 0, 0, np.zeros(3),
                                              0.25, mass=MAX_MASS)]
    mode.absorb(NodeContext(learner, None, 0.25, GossipConfig(defence="none")), frames, 1)
    cap = CLAIM_FACTOR * 0.25
    assert mode.mass == pytest.approx(1.0 + cap)  # ours, three honest shares, the liar's at the cap
    np.testing.assert_allclose(learner.v, (0.25 * 4 + 0.25 * 13 / 3 * 3 + cap * 5.4) / (1.0 + cap)
                               + np.zeros(3), rtol=1e-5)
    assert not np.allclose(learner.v, 5.4)  # it did not replace ours (and would not spread on from us)


def test_per_class_knowledge_can_be_lied_in_as_its_kind_allows():
    for mode, ok, refused in (("fd", ["shift", "scale", "inflate", "reorder", "sign-flip"], "echo"),
                              ("prototypes", ["scale", "inflate", "replay", "alie"], "shift")):
        for kind in ok:
            load_scenario(None, {"mode": mode, "attack": [{"kind": kind, "count": 1}]})
        with pytest.raises(ConfigError, match=f"{refused} cannot lie in mode '{mode}'"):
            load_scenario(None, {"mode": mode, "attack": [{"kind": refused, "count": 1}]})
    own = 4.0 * np.eye(C, dtype=np.float32)
    shifted = lie("shift", Outgoing("class-logits", own))
    assert (shifted.array.argmax(axis=1) != np.arange(C)).all()  # every class taught as another
    assert (lie("scale", Outgoing("prototypes", own), strength=3.0).array == 3 * own).all()


def test_an_attack_that_starts_after_the_last_round_is_warned_of(cache, caplog):
    from p2pfl.sim import Simulation
    from tests.test_sim import TINY

    s = load_scenario(None, TINY | {"rounds": 1, "attack": [{"kind": "shift", "count": 1, "start": 5}]})
    Simulation(s, run_dir=None).run()
    assert "attack[0] (shift from round 5) starts after the last round (1)" in caplog.text
