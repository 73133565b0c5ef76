"""Knowledge modes: what a node shares, how it combines what it receives, and how it trains on it.

A mode is one small class with three paired methods (Flower-style); the node loop never looks
inside. Adding a mode touches no runtime code: subclass `Mode` and register it in `MODES`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from p2pfl.averaging import mix, push_sum
from p2pfl.codecs import BIT_LADDER
from p2pfl.config import AdapterConfig, GossipConfig
from p2pfl.consensus import Contribution, normalize_logits, softmax, teacher, total_variation
from p2pfl.data.reference import Reference
from p2pfl.learner import Learner


@dataclass(frozen=True)
class Outgoing:
    """Knowledge ready to send: a payload array and, for logits, the reference slice it is about."""

    kind: str  # "logits" | "params"
    array: np.ndarray
    ref_start: int = 0
    ref_count: int = 0
    mass: float | None = None  # push-sum: the node's mass, of which each neighbour gets its weight's share
    rows: np.ndarray | None = None  # logits: the slice rows `array` holds (None: all of them)
    keeps: int = -1  # logits: the earlier round whose frame about this slice holds the other rows (-1: none)


@dataclass(frozen=True)
class Received:
    """A neighbour's knowledge as the node keeps it: decoded array plus what consensus needs."""

    sender: str
    round: int
    kind: str
    array: np.ndarray
    ref_start: int
    ref_count: int
    label_counts: np.ndarray
    weight: float  # this node's mixing weight for the sender
    mass: float = 1.0  # push-sum: the share of the sender's mass that came with it
    rows: np.ndarray | None = None  # logits: the slice rows `array` holds (None: all of them)
    keeps: int = -1  # logits: the sender's earlier round whose frame about this slice holds the other rows


@dataclass
class Teaching:
    """What consensus produced for one round of training; empty when nothing usable arrived."""

    x: torch.Tensor | None = None  # (R, ...) reference rows to distill on
    probs: torch.Tensor | None = None  # (R, C) teacher
    contributors: int = 0
    staleness: list[int] = field(default_factory=list)
    kd_weight: float | None = None  # this round's KD weight (None: train.kd_weight)


@dataclass
class NodeContext:
    """What a mode may use: the learner, the shared reference set, mixing weights, settings."""

    learner: Learner
    reference: Reference | None
    self_weight: float
    gossip: GossipConfig
    rounds: int = 1  # the run's last round (for schedules)


# What gossip.codec = "auto" means, per knowledge kind. Logits: the measured frontier (BENCHMARKS.md,
# bench_codecs): normalized logits (gossip.logit_range), each row's two largest in int3, rANS-coded
# (+ans: a model per column, the same values as +z in ~30% fewer bytes); on quickstart's 500-row slices
# 3.2 KB per node per round, and 0.70 global with ~58x fewer bytes than fedavg's fp32 weights.
DEFAULT_CODECS = {"logits": "topk:2+int3+ans", "params": "fp32"}


def adaptive_bits(max_bits: int, drift: float | None, threshold: float) -> int:
    """Adaptive bit width: fewer bits while the consensus is stable. Full `max_bits` while the teacher's
    drift is at least `threshold` (or unknown, or adaptation is off: threshold 0), one step down
    codecs.BIT_LADDER below it, another below threshold / 2, and so on down to the ladder's 3 bits."""
    ladder = [b for b in BIT_LADDER if b <= max_bits] or [max_bits]
    step, t = 0, threshold
    while drift is not None and step < len(ladder) - 1 and drift < t:
        step, t = step + 1, t / 2
    return ladder[step]


def resolve_codecs(kinds: tuple[str, ...], codec: str = "auto", params_codec: str = "") -> dict[str, str]:
    """The codec of each kind a mode sends: `codec` for all ("auto": DEFAULT_CODECS), except params
    payloads when `params_codec` is set (hybrid mode sends both kinds)."""
    out = {}
    for kind in kinds:
        chosen = params_codec if kind == "params" and params_codec else codec
        out[kind] = DEFAULT_CODECS[kind] if chosen == "auto" else chosen
    return out


SELECT_RULES = ("all", "confident", "uncertain", "changed")


