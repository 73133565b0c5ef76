"""Per-peer knowledge streams, sans-I/O: how a frame relates to earlier frames, on both sides.

Rule (h11's, for its state table): everything that decides how a knowledge frame relates to the
frames before it lives here, and the same rules serve the sender and the receiver:

- **Outbox** (one per node): which rows of a slice go out (`gossip.select`: a share by confidence,
  or only the rows that changed, the frame naming the earlier frame that keeps the rest, every
  `gossip.key_every`-th frame whole), which codec each peer gets ("auto" per kind, the adaptive
  width, the fallback to one the peer decodes), delta coding with key frames and error feedback
  (CHOCO-gossip's public copy), and push-sum mass shares with what could not be sent reclaimed.
- **Inbox** (one per peer): deltas applied, the newest frame per kind, kept rows filled in from
  the frame they refer to, and whole rows handed to the mode within the staleness bound.

Modes see only whole arrays (`knowledge.Outgoing` out, `knowledge.Received` in). No trio, no clock: the
node passes the time and the round in. Tested like `wire.PeerSession`, without a network.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from p2pfl import wire
from p2pfl.codecs import BIT_LADDER, CODECS, Encoded, RangeError, codec_bits, decode, encode, with_bits
from p2pfl.config import GossipConfig, parse_select
from p2pfl.consensus import softmax, total_variation
from p2pfl.knowledge import Outgoing, Received

log = logging.getLogger(__name__)

# What gossip.codec = "auto" means, per knowledge kind. Logits: the measured frontier (BENCHMARKS.md,
# bench_codecs): normalized logits (gossip.logit_range), each row's two largest in int3, rANS-coded
# (+ans: a model per column, the same values as +z in ~30% fewer bytes); on quickstart's 500-row slices
# 3.2 KB per node per round, and 0.70 global with ~58x fewer bytes than fedavg's fp32 weights.
# Prototypes and FD's class-logits: C x d (C x C) class means in fp16 (10 x 32: 640 bytes of payload).
DEFAULT_CODECS = {"logits": "topk:2+int3+ans", "params": "fp32", "prototypes": "fp16", "class-logits": "fp16"}


def resolve_codecs(kinds: tuple[str, ...], codec: str = "auto", params_codec: str = "") -> dict[str, str]:
    """The codec of each kind a mode sends: `codec` for all ("auto": DEFAULT_CODECS), except params
    payloads when `params_codec` is set (hybrid mode sends both kinds)."""
    out = {}
    for kind in kinds:
        chosen = params_codec if kind == "params" and params_codec else codec
        out[kind] = DEFAULT_CODECS[kind] if chosen == "auto" else chosen
    return out


def adaptive_bits(max_bits: int, drift: float | None, threshold: float) -> int:
    """Adaptive bit width: fewer bits while the consensus is stable. Full `max_bits` while the teacher's
    drift is at least `threshold` (or unknown, or adaptation is off: threshold 0), one step down
    codecs.BIT_LADDER below it, another below threshold / 2, and so on down to the ladder's 3 bits."""
    ladder = [b for b in BIT_LADDER if b <= max_bits] or [max_bits]
    step, t = 0, threshold
    while drift is not None and step < len(ladder) - 1 and drift < t:
        step, t = step + 1, t / 2
    return ladder[step]


# -- row selection ------------------------------------------------------------------------------------

def select_rows(logits: np.ndarray, select: str) -> np.ndarray | None:
    """Which rows of a slice to send by the node's own prediction (sorted indices), None for all.

    confident:F sends the F share of rows where this node's prediction has the lowest entropy
    (what it knows: its own classes, outlier exposure having flattened the rest); uncertain:F
    the highest. Measured on quickstart, both lose to a rotating slice of the same size
    (BENCHMARKS.md, "Compression"). changed:T depends on what was sent before: `changed_rows`.
    """
    rule, fraction = parse_select(select)
    if rule in ("all", "changed") or fraction >= 1.0:
        return None
    p = softmax(logits.astype(np.float64))
    entropy = -(p * np.log(np.maximum(p, 1e-12))).sum(axis=1)
    keep = max(1, math.ceil(fraction * len(logits)))
    order = np.argsort(entropy if rule == "confident" else -entropy, kind="stable")
    return np.sort(order[:keep])


