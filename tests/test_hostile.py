"""A hostile neighbour on the memory of one node: values no honest peer sends are refused and counted,
and none of them can crash, stall or fill the node (issue: trust no peer; liveness and resources)."""

from dataclasses import replace

import msgpack
import numpy as np
import pytest
import trio

from p2pfl import codecs, wire
from p2pfl.config import GossipConfig
from p2pfl.modes import make_mode
from tests.test_node import ScriptedTransport, _hello_of, _lone_node


def _params(node, round_idx, values, mass=1.0, sender="evil"):
    return wire.Knowledge(sender=sender, round=round_idx, time=0.0, kind="params", ref_start=0, ref_count=0,
                          payload=codecs.encode(np.asarray(values, np.float32), "fp32"), label_counts=(),
                          samples=100, val_acc=0.0, mass=mass)


async def _run_with(node, t, peer_frames, every=1.0):
    """Run `node` to its end while the scripted peer "evil" says hello, then frames(i) every `every` s."""
    t.say("evil", _hello_of(node, "evil"))

    async def peer():
        for i in range(1_000):
            await trio.sleep(every)
            for msg in peer_frames(i):
                t.say("evil", msg)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer)
        async with node:
            records = await node.run()
        nursery.cancel_scope.cancel()
    return records


async def test_a_mass_share_beyond_the_wire_limit_is_refused_and_our_own_mass_stays_sendable(autojump_clock):
    t = ScriptedTransport()
    # catch_up off here and below: a scripted neighbour runs ahead of us, and a node with one neighbour follows it
    node = _lone_node(t, rounds=6, neighbours=("evil",), gossip=GossipConfig(wait_timeout=1.0, catch_up=False),
                      mode=make_mode("adapter", averaging="push-sum"))
    own = node.learner.get_flat()
    frame = msgpack.unpackb(wire.encode(_params(node, 1, own)))
    frame["w"] = 1e300  # finite, so only the limit stops it (it once overflowed the node's mass to inf)
    t.inbound_send.send_nowait(("evil", msgpack.packb(frame)))
    # then every round the largest share the wire lets through
    records = await _run_with(node, t, lambda i: [_params(node, i + 1, own + 0.01 * i, mass=wire.MAX_MASS)])
    assert len(records) == 6
    assert node.counters.rejected["malformed"] == 1  # "mass must be in [.., 1e12]"
    assert np.isfinite(node.mode.mass) and np.isfinite(node.learner.get_flat()).all()
    assert node.counters.send_failures == 0  # every share we sent was one the wire accepts


async def test_a_vector_far_from_any_model_is_refused_and_never_averaged_in(autojump_clock, caplog):
    t = ScriptedTransport()
    node = _lone_node(t, rounds=12, neighbours=("evil",), gossip=GossipConfig(wait_timeout=1.0, catch_up=False))
    own = node.learner.get_flat()
    records = await _run_with(node, t, lambda i: [_params(node, i + 1, own * 1e36)])
    flat = node.learner.get_flat()
    assert np.isfinite(flat).all() and np.abs(flat).max() < 1e3
    assert node.counters.rejected["implausible"] >= 10 and len(records) == 12
    assert all(r["contributors"] == 0 for r in records)
    logged = [r for r in caplog.records if "implausible" in r.getMessage()]
    assert len(logged) == 2 and "10 times so far" in logged[1].getMessage()  # counted every time, logged twice


async def test_a_round_far_past_the_run_is_refused_and_honest_frames_after_it_still_count(autojump_clock):
    t = ScriptedTransport()
    node = _lone_node(t, rounds=4, neighbours=("evil",), gossip=GossipConfig(wait_timeout=1.0))
    own = node.learner.get_flat()

    def frames(i):
        return [_params(node, wire.MAX_INT, own)] if i == 0 else [_params(node, i, own + 0.001)]

    records = await _run_with(node, t, frames)
    assert node.counters.rejected["implausible"] == 1
    assert node.status()["neighbours"]["evil"]["round"] < 10  # status never shows the lie
    assert any(r["contributors"] == 1 for r in records)


async def test_a_peer_naming_a_new_slice_in_every_frame_cannot_grow_our_memory(autojump_clock):
    from p2pfl.data import ReferenceSpec, build_reference

    t = ScriptedTransport()
    # a logits node: reference of 400 rows in slices of 100 (4 slices: honest rotation needs <= 8 streams)
    node2 = _logits_node(t, build_reference(ReferenceSpec(source="synthetic", size=400, slice_size=100)), make_mode)
    c = node2.learner.num_classes

    def frames(i):
        return [wire.Knowledge(sender="evil", round=1, time=0.0, kind="logits", ref_start=(7 * i + j) % 399,
                               ref_count=1 + (i + j) % 50, payload=codecs.encode(
                                   np.zeros((1 + (i + j) % 50, c), np.float32), "fp32"),
                               label_counts=(), samples=10, val_acc=0.0) for j in range(20)]

    await _run_with(node2, t, frames, every=0.05)
    inbox = node2.peers["evil"].inbox
    assert inbox.streams <= inbox.max_streams == 2 * 4 + 8
    assert node2.counters.rejected["off-schedule"] > 0  # round 1's slice is rows 100+100: the rest refused


