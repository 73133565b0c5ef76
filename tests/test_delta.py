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