def changed_rows(new: np.ndarray, sent: np.ndarray, threshold: float) -> np.ndarray:
    """Rows whose predicted distribution moved by at least `threshold` in total variation since the
    values `sent` (same rows), sorted; the one that moved most when none did, since a frame must hold
    a row and neighbours wait for one frame per round."""
    moved = total_variation(softmax(new.astype(np.float64)), softmax(sent.astype(np.float64)))
    rows = np.flatnonzero(moved >= threshold)
    return rows if rows.size else np.array([int(np.argmax(moved))])


# -- the sending side ---------------------------------------------------------------------------------

MAX_ENCODERS = 256  # delta streams a node keeps: every slice of a rotation, both kinds, a few codecs

@dataclass(frozen=True)
class Frame:
    """One outgoing knowledge after row selection: what every peer gets, before its codec is chosen."""

    kind: str
    array: np.ndarray  # the selected rows (logits) or the whole vector (params)
    ref_start: int = 0
    ref_count: int = 0
    rows: np.ndarray | None = None  # slice rows `array` holds (None: all)
    keeps: int = -1  # the earlier round whose frame about this slice holds the other rows (-1: none)
    mass: float | None = None  # push-sum: the node's mass, of which each peer gets its weight's share
    label_counts: tuple[int, ...] | None = None  # the claim it carries (None: the node's own counts)

    @property
    def row_mask(self) -> bytes:
        return b"" if self.rows is None else wire.row_mask(self.rows, self.ref_count)


@dataclass
class _Sent:
    """Our frames about one slice so far: how many, the round of the last, and each row as neighbours hold it."""

    frames: int
    round: int
    values: np.ndarray  # (slice rows, C)


class DeltaEncoder:
    """One stream of frames (one knowledge kind, slice, row selection and codec), sent as differences.

    It keeps the copy receivers hold of its value (CHOCO-gossip's public copy, Koloskova et al. 2019):
    each frame encodes `value - copy` and adds the *decoded* frame to the copy, so one frame's
    quantization error is part of the next frame's difference instead of being lost. Every
    `key_every`-th frame is the value itself (base -1), so a receiver that missed a frame or joined
    late is back in sync within `key_every` frames."""

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


@dataclass
class Share:
    """One round's frames, encoded lazily and at most once per codec, whichever peers need them."""

    outbox: Outbox
    round: int
    time: float
    frames: list[Frame]
    drift: float | None  # how far the teacher moved (adaptive bit width reads it)
    _encoded: dict[tuple[int, str], wire.Knowledge] = field(default_factory=dict)

    def for_peer(self, common: tuple[str, ...], weight: float) -> list[tuple[wire.Knowledge | None, float | None]]:
        """Per frame, the message for a peer that decodes `common` (None: no common codec, or the peer is
        not ready when `common` is empty) and its push-sum mass share (None outside push-sum)."""
        out = []
        for i, f in enumerate(self.frames):
            codec = self.outbox.codec_for(common, f.kind, self.drift) if common else None
            out.append((self._knowledge(i, codec, common) if codec else None,
                        None if f.mass is None else f.mass * weight))
        return out

    def _knowledge(self, i: int, codec: str, common: tuple[str, ...]) -> wire.Knowledge:
        if (i, codec) not in self._encoded:
            try:
                self._encoded[i, codec] = self.outbox.encode(self.frames[i], codec, self.round, self.time)
            except RangeError as e:  # finite values beyond the codec's range: fp32 carries them, every peer decodes it
                if codec == "fp32" or "fp32" not in common:
                    raise
                self.outbox.widened += 1
                if (n := self.outbox.widened) == 10 ** round(math.log10(n)):  # the 1st, 10th, 100th, ...
                    log.warning("%s: a %s frame of round %d sent in fp32 (%d so far): %s", self.outbox.node_id,
                                self.frames[i].kind, self.round, n, e)
                self._encoded[i, codec] = self._knowledge(i, "fp32", common)
        return self._encoded[i, codec]


