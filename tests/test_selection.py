"""Tests for sending part of a reference slice: row choice, the wire's row mask, masked consensus."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl import codecs, wire
from p2pfl.config import ConfigError, GossipConfig, load_scenario, parse_select
from p2pfl.consensus import Contribution, softmax, teacher
from p2pfl.gossip import Inbox, Outbox, changed_rows, select_rows
from p2pfl.modes import Outgoing
from p2pfl.wire import Knowledge, LocalProtocolError, RemoteProtocolError

C = 5


def logits_knowledge(rows, ref_count, **kw):
    mask = wire.row_mask(np.asarray(rows), ref_count)
    n = ref_count if not mask else len(rows)
    payload = codecs.encode(np.ones((n, C), np.float32), "fp32")
    return Knowledge(sender="b", round=2, time=0.0, kind="logits", ref_start=10, ref_count=ref_count,
                     payload=payload, label_counts=(), samples=0, val_acc=0.0, row_mask=mask, **kw)


# ------------------------------------------------------------------------------------ row choice

def test_confident_rows_are_the_lowest_entropy_ones():
    z = np.zeros((6, C), np.float32)
    z[1, 0] = z[4, 2] = 9.0  # sure about rows 1 and 4
    z[3, 1] = 3.0  # fairly sure about row 3
    np.testing.assert_array_equal(select_rows(z, "confident:0.5"), [1, 3, 4])
    assert set(select_rows(z, "uncertain:0.5")) == {0, 2, 5}
    assert select_rows(z, "all") is None and select_rows(z, "confident:1") is None
    assert len(select_rows(z, "confident:0.01")) == 1  # at least one row


@pytest.mark.parametrize("text", ["some", "confident", "confident:0", "confident:1.5", "all:0.5", "uncertain:x",
                                  "changed", "changed:0", "changed:2"])
def test_bad_selections_are_refused_with_the_grammar(text):
    with pytest.raises(ValueError, match="expected all, confident:F, uncertain:F or changed:T"):
        parse_select(text)
    with pytest.raises(ConfigError, match="gossip.select = "):
        load_scenario(None, {"gossip.select": text})


def test_selection_needs_a_rule_that_pools_per_row():
    with pytest.raises(ConfigError, match="needs gossip.consensus = 'class-weighted' or 'mean'"):
        load_scenario(None, {"gossip.select": "confident:0.5", "gossip.consensus": "pairwise"})


# -------------------------------------------------------------------------------------- the wire

@settings(max_examples=60, deadline=None)
@given(ref_count=st.integers(1, 300), data=st.data())
def test_row_masks_round_trip(ref_count, data):
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, ref_count - 1), min_size=1))))
    k = logits_knowledge(rows, ref_count)
    back = wire.decode(wire.encode(k))
    got = wire.row_indices(back)
    np.testing.assert_array_equal(np.arange(ref_count) if got is None else got, rows)
    assert (got is None) == (len(rows) == ref_count)  # every row: no mask on the wire at all


def _tamper(k, **changes):
    import msgpack
    d = msgpack.unpackb(wire.encode(k), raw=False)
    d.update(changes)
    return msgpack.packb(d, use_bin_type=True)


def test_bad_row_masks_are_rejected():
    k = logits_knowledge([0, 3], 12)  # mask of 2 bytes
    for mask, reason, words in [
        (b"\x90", "shape", "row_mask has 1 bytes; a slice of 12 rows needs 2"),
        (b"\x90\x01", "malformed", "bits beyond the slice's last row"),
        (b"\x00\x00", "shape", "selects no rows"),
        (b"\x91\x00", "shape", r"shape \(rows=3, classes\) for its row mask; got \(2, 5\)"),
        ("xx", "malformed", "row_mask must be bytes"),
    ]:
        with pytest.raises(RemoteProtocolError, match=words) as e:
            wire.decode(_tamper(k, rm=mask))
        assert e.value.reason == reason
    params = Knowledge(sender="b", round=2, time=0.0, kind="params", ref_start=0, ref_count=0,
                       payload=codecs.encode(np.ones(4), "fp32"), label_counts=(), samples=0, val_acc=0.0)
    with pytest.raises(RemoteProtocolError, match="no reference slice or row mask"):
        wire.decode(_tamper(params, rm=b"\x80"))
    with pytest.raises(LocalProtocolError, match="row_mask must be bytes"):
        dataclasses.replace(logits_knowledge([0], 4), row_mask=None)


# ----------------------------------------------------------------------------- masked consensus

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), rule=st.sampled_from(["mean", "class-weighted"]))
def test_masked_consensus_pools_only_the_nodes_that_spoke_about_a_row(seed, rule):
    rng = np.random.default_rng(seed)
    r = 8
    own = Contribution(rng.standard_normal((r, C)), rng.integers(0, 50, C), 0.5)
    full = Contribution(rng.standard_normal((r, C)), rng.integers(0, 50, C), 0.25)
    rows = np.array([1, 2, 6])
    part = Contribution(full.logits[rows], full.label_counts, 0.25, rows)
    both = teacher([own, full], rule=rule)
    masked = teacher([own, part], rule=rule)
    np.testing.assert_allclose(masked.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(masked[rows], both[rows], atol=1e-5)  # where it spoke: as if it sent all
    others = np.setdiff1d(np.arange(r), rows)
    alone = teacher([own], rule=rule)
    np.testing.assert_allclose(masked[others], alone[others], atol=1e-5)  # elsewhere: own opinion only
    np.testing.assert_allclose(alone, softmax(own.logits), atol=1e-5)


def test_masked_consensus_needs_a_full_contribution():
    part = Contribution(np.zeros((2, C)), np.ones(C), 1.0, np.array([0, 1]))
    with pytest.raises(ValueError, match="one contribution about every row"):
        teacher([part])
    with pytest.raises(ValueError, match="needs every node's opinion on every row"):
        teacher([Contribution(np.zeros((3, C)), np.ones(C)), part], rule="aligned")


def test_a_simulation_sending_half_the_rows_sends_about_half_the_bytes(cache):
    from tests.test_adapter import simulate

    every = simulate(mode="logits", profiles=["mlp"], **{"gossip.codec": "fp32"})
    half = simulate(mode="logits", profiles=["mlp"], **{"gossip.codec": "fp32", "gossip.select": "confident:0.5"})
    assert all(r["rejected"] == {} for r in half.records)
    assert all(r["inbox"] == {"logits": 2} for r in half.records if r["round"] == 2)
    ratio = half.summary["bytes_per_node_per_round"] / every.summary["bytes_per_node_per_round"]
    assert 0.45 < ratio < 0.6, ratio  # half the rows, plus a 25-byte mask per 200-row slice


# ------------------------------------------------------------- changed:T, rows that moved since last sent

def test_changed_rows_are_those_that_moved_by_the_threshold():
    sent = np.zeros((4, C), np.float32)
    new = sent.copy()
    new[1, 0] = 9.0  # from uniform to sure: total variation 0.8
    new[3, 2] = 0.2  # a small move: about 0.04
    np.testing.assert_array_equal(changed_rows(new, sent, 0.1), [1])
    np.testing.assert_array_equal(changed_rows(new, sent, 0.01), [1, 3])
    np.testing.assert_array_equal(changed_rows(sent, sent, 0.1), [0])  # nothing moved: one row all the same
    assert len(changed_rows(new + 5.0, new, 1e-6)) == 1  # a shift is no change: no row moved


def frame(rnd, array, rows=None, keeps=-1, ref_count=6):
    """A neighbour's logits frame about slice rows 0..ref_count-1, as it crosses the wire."""
    mask = b"" if rows is None else wire.row_mask(np.asarray(rows), ref_count)
    return Knowledge(sender="b", round=rnd, time=0.0, kind="logits", ref_start=0, ref_count=ref_count,
                     payload=codecs.encode(np.asarray(array, np.float32), "fp32"), label_counts=(1,) * C,
                     samples=C, val_acc=0.0, row_mask=mask, keeps=keeps)