def parse_select(text: str) -> tuple[str, float]:
    """'confident:0.25' -> ("confident", 0.25); 'all' -> ("all", 1.0). ValueError names the grammar."""
    rule, _, fraction = text.partition(":")
    try:
        f = float(fraction) if fraction else 1.0
    except ValueError:
        f = -1.0
    if rule not in SELECT_RULES or not 0.0 < f <= 1.0 or (rule == "all") == bool(fraction):
        raise ValueError(f"{text!r}: expected all, confident:F, uncertain:F or changed:T with 0 < F, T <= 1, "
                         f"e.g. confident:0.25 or changed:0.05")
    return rule, f


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


@dataclass
class _Sent:
    """Our frames about one slice so far: how many, the round of the last, and each row as neighbours hold it."""

    frames: int
    round: int
    values: np.ndarray  # (slice rows, C)


@dataclass
class _Heard:
    """A neighbour's latest frame about one slice, with the rows earlier frames keep filled in."""

    round: int
    values: np.ndarray  # (slice rows, C)
    known: np.ndarray  # (slice rows,) bool
    sent: np.ndarray  # the frame's own decoded rows (the same object while that frame stays the newest)
    resolved: Received  # the frame as consensus reads it: every known row


class Mode(ABC):
    name: str
    kinds: tuple[str, ...]  # knowledge kinds it sends (none: shares nothing)
    # logits: how far the consensus moved, as the mean total variation between this round's teacher and
    # the previous teacher of the same reference rows (None until a slice comes round again); adaptive
    # bit width reads it
    drift: float | None = None

    @abstractmethod
    def share(self, ctx: NodeContext, round_idx: int) -> list[Outgoing]:
        """Knowledge to push to neighbours after round `round_idx` (empty: nothing)."""

    @abstractmethod
    def absorb(self, ctx: NodeContext, inbox: list[Received], round_idx: int) -> Teaching:
        """Combine own + received knowledge before round `round_idx` trains."""

    def warmup(self, ctx: NodeContext) -> Teaching:
        """What the label-only warm-up may also learn from (nothing by default)."""
        return Teaching()

    def train(self, ctx: NodeContext, teaching: Teaching, steps: int) -> float:
        return ctx.learner.train(steps, teaching.x, teaching.probs, teaching.kd_weight)

    def state(self) -> dict[str, float]:
        """Numbers a restarted node needs besides its model (saved in its checkpoint)."""
        return {}

    def reclaim(self, mass: float) -> None:
        """Push-sum: a share of mass that `share` gave out could not be sent; it stays with us."""

    def load_state(self, state: dict[str, float]) -> None:
        pass


class LocalMode(Mode):
    """Baseline: no sharing at all."""

    name, kinds = "local", ()

    def share(self, ctx, round_idx):
        return []

    def absorb(self, ctx, inbox, round_idx):
        return Teaching()