async def test_an_old_slice_under_a_new_round_is_refused_as_a_replay(autojump_clock):
    """bench_robustness's replay liar (its first frame, slice 0, resent every round under the round's
    number) cost honest nodes 0.055 global with every defence: it is off the reference's rotation."""
    from p2pfl.data import ReferenceSpec, build_reference

    t = ScriptedTransport()
    node = _logits_node(t, build_reference(ReferenceSpec(source="synthetic", size=400, slice_size=100)), make_mode,
                        GossipConfig(wait_timeout=1.0, catch_up=False))  # its only neighbour runs ahead
    c = node.learner.num_classes

    def frames(i):  # round i's number, slice 0's rows: due only in rounds 0, 4, 8, ...
        return [wire.Knowledge(sender="evil", round=i, time=0.0, kind="logits", ref_start=0, ref_count=100,
                               payload=codecs.encode(np.zeros((100, c), np.float32), "fp32"),
                               label_counts=(), samples=10, val_acc=0.0)]

    records = await _run_with(node, t, frames, every=0.3)
    assert node.counters.rejected["off-schedule"] >= 3 and len(records) == 3
    assert all(f.ref_start == 0 and f.round % 4 == 0 for f in node.peers["evil"].inbox.latest.values())


def _logits_node(t, reference, make_mode, gossip=None):
    from p2pfl import assemble
    from p2pfl.config import NodeProfile, Scenario
    from p2pfl.data import load_source
    from p2pfl.learner import Learner
    from p2pfl.models import build_model
    from p2pfl.node import EvalData
    from p2pfl.sim import SimulatedCompute
    from tests.test_node import TRAIN

    data = load_source("synthetic", num_samples=200, seed=42)
    model = build_model("mlp", input_length=data.input_shape[-1], num_classes=data.num_classes, embed_dim=8)
    scenario = Scenario(mode="logits", rounds=3, gossip=gossip or GossipConfig(wait_timeout=1.0))
    plan = assemble.node_plan(scenario, 0, "a", NodeProfile(name="mlp", arch="mlp"), np.arange(len(data.y_train)),
                              {"evil": 0.5})
    learner = Learner(model, data.x_train, data.y_train, num_classes=data.num_classes, config=TRAIN,
                      total_steps=100, seed=0)
    return assemble.make_node(scenario, plan, learner=learner, mode=make_mode("logits"), transport=t,
                              reference=reference, test=EvalData(data.x_test, data.y_test),
                              compute=SimulatedCompute(0.1))


async def test_a_peer_that_greets_in_a_loop_and_never_shares_costs_one_wait(autojump_clock):
    t = ScriptedTransport()
    node = _lone_node(t, rounds=6, neighbours=("evil",), gossip=GossipConfig(wait_timeout=5.0))
    hello = _hello_of(node, "evil")
    records = await _run_with(node, t, lambda i: [hello], every=0.25)
    waited = [r["waited"] for r in records]
    # neither quiet (it greets) nor a straggler (it shares nothing): one wait_timeout, then it is silent
    assert sum(w >= 5.0 - 1e-6 for w in waited) == 1 and sum(w > 0 for w in waited) == 1, waited
    assert len(records) == 6 and records[-1]["neighbours_up"] == 0


async def test_a_peer_that_replays_old_rounds_costs_one_wait(autojump_clock):
    """Frames of long-past rounds (found by bench_hostile: they revived the silent peer, and the node
    waited out wait_timeout for it every round)."""
    t = ScriptedTransport()
    node = _lone_node(t, rounds=8, neighbours=("evil",), gossip=GossipConfig(wait_timeout=5.0))
    own = node.learner.get_flat()
    records = await _run_with(node, t, lambda i: [_params(node, 0, own)], every=0.25)
    waited = [r["waited"] for r in records]
    # it speaks (never quiet) but its rounds never advance: one wait, then it is silent or lags for good
    assert sum(w > 0 for w in waited) == 1 and max(waited) <= 5.0 + 1e-6, waited
    assert records[-1]["lagging"] + (records[-1]["neighbours_up"] == 0) == 1 and len(records) == 8


async def test_a_peer_that_asks_and_never_reads_cannot_pile_up_our_replies(autojump_clock):
    async def never_returns(peer, kind):
        if kind != "hello":
            await trio.sleep_forever()

    t = ScriptedTransport(never_returns)
    node = _lone_node(t, rounds=3, neighbours=("evil",), gossip=GossipConfig(wait_timeout=1.0))
    hello = _hello_of(node, "evil")

    def frames(i):  # re-greets with a new incarnation (a new session each time) and asks for status
        return [replace(hello, incarnation=100 + i), *(wire.StatusRequest(nonce=50 * i + j) for j in range(40))]

    records = await _run_with(node, t, frames, every=0.5)
    queue = node.peers["evil"].queue
    assert len(records) == 3
    assert len(queue.control) <= 1 + wire.MAX_PENDING_STATUS  # one hello at most, and a bounded few replies
    assert sum(c.kind == "hello" for c in queue.control) <= 1
    assert node.counters.superseded > 0