def heard(inbox, rnd, *args, **kw):
    """What the mode is handed after the frame of round `rnd` arrives: whole rows."""
    assert inbox.add(frame(rnd, *args, **kw))
    (got,) = inbox.usable(rnd + 1, staleness=100, weight=0.5)
    return got


def test_a_receiver_fills_unchanged_rows_from_the_frame_they_keep():
    inbox = Inbox("b", C)
    first = np.arange(6 * C, dtype=np.float32).reshape(6, C)
    assert heard(inbox, 0, first).rows is None
    # round 10 sends rows 1 and 4 and keeps the rest from round 0: every row is known again
    got = heard(inbox, 10, -first[[1, 4]], rows=[1, 4], keeps=0)
    assert got.rows is None
    want = first.copy()
    want[[1, 4]] = -first[[1, 4]]
    np.testing.assert_array_equal(got.array, want)
    (again,) = inbox.usable(12, staleness=100, weight=0.5)
    assert again is got  # the same frame, still the newest two rounds later: no change
    # round 20 keeps from round 15, which we never got: only the rows it sent count
    lost = heard(inbox, 20, first[[2]], rows=[2], keeps=15)
    np.testing.assert_array_equal(lost.rows, [2])
    np.testing.assert_array_equal(lost.array, first[[2]])
    # and round 30 builds on round 20's partial knowledge
    more = heard(inbox, 30, first[[5]], rows=[5], keeps=20)
    np.testing.assert_array_equal(more.rows, [2, 5])
    np.testing.assert_array_equal(more.array, first[[2, 5]])