class LogitsMode(Mode):
    """The product: predictions on a rotating reference slice, combined into a teacher, distilled."""

    name, kinds = "logits", ("logits",)

    def __init__(self) -> None:
        self._own: dict[tuple[int, int], np.ndarray] = {}  # slice -> own logits since the last training
        self._table: np.ndarray | None = None  # (reference size, C) latest teacher of every row
        self._taught: np.ndarray | None = None  # (reference size,) round each row was last taught, -1 never
        # select = changed:T. Sender: per slice, what we sent. Receiver: per neighbour and slice, what it last said.
        self._sent: dict[tuple[int, int], _Sent] = {}
        self._heard: dict[tuple[str, int, int], _Heard] = {}

    def warmup(self, ctx):
        # Outlier exposure: uniform targets on reference rows, most of which are classes this node
        # never saw, teach it to say "I don't know" there instead of naming one of its own classes.
        # Its first knowledge is then worth combining (see BENCHMARKS.md for the measured effect).
        if not ctx.gossip.warmup_uniform:
            return Teaching()
        x = torch.from_numpy(ctx.reference.x[ctx.reference.slice_rows(0)])
        c = ctx.learner.num_classes
        return Teaching(x, torch.full((len(x), c), 1.0 / c))

    def share(self, ctx, round_idx):
        start, count = ctx.reference.slice_bounds(round_idx)
        logits = normalize_logits(self._own_logits(ctx, start, count), ctx.gossip.logit_range)
        rule, threshold = parse_select(ctx.gossip.select)
        if rule == "changed":
            return [self._share_changed(ctx, logits, start, count, threshold, round_idx)]
        rows = select_rows(logits, ctx.gossip.select)
        if rows is None:
            return [Outgoing("logits", logits, start, count)]
        return [Outgoing("logits", logits[rows], start, count, rows=rows)]

    def _share_changed(self, ctx, logits, start, count, threshold, round_idx) -> Outgoing:
        """Only the rows that moved by >= threshold since we last sent them; the frame says which earlier
        frame holds the rest. Every gossip.key_every-th frame about a slice sends every row, so a
        neighbour that missed one (or restarted) is whole again."""
        sent = self._sent.get((start, count))
        if sent is None or sent.frames % ctx.gossip.key_every == 0:
            self._sent[start, count] = _Sent((sent.frames if sent else 0) + 1, round_idx, logits.copy())
            return Outgoing("logits", logits, start, count)
        previous, sent.frames, sent.round = sent.round, sent.frames + 1, round_idx
        rows = changed_rows(logits, sent.values, threshold)
        sent.values[rows] = logits[rows]
        if len(rows) == count:
            return Outgoing("logits", logits, start, count)
        return Outgoing("logits", logits[rows], start, count, rows=rows, keeps=previous)

    def _resolve(self, r: Received, num_classes: int) -> Received:
        """A neighbour's logits frame as consensus reads it: the rows it sent, plus the rows it says are
        unchanged since its frame of round `keeps` when we hold that frame (else only the rows sent)."""
        key = (r.sender, r.ref_start, r.ref_count)
        held = self._heard.get(key)
        if held is not None and held.sent is r.array:  # the same frame, still the newest a round later
            return held.resolved
        if r.keeps >= 0 and held is not None and held.round == r.keeps:
            values, known = held.values, held.known
        else:
            values = np.zeros((r.ref_count, num_classes), dtype=np.float32)
            known = np.zeros(r.ref_count, dtype=bool)
        rows = slice(None) if r.rows is None else r.rows
        values[rows], known[rows] = r.array, True
        resolved = r if known.all() and r.rows is None else replace(
            r, array=values[known], rows=None if known.all() else np.flatnonzero(known), keeps=-1)
        self._heard[key] = _Heard(r.round, values, known, r.array, resolved)
        return resolved

    def absorb(self, ctx, inbox, round_idx):
        # 1) group neighbours by the slice they spoke about (they may be a round ahead or behind),
        # 2) per slice, the teacher combines own logits (computed once per slice) with theirs and
        #    is written into a table over the whole reference set,
        # 3) every row taught within the last `teacher_memory` rounds is distilled on.
        groups: dict[tuple[int, int], list[Received]] = {}
        for r in inbox:
            groups.setdefault((r.ref_start, r.ref_count), []).append(self._resolve(r, ctx.learner.num_classes))
        if self._table is None:
            self._table = np.zeros((ctx.reference.size, ctx.learner.num_classes), dtype=np.float32)
            self._taught = np.full(ctx.reference.size, -1, dtype=np.int64)
        stale, moves = [], []
        for (start, count), received in sorted(groups.items()):
            own = Contribution(self._own_logits(ctx, start, count), ctx.learner.label_counts, ctx.self_weight)
            theirs = [Contribution(r.array, r.label_counts, r.weight, r.rows) for r in received]
            rows = ctx.reference.rows(start, count)
            new = teacher([own, *theirs], rule=ctx.gossip.consensus, floor=ctx.gossip.floor,
                          reliability=ctx.gossip.reliability)
            again = self._taught[rows] >= 0
            moves.append(total_variation(new[again], self._table[rows[again]]))
            self._table[rows] = new
            spoken = np.zeros(count, dtype=bool)  # rows some neighbour spoke about: the others teach nothing new
            for r in received:
                spoken[slice(None) if r.rows is None else r.rows] = True
            self._taught[rows[spoken]] = round_idx
            stale += [round_idx - 1 - r.round for r in received]
        self._own.clear()  # training is about to change the model
        if not groups:
            return Teaching()
        moved = np.concatenate(moves)
        self.drift = float(moved.mean()) if moved.size else None
        rows = np.flatnonzero(self._taught >= round_idx - ctx.gossip.teacher_memory)
        return Teaching(torch.from_numpy(ctx.reference.x[rows]), torch.from_numpy(self._table[rows]),
                        contributors=len(inbox), staleness=stale)

    def _own_logits(self, ctx, start, count):
        key = (start, count)
        if key not in self._own:
            self._own[key] = ctx.learner.logits(ctx.reference.x[ctx.reference.rows(start, count)])
        return self._own[key]