class Outbox:
    """A node's outgoing knowledge streams: row selection, codec choice, deltas, push-sum shares."""

    def __init__(self, node_id: str, gossip: GossipConfig, codecs: dict[str, str], label_counts: np.ndarray):
        self.node_id = node_id
        self.gossip = gossip
        self.codecs = codecs  # kind -> the codec we send it in
        self.label_counts = tuple(int(c) for c in label_counts)
        self._select, self._threshold = parse_select(gossip.select)
        self._encoders: dict[tuple, DeltaEncoder] = {}  # gossip.delta: one per kind, slice, rows, codec
        self._sent: dict[tuple[int, int], _Sent] = {}  # select = changed:T: per slice, what we sent
        self._reclaimed = 0.0  # push-sum mass that could not be sent, to hand back to the mode
        self.widened = 0  # frames our codec could not carry, sent in fp32 instead

    # -- what we offer -----------------------------------------------------------------------------
    def offered_codecs(self) -> tuple[str, ...]:
        """What our hello lists: ours first, then our logits codec at the narrower widths adaptive bit
        width may send (so two nodes with the same codec can adapt whatever their own settings), then
        the common ones a peer may fall back to. We decode any codec."""
        ours = self.codecs.get("logits", "")
        bits = codec_bits(ours) or 0
        fewer = [with_bits(ours, b) for b in BIT_LADDER if b < bits]
        return tuple(dict.fromkeys((*self.codecs.values(), *fewer, *CODECS)))

    def codec_for(self, common: tuple[str, ...], kind: str, drift: float | None) -> str | None:
        """Ours for this kind (at the adaptive bit width for this drift) if the peer decodes it, else ours
        at full width, else the first common one (every node lists the plain codecs after its own, so
        fp32 is always there for a peer of this version)."""
        ours = self.codecs[kind]
        bits = codec_bits(ours)
        if kind == "logits" and bits is not None:
            adapted = with_bits(ours, adaptive_bits(bits, drift, self.gossip.adaptive_bits))
            if adapted in common:
                return adapted
        if ours in common:
            return ours
        return "fp32" if "fp32" in common else (common[0] if common else None)

    # -- one round ----------------------------------------------------------------------------------
    def share(self, outgoing: list[Outgoing], round_idx: int, time: float, drift: float | None) -> Share:
        """This round's frames: rows selected once, whatever the peers (a slice's keeps count frames)."""
        return Share(self, round_idx, time, [self._frame(out, round_idx) for out in outgoing], drift)

    def _frame(self, out: Outgoing, round_idx: int) -> Frame:
        frame = self._rows(out, round_idx)
        if out.label_counts is None:
            return frame
        return replace(frame, label_counts=tuple(int(c) for c in out.label_counts))

    def _rows(self, out: Outgoing, round_idx: int) -> Frame:
        if out.kind != "logits":
            return Frame(out.kind, out.array, out.ref_start, out.ref_count, mass=out.mass)
        if self._select == "changed":
            return self._changed(out, round_idx)
        rows = select_rows(out.array, self.gossip.select)
        if rows is None:
            return Frame("logits", out.array, out.ref_start, out.ref_count)
        return Frame("logits", out.array[rows], out.ref_start, out.ref_count, rows=rows)

    def _changed(self, out: Outgoing, round_idx: int) -> Frame:
        """Only the rows that moved by >= the threshold since we last sent them; the frame says which
        earlier frame holds the rest. Every gossip.key_every-th frame about a slice sends every row, so
        a neighbour that missed one (or restarted) is whole again."""
        start, count, logits = out.ref_start, out.ref_count, out.array
        sent = self._sent.get((start, count))
        if sent is None or sent.frames % self.gossip.key_every == 0:
            self._sent[start, count] = _Sent((sent.frames if sent else 0) + 1, round_idx, logits.copy())
            return Frame("logits", logits, start, count)
        previous, sent.frames, sent.round = sent.round, sent.frames + 1, round_idx
        rows = changed_rows(logits, sent.values, self._threshold)
        sent.values[rows] = logits[rows]
        if len(rows) == count:
            return Frame("logits", logits, start, count)
        return Frame("logits", logits[rows], start, count, rows=rows, keeps=previous)

    def encode(self, f: Frame, codec: str, round_idx: int, time: float) -> wire.Knowledge:
        """The knowledge message for frame `f` in `codec` (a delta of its stream with gossip.delta)."""
        mask = f.row_mask
        if self.gossip.delta:
            stream = (f.kind, f.ref_start, f.ref_count, mask, codec)
            encoder = self._encoders.pop(stream, None) or DeltaEncoder(codec, self.gossip.key_every)
            self._encoders[stream] = encoder  # last: the least recently used stream is forgotten first
            _forget_oldest(self._encoders, MAX_ENCODERS)  # a row selection makes a new stream of most frames
            payload, base = encoder.encode(f.array, round_idx)
        else:
            payload, base = encode(f.array, codec), -1
        counts = self.label_counts if f.label_counts is None else f.label_counts
        return wire.Knowledge(
            sender=self.node_id, round=round_idx, time=time, kind=f.kind, ref_start=f.ref_start,
            ref_count=f.ref_count, payload=payload, label_counts=counts,
            samples=sum(counts), val_acc=0.0, base=base, row_mask=mask, keeps=f.keeps)

    # -- push-sum mass that did not go out ----------------------------------------------------------
    def reclaim(self, share: float | None) -> None:
        """A mass share could not be sent (no codec, peer not ready, send failed, superseded): it stays ours."""
        if share is not None:
            self._reclaimed += share

    def take_reclaimed(self) -> float:
        """The mass reclaimed since the last call, for the mode (the node hands it over between rounds)."""
        mass, self._reclaimed = self._reclaimed, 0.0
        return mass


