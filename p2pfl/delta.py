"""Delta coding with error feedback: send what changed, so what a lossy codec drops is sent later.

The sender keeps the copy its receivers hold of its value (CHOCO-gossip's public copy, Koloskova
et al. 2019). Each frame encodes `value - copy` and adds the *decoded* frame to the copy, so the
copy follows the value and one frame's quantization error is part of the next frame's
difference instead of being lost. Differences are small once training settles, so a codec spends
its bits on a narrow range (int8 of a delta is far finer than int8 of the weights).

Every `key_every`-th frame of a stream is a key frame (the value itself, base -1), so a receiver
that missed a frame or joined late is back in sync within `key_every` frames; until then it drops
the differences it cannot apply (`apply` returns None). Pure: no I/O, no clocks.
"""

from __future__ import annotations

import numpy as np

from p2pfl.codecs import Encoded, decode, encode


class DeltaEncoder:
    """One stream of frames (one knowledge kind and reference slice, one codec)."""

    def __init__(self, codec: str, key_every: int):
        if key_every < 1:
            raise ValueError(f"key_every must be at least 1; got {key_every}")
        self.codec = codec
        self.key_every = key_every
        self.copy: np.ndarray | None = None  # what a receiver that got every frame holds
        self.round = -1  # round of the last frame
        self.frames = 0

    def encode(self, value: np.ndarray, round_idx: int) -> tuple[Encoded, int]:
        """The payload for `value` at `round_idx`, and its base (-1 for a key frame)."""
        value = np.asarray(value, dtype=np.float32)
        key = self.copy is None or self.copy.shape != value.shape or self.frames % self.key_every == 0
        if key:
            payload, base = encode(value, self.codec), -1
            self.copy = decode(payload, max_elements=value.size)
        else:
            payload, base = encode(value - self.copy, self.codec), self.round
            self.copy = self.copy + decode(payload, max_elements=value.size)
        self.round = round_idx
        self.frames += 1
        return payload, base


def apply(held: tuple[int, np.ndarray] | None, base: int, frame: np.ndarray) -> np.ndarray | None:
    """The sender's value after a frame, given what we hold of it ((round, value) or None).

    None: the frame is a difference to a value we do not hold (a frame was lost, or we joined
    late); the caller waits for the next key frame.
    """
    if base == -1:
        return frame
    if held is None or held[0] != base or held[1].shape != frame.shape:
        return None
    return held[1] + frame