def test_a_sender_sends_what_moved_and_says_which_frame_keeps_the_rest():
    logits = np.zeros((6, C), np.float32)
    outbox = Outbox("b", GossipConfig(select="changed:0.1", key_every=3), {"logits": "fp32"}, np.ones(C))
    receiver = Inbox("b", C)
    frames = []
    for rnd in range(5):
        logits[rnd, 0] = 9.0  # one more row changes its mind each round
        share = outbox.share([Outgoing("logits", logits.copy(), 0, 6)], rnd, time=float(rnd), drift=None)
        frames.append(share.frames[0])
        ((msg, mass),) = share.for_peer(("fp32",), weight=0.5)
        assert mass is None and msg.keeps == frames[-1].keeps and msg.row_mask == frames[-1].row_mask
        assert receiver.add(msg)
        (got,) = receiver.usable(rnd + 1, staleness=5, weight=0.5)
        # a receiver that got every frame holds what the sender holds, every round
        np.testing.assert_array_equal(got.array, logits)
    assert frames[0].rows is None and frames[0].keeps == -1  # the first frame about a slice: every row
    np.testing.assert_array_equal(frames[1].rows, [1])
    assert frames[1].keeps == 0 and frames[2].keeps == 1
    assert frames[3].rows is None and frames[3].keeps == -1  # every key_every-th frame is whole again
    np.testing.assert_array_equal(frames[4].rows, [4])


def test_wire_keeps_needs_a_row_mask_and_an_earlier_round():
    k = logits_knowledge([0, 3], 12, keeps=1)
    assert wire.decode(wire.encode(k)).keeps == 1
    for bad, words in [(2, "keeps 2 must be -1, or an earlier round than 2"), (-2, "keeps must be >= -1")]:
        with pytest.raises(RemoteProtocolError, match=words):
            wire.decode(_tamper(k, kp=bad))
    with pytest.raises(RemoteProtocolError, match="with a row_mask"):
        wire.decode(_tamper(logits_knowledge(range(12), 12), kp=1))


def test_a_simulation_sending_changed_rows_sends_fewer_bytes_and_rejects_nothing(cache):
    from tests.test_adapter import simulate

    every = simulate(mode="logits", profiles=["mlp"], rounds=4, **{"gossip.codec": "fp32"})
    changed = simulate(mode="logits", profiles=["mlp"], rounds=4,
                       **{"gossip.codec": "fp32", "gossip.select": "changed:0.3"})
    assert all(r["rejected"] == {} and r["delta_behind"] == 0 for r in changed.records)
    assert all(r["inbox"] == {"logits": 2} for r in changed.records if r["round"] == 3)
    # round 2 revisits round 0's slice (2 slices), so from then on only moved rows travel
    late = [sum(r["bytes_out"] for r in run.records if r["round"] >= 3) for run in (every, changed)]
    assert late[1] < 0.5 * late[0], late