# -- the receiving side -------------------------------------------------------------------------------

def apply_delta(held: tuple[int, np.ndarray] | None, base: int, frame: np.ndarray) -> np.ndarray | None:
    """The sender's value after a frame, given what we hold of it ((round, value) or None).

    None: the frame is a difference to a value we do not hold (a frame was lost, or we joined late);
    the caller waits for the next key frame.
    """
    if base == -1:
        return frame
    if held is None or held[0] != base or held[1].shape != frame.shape:
        return None
    with np.errstate(over="ignore"):  # an overflow is the caller's to refuse (Inbox.add), not a warning
        return held[1] + frame


@dataclass
class _Heard:
    """A neighbour's latest frame about one slice, with the rows earlier frames keep filled in."""

    round: int
    values: np.ndarray  # (slice rows, C)
    known: np.ndarray  # (slice rows,) bool
    sent: np.ndarray  # the frame's own decoded rows (the same object while that frame stays the newest)
    resolved: Received  # the frame as consensus reads it: every known row


def _stream(k: wire.Knowledge) -> tuple[str, int, int, bytes]:
    """The frames a delta builds on: same kind, reference slice and row selection."""
    return k.kind, k.ref_start, k.ref_count, k.row_mask


class Inbox:
    """One peer's incoming knowledge streams, at most `max_streams` of them held (the least recently
    updated is forgotten first): a peer naming a new reference slice in every frame cannot grow our
    memory past what honest rotation over every slice needs."""

    def __init__(self, sender: str, num_classes: int, max_streams: int = 64):
        self.sender = sender
        self.num_classes = num_classes
        self.max_streams = max_streams
        self.latest: dict[str, wire.Knowledge] = {}  # per kind, the newest by round
        self._values: dict[tuple[str, int, int, bytes], tuple[int, np.ndarray]] = {}  # per stream, deltas applied
        self._heard: dict[tuple[int, int], _Heard] = {}  # per slice, rows filled from kept frames

    @property
    def streams(self) -> int:
        """How many of the peer's streams (kind, slice, rows) we hold values of (at most max_streams)."""
        return len(self._values)

    @property
    def newest_round(self) -> int:
        """The newest round the peer has shared, -1 before its first knowledge."""
        return max((k.round for k in self.latest.values()), default=-1)

    def new_session(self) -> None:
        """The peer left and came back (or restarted): its streams start over with key frames, and its
        rounds may start over too, so nothing of the old session is kept."""
        self._values.clear()
        self._heard.clear()
        self.latest.clear()

    def add(self, msg: wire.Knowledge) -> bool:
        """Take a frame; False when it is a difference to a frame we never got (wait for a key frame).
        Raises RemoteProtocolError ("non-finite") for a difference that overflows what we hold."""
        stream = _stream(msg)
        held = self._values.get(stream)
        if held is not None and held[0] > msg.round and msg.base == -1:
            return True  # a key frame older than what we hold (frames out of order): it teaches nothing new
        value = apply_delta(held, msg.base, msg.array())
        if value is None:
            return False
        if msg.base != -1 and not np.isfinite(value).all():  # each frame is finite; their sum need not be
            del self._values[stream]
            raise wire.RemoteProtocolError("non-finite", f"{msg.kind} delta of round {msg.round} on round {msg.base} "
                                                         f"sums past float32; the stream waits for a key frame")
        self._values.pop(stream, None)
        self._values[stream] = (msg.round, value)  # (re)inserted last: the dict is oldest-updated first
        _forget_oldest(self._values, self.max_streams)
        if msg.kind not in self.latest or msg.round >= self.latest[msg.kind].round:
            self.latest[msg.kind] = msg
        return True

    def usable(self, round_idx: int, staleness: int, weight: float, decay: float = 0.0) -> list[Received]:
        """The newest frame per kind within the staleness bound, as whole rows (kept rows filled in), its
        weight scaled by (1 + rounds old)^-decay (0: not scaled)."""
        out = []
        for k in self.latest.values():
            old = round_idx - 1 - k.round
            if old > staleness:
                continue
            held = self._values.get(_stream(k))
            if k.base == -1:
                value = k.array()
            elif held is not None and held[0] == k.round:
                value = held[1]
            else:  # the held value is of another round (frames out of order): not this frame's
                continue
            w = weight * (1.0 + old) ** -decay if decay and old > 0 else weight
            r = Received(self.sender, k.round, k.kind, value, k.ref_start, k.ref_count,
                         self._label_counts(k), w, k.mass, wire.row_indices(k))
            out.append(self._resolve(r, k.keeps) if k.kind == "logits" else r)
        return out

    def _label_counts(self, k: wire.Knowledge) -> np.ndarray:
        """A peer that keeps its label mix private (label_counts = []) counts as uniform over classes, each
        class at most what a stated count may be (its samples may be up to the classes' sum)."""
        if k.label_counts:
            return np.asarray(k.label_counts, dtype=np.int64)
        c = self.num_classes
        return np.full(c, min(max(k.samples, c) // c, wire.MAX_COUNT), dtype=np.int64)

    def _resolve(self, r: Received, keeps: int) -> Received:
        """A logits frame as consensus reads it: the rows it sent, plus the rows it says are unchanged
        since its frame of round `keeps` when we hold that frame (else only the rows sent)."""
        key = (r.ref_start, r.ref_count)
        held = self._heard.get(key)
        if held is not None and held.sent is r.array:  # the same frame, still the newest a round later
            return held.resolved
        if keeps >= 0 and held is not None and held.round == keeps:
            values, known = held.values, held.known
        else:
            values = np.zeros((r.ref_count, self.num_classes), dtype=np.float32)
            known = np.zeros(r.ref_count, dtype=bool)
        rows = slice(None) if r.rows is None else r.rows
        values[rows], known[rows] = r.array, True
        resolved = r if known.all() and r.rows is None else replace(
            r, array=values[known], rows=None if known.all() else np.flatnonzero(known))
        self._heard.pop(key, None)
        self._heard[key] = _Heard(r.round, values, known, r.array, resolved)
        _forget_oldest(self._heard, self.max_streams)
        return resolved


def _forget_oldest(held: dict, limit: int) -> None:
    while len(held) > limit:
        del held[next(iter(held))]
