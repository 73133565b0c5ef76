"""Tests for gossip.DeltaEncoder and gossip.apply_delta: delta coding with error feedback, key frames and resync."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.codecs import decode
from p2pfl.gossip import DeltaEncoder, apply_delta as apply


def payload_size(payload):
    return int(np.prod(payload.shape))


def stream(values, codec="int8", key_every=10, drop=()):
    """Send `values` round by round; returns (encoder, what the receiver holds after each round or None)."""
    enc = DeltaEncoder(codec, key_every)
    held, seen = None, []
    for r, v in enumerate(values):
        payload, base = enc.encode(v, r)
        if r in drop:
            seen.append(None)
            continue
        value = apply(held, base, decode(payload, max_elements=payload_size(payload)))
        if value is not None:
            held = (r, value)
        seen.append(value)
    return enc, seen


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 300), rounds=st.integers(1, 25),
       codec=st.sampled_from(["fp32", "fp16", "int8", "int4", "topk:2+int8"]), key_every=st.integers(1, 8))
def test_a_receiver_of_every_frame_holds_exactly_the_senders_copy(seed, n, rounds, codec, key_every):
    rng = np.random.default_rng(seed)
    values = np.cumsum(rng.standard_normal((rounds, n)).astype(np.float32) * 0.1, axis=0)
    enc, seen = stream(values, codec, key_every)
    assert seen[-1] is not None
    np.testing.assert_allclose(seen[-1], enc.copy, rtol=0, atol=1e-5)


def test_error_feedback_sends_what_a_lossy_codec_dropped_later():
    # a fixed value through 4-bit rounding: each frame sends the previous frames' rounding error,
    # at a 16x finer step each time, so the receiver's copy converges to the value
    x = np.random.default_rng(0).standard_normal((4, 300)).astype(np.float32)
    _, seen = stream([x] * 6, codec="int4", key_every=100)
    errors = [np.abs(v - x).max() for v in seen]
    assert errors[0] > 0.05 and errors[-1] < 1e-4 * errors[0], errors
    assert all(b < a for a, b in zip(errors, errors[1:4])), errors


def test_delta_frames_are_finer_than_the_value_at_the_same_codec():
    rng = np.random.default_rng(1)
    w = rng.standard_normal(5000).astype(np.float32)
    values = [w + 0.01 * i * rng.standard_normal(5000).astype(np.float32) for i in range(6)]
    _, with_delta = stream(values, "int8", key_every=100)
    _, without = stream(values, "int8", key_every=1)  # every frame a key frame: plain int8
    err_delta = np.abs(with_delta[-1] - values[-1]).max()
    err_plain = np.abs(without[-1] - values[-1]).max()
    assert err_delta < err_plain / 5, (err_delta, err_plain)


def test_a_missed_frame_drops_differences_until_the_next_key_frame():
    values = [np.full(6, float(i), np.float32) for i in range(12)]
    _, seen = stream(values, "fp32", key_every=5, drop={2})
    assert [v is None for v in seen] == [False, False, True, True, True, False, False, False, False, False,
                                         False, False]
    np.testing.assert_array_equal(seen[5], values[5])  # the key frame of round 5 resyncs
    np.testing.assert_array_equal(seen[11], values[11])


def test_a_shape_change_starts_a_new_key_frame_and_bad_settings_are_refused():
    enc = DeltaEncoder("fp32", 10)
    assert enc.encode(np.zeros(3), 0)[1] == -1
    assert enc.encode(np.ones(3), 1)[1] == 0
    assert enc.encode(np.ones(4), 2)[1] == -1
    assert apply((1, np.zeros(3, np.float32)), 1, np.ones(4, np.float32)) is None
    with pytest.raises(ValueError, match="key_every must be at least 1"):
        DeltaEncoder("fp32", 0)


# -- the Outbox and the Inbox, end to end without a network -------------------------------------------

from p2pfl import wire  # noqa: E402
from p2pfl.config import GossipConfig  # noqa: E402
from p2pfl.gossip import Inbox, Outbox, resolve_codecs  # noqa: E402
from p2pfl.modes import Outgoing  # noqa: E402

C = 4


def _outbox(**gossip):
    g = GossipConfig(**gossip)
    return Outbox("a", g, resolve_codecs(("logits", "params"), g.codec, g.params_codec), np.full(C, 5))


def test_auto_codecs_per_kind_and_params_codec_for_weights():
    assert resolve_codecs(("logits", "params")) == {"logits": "topk:2+int3+ans", "params": "fp32"}
    assert resolve_codecs(("logits", "params"), "int8", "fp16") == {"logits": "int8", "params": "fp16"}


def test_a_peer_gets_ours_else_ours_at_full_width_else_a_common_one():
    out = _outbox(codec="topk:3+int4+z", adaptive_bits=0.1)
    assert "topk:3+int3+z" in out.offered_codecs()  # the narrower width is offered, so a peer can get it
    both = ("topk:3+int4+z", "topk:3+int3+z", "fp32")
    assert out.codec_for(both, "logits", drift=0.5) == "topk:3+int4+z"  # the teacher still moves: full width
    assert out.codec_for(both, "logits", drift=0.01) == "topk:3+int3+z"  # settled: fewer bits
    assert out.codec_for(("topk:3+int4+z", "fp32"), "logits", drift=0.01) == "topk:3+int4+z"  # not decoded: full
    assert out.codec_for(("int8", "fp32"), "logits", drift=None) == "fp32"
    assert out.codec_for(("int8",), "logits", drift=None) == "int8"
    assert out.codec_for((), "logits", drift=None) is None


def test_each_frame_is_encoded_once_per_codec_whoever_needs_it():
    out = _outbox(codec="fp32")
    share = out.share([Outgoing("logits", np.ones((3, C), np.float32), 0, 3)], 1, time=0.0, drift=None)
    (a, _), = share.for_peer(("fp32",), 0.5)
    (b, _), = share.for_peer(("fp32", "int8"), 0.25)
    (c, _), = share.for_peer(("int8",), 0.25)
    assert a is b and a.payload.codec == "fp32" and c.payload.codec == "int8"
    assert a.label_counts == (5,) * C and a.samples == 5 * C and a.sender == "a" and a.round == 1


def test_a_frame_beyond_fp16_goes_in_fp32_and_only_a_range_error_falls_back():
    from p2pfl.codecs import CodecError

    out = _outbox(codec="fp16")
    share = out.share([Outgoing("params", np.full(6, 1e6, np.float32))], 1, time=0.0, drift=None)
    (msg, _), = share.for_peer(("fp16", "fp32"), 0.5)  # a liar's huge prototypes once ended the simulation here
    assert msg.payload.codec == "fp32" and out.widened == 1
    assert share.for_peer(("fp16", "fp32"), 0.5)[0][0] is msg and out.widened == 1  # encoded once per round
    with pytest.raises(CodecError, match="fp16 cannot hold"):  # a peer that cannot decode fp32: no way to send
        out.share([Outgoing("params", np.full(6, 1e6, np.float32))], 2, time=0.0, drift=None).for_peer(("fp16",), 0.5)


def test_push_sum_shares_follow_the_weights_and_unsent_mass_comes_back():
    out = _outbox()
    share = out.share([Outgoing("params", np.ones(6, np.float32), mass=0.8)], 3, time=0.0, drift=None)
    ((msg, mass),) = share.for_peer(("fp32",), 0.25)
    assert mass == pytest.approx(0.2) and msg.mass == 1.0  # the node stamps the share on the frame it sends
    ((none, lost),) = share.for_peer((), 0.5)  # a peer that is not ready gets no frame ...
    assert none is None
    out.reclaim(lost)  # ... and its share stays with us
    out.reclaim(None)  # frames outside push-sum carry none
    assert out.take_reclaimed() == pytest.approx(0.4) and out.take_reclaimed() == 0.0


def test_delta_frames_through_outbox_and_inbox_resync_after_a_lost_one():
    out = _outbox(codec="int8", delta=True, key_every=3)
    inbox = Inbox("a", C)
    rng = np.random.default_rng(0)
    value = rng.normal(size=8).astype(np.float32)
    taken = []
    for rnd in range(7):
        value = value + 0.01 * rng.normal(size=8).astype(np.float32)
        ((msg, _),) = out.share([Outgoing("params", value.copy())], rnd, 0.0, None).for_peer(("int8",), 0.5)
        assert (msg.base == -1) == (rnd % 3 == 0)  # every third frame is whole
        if rnd == 1:
            continue  # lost on the way
        taken.append((rnd, inbox.add(msg)))
    assert taken == [(0, True), (2, False), (3, True), (4, True), (5, True), (6, True)]
    (got,) = inbox.usable(7, staleness=5, weight=0.5)
    assert got.round == 6 and np.abs(got.array - value).max() < 0.05


def test_the_inbox_keeps_the_newest_frame_per_kind_within_the_staleness_bound():
    out = _outbox(codec="fp32")
    inbox = Inbox("a", C)
    for rnd in (4, 2):  # out of order: the older one does not replace the newer
        ((msg, _),) = out.share([Outgoing("params", np.full(6, rnd, np.float32))], rnd, 0.0, None).for_peer(
            ("fp32",), 0.5)
        assert inbox.add(msg)
    assert inbox.newest_round == 4
    (got,) = inbox.usable(5, staleness=5, weight=0.3)
    assert got.round == 4 and got.weight == 0.3 and got.array[0] == 4
    assert inbox.usable(11, staleness=5, weight=0.3) == []  # 6 rounds old: too stale


def test_a_peer_that_hides_its_label_mix_counts_as_uniform():
    out = Outbox("a", GossipConfig(codec="fp32"), {"logits": "fp32"}, np.zeros(0))
    ((msg, _),) = out.share([Outgoing("logits", np.ones((2, C), np.float32), 0, 2)], 1, 0.0, None).for_peer(
        ("fp32",), 0.5)
    msg = wire.Knowledge(**{**{f: getattr(msg, f) for f in ("sender", "round", "time", "kind", "ref_start",
                                                             "ref_count", "payload", "val_acc")},
                            "label_counts": (), "samples": 40})
    inbox = Inbox("a", C)
    assert inbox.add(msg)
    (got,) = inbox.usable(2, staleness=5, weight=0.5)
    np.testing.assert_array_equal(got.label_counts, [10] * C)