def test_counts_that_would_wrap_an_int64_sum_are_refused_on_the_wire_and_bounded_in_consensus():
    from p2pfl.consensus import Contribution, bound_claims

    node = _lone_node(ScriptedTransport())
    frame = msgpack.unpackb(wire.encode(replace(_params(node, 1, [1.0]), label_counts=(1, 2))))
    frame["lc"] = [2**62, 2**62]  # legal ints, whose sum wraps int64
    with pytest.raises(wire.RemoteProtocolError, match="label_counts"):
        wire.decode(msgpack.packb(frame))
    # below the wire's limit but summing past int64 in a naive sum: still bounded (float sums)
    z = np.zeros((3, 3), np.float32)
    big = Contribution(z, np.array([2**62, 2**62, 0], dtype=np.int64))
    bounded = bound_claims([Contribution(z, np.array([10, 10, 10])), big])[1]
    assert bounded.label_counts.sum() == pytest.approx(4.0 * 30)


async def test_deltas_that_sum_past_float32_are_refused_and_the_stream_resyncs(autojump_clock):
    t = ScriptedTransport()
    # catch_up off: its only neighbour runs ahead of us, and a node with one neighbour follows it
    node = _lone_node(t, rounds=4, neighbours=("evil",), gossip=GossipConfig(wait_timeout=1.0, catch_up=False))
    own = node.learner.get_flat()
    huge = np.full_like(own, 3e38)

    def frames(i):  # a key frame of 3e38, then a difference of 3e38 on it (each finite, the sum is not)
        key = _params(node, 2 * i + 1, huge)
        return [key, replace(_params(node, 2 * i + 2, huge), base=2 * i + 1)]

    records = await _run_with(node, t, frames)
    assert len(records) == 4 and node.counters.rejected["non-finite"] >= 3
    assert np.isfinite(node.learner.get_flat()).all()


async def test_a_masked_frame_under_a_rule_that_needs_every_row_is_refused_not_a_crash(autojump_clock):
    from p2pfl.data import ReferenceSpec, build_reference

    t = ScriptedTransport()
    node = _logits_node(t, build_reference(ReferenceSpec(source="synthetic", size=400, slice_size=100)), make_mode,
                        gossip=GossipConfig(wait_timeout=1.0, consensus="pairwise", catch_up=False))
    c = node.learner.num_classes

    def frames(i):
        rows = np.array([1, 5])
        return [wire.Knowledge(sender="evil", round=i + 1, time=0.0, kind="logits", ref_start=0, ref_count=100,
                               payload=codecs.encode(np.zeros((2, c), np.float32), "fp32"), label_counts=(),
                               samples=10, val_acc=0.0, row_mask=wire.row_mask(rows, 100))]

    records = await _run_with(node, t, frames)
    assert len(records) == 3 and node.counters.rejected["shape"] >= 1


async def test_a_node_saying_bye_answers_nothing_and_takes_no_new_neighbour(autojump_clock):
    t = ScriptedTransport()
    node = _lone_node(t, rounds=1, neighbours=("evil",), gossip=GossipConfig(wait_timeout=1.0),
                      accept_new_peers=True)

    async def slow_bye(peer, kind):  # our bye is slow to leave: meanwhile peers greet and ask
        if kind == "bye":
            t.say(peer, wire.StatusRequest(nonce=1))
            t.say("stranger", _hello_of(node, "stranger"))
            await trio.sleep(1.0)

    t.on_send = slow_bye
    t.say("evil", _hello_of(node, "evil"))
    async with node:
        await node.run()
    assert "stranger" not in node.peers
    assert [k for p, k in t.sent if p == "evil"].count("status_reply") == 0


async def test_strangers_are_neighbours_only_up_to_a_limit_and_waited_for_only_once_they_share(autojump_clock):
    from p2pfl.node import MAX_PEERS

    t = ScriptedTransport()
    node = _lone_node(t, rounds=2, neighbours=(), gossip=GossipConfig(wait_timeout=5.0), accept_new_peers=True)
    for i in range(MAX_PEERS + 5):  # sybils: fresh ids that greet and never share
        t.say(f"s{i}", _hello_of(node, f"s{i}"))
    async with node:
        records = await node.run()
    assert len(node.peers) == MAX_PEERS and node.counters.rejected["refused"] == 5
    assert all(r["waited"] < 5.0 for r in records)  # nobody who never shared was waited for
    assert len(node.status()["neighbours"]) == MAX_PEERS