AVERAGING = ("metropolis", "push-sum")


class AdapterMode(Mode):
    """Gossip averaging of the shared module's parameters; the rest of each model stays private and
    keeps training on its own labels.

    averaging: "metropolis" mixes with the topology's symmetric weights; "push-sum" also carries a
    mass, for weights that are not symmetric (real nodes weigh their neighbours uniformly).
    """

    name, kinds = "adapter", ("params",)

    def __init__(self, averaging: str = "metropolis") -> None:
        if averaging not in AVERAGING:
            raise ValueError(f"unknown averaging {averaging!r}; choose one of: {', '.join(AVERAGING)}")
        self.push_sum = averaging == "push-sum"
        self.mass = 1.0
        self._consumed: dict[str, int] = {}  # push-sum: sender -> last round whose mass we added

    def share(self, ctx, round_idx):
        if not self.push_sum:
            return [Outgoing("params", ctx.learner.get_flat())]
        out = Outgoing("params", ctx.learner.get_flat(), mass=self.mass)
        self.mass *= ctx.self_weight  # the rest goes to the neighbours, a weight's share each
        return [out]

    def state(self):
        return {"mass": self.mass} if self.push_sum else {}

    def reclaim(self, mass):
        self.mass += mass

    def load_state(self, state):
        self.mass = state.get("mass", self.mass)

    def absorb(self, ctx, inbox, round_idx):
        inbox = [r for r in inbox if r.kind == "params"]
        if self.push_sum:  # a neighbour's mass counts once, however many rounds its frame stays newest
            inbox = [r for r in inbox if self._consumed.get(r.sender, -1) < r.round]
            self._consumed |= {r.sender: r.round for r in inbox}
            if inbox:
                flat, self.mass = push_sum(ctx.learner.get_flat(), self.mass, [(r.mass, r.array) for r in inbox])
                ctx.learner.set_flat(flat)
        elif inbox:
            ctx.learner.set_flat(mix(ctx.learner.get_flat(), [(r.weight, r.array) for r in inbox]))
        return Teaching(contributors=len(inbox), staleness=[round_idx - 1 - r.round for r in inbox])


class FedAvgMode(AdapterMode):
    """Baseline: gossip averaging of whole models (D-PSGD): adapter mode whose adapter is the whole
    model, so there is one averaging mechanism (a test checks both give identical runs)."""

    name = "fedavg"


class HybridMode(LogitsMode):
    """Both channels: the averaged adapter, and distillation from the logit consensus on top.

    The KD weight may decay over the run (adapter.kd_decay): logits carry knowledge of unseen
    classes early, the averaged adapter carries it once the nodes agree.
    """

    name, kinds = "hybrid", ("logits", "params")

    def __init__(self, kd_decay: float = 0.0, averaging: str = "metropolis") -> None:
        super().__init__()
        self.kd_decay = kd_decay
        self._adapter = AdapterMode(averaging)

    def share(self, ctx, round_idx):
        return super().share(ctx, round_idx) + self._adapter.share(ctx, round_idx)

    def state(self):
        return self._adapter.state()

    def reclaim(self, mass):
        self._adapter.reclaim(mass)

    def load_state(self, state):
        self._adapter.load_state(state)

    def absorb(self, ctx, inbox, round_idx):
        # the teacher first: own logits were computed by share() with the model that was sent
        teaching = super().absorb(ctx, [r for r in inbox if r.kind == "logits"], round_idx)
        averaged = self._adapter.absorb(ctx, inbox, round_idx)
        teaching.contributors = max(teaching.contributors, averaged.contributors)
        teaching.staleness += averaged.staleness
        teaching.kd_weight = ctx.learner.config.kd_weight * (1.0 - self.kd_decay * round_idx / ctx.rounds)
        return teaching


MODES: dict[str, type[Mode]] = {m.name: m for m in (LocalMode, LogitsMode, FedAvgMode, AdapterMode, HybridMode)}


def make_mode(name: str, adapter: AdapterConfig | None = None, averaging: str = "metropolis") -> Mode:
    """A mode by name; `averaging` is for the parameter modes (adapter, hybrid, fedavg)."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; choose one of: {', '.join(MODES)}")
    if name == "hybrid":
        return HybridMode(kd_decay=(adapter or AdapterConfig()).kd_decay, averaging=averaging)
    if issubclass(MODES[name], AdapterMode):
        return MODES[name](averaging)
    return MODES[name]()
