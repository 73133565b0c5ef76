"""Knowledge modes: what a node shares, how it combines what it receives, and how it trains on it.

A mode is one small class with paired methods (Flower-style) and sees only whole arrays: how frames
relate to earlier frames (row selection, kept rows, deltas, codecs, push-sum shares) is `gossip.py`'s,
and the node loop never looks inside a mode. Adding a mode is a row in `mode_facts.MODE_FACTS` and a
`Mode` subclass registered in `MODES` (checked against each other below).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from p2pfl.averaging import clip_around, clip_rows, mix, push_sum, row_standings, standings, toward
from p2pfl.config import AVERAGING, ROW_RULES, AdapterConfig, GossipConfig, parse_defence
from p2pfl.consensus import (CLAIM_FACTOR, Contribution, agreement, bound_claims, class_means, class_row_support,
                             clip_to_own, held_classes, normalize_logits, reputation_factor, self_support, softmax,
                             teacher, total_variation)
from p2pfl.data.reference import Reference
from p2pfl.learner import Learner
from p2pfl.knowledge import Outgoing, Received
from p2pfl.mode_facts import MODE_FACTS


@dataclass
class Teaching:
    """What consensus produced for one round of training; empty when nothing usable arrived."""

    x: torch.Tensor | None = None  # (R, ...) reference rows to distill on
    probs: torch.Tensor | None = None  # (R, C) teacher
    contributors: int = 0
    staleness: list[int] = field(default_factory=list)
    kd_weight: float | None = None  # this round's KD weight (None: train.kd_weight)
    # logits: how far the consensus moved, as the mean total variation between a teacher and the previous
    # teacher of the same reference rows (None until a slice comes round again); adaptive bit width reads it
    drift: float | None = None
    # (sender, reason, why) of knowledge refused by the mode: counted and logged by the node as a rejection
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    # logits: per sender, the share of rows where its top class matched the others' pool (what
    # gossip.reliability weighs by; a liar's is low), for status and metrics
    agreement: dict[str, float] = field(default_factory=dict)
    # gossip.defence "reputation": per sender, the factor its weight was multiplied by (1: full); logits by
    # what it says of our own classes, parameters by which way and how far its vector lies (hybrid: the smaller)
    weighed: dict[str, float] = field(default_factory=dict)
    anchors: torch.Tensor | None = None  # prototypes: (C, d) pooled class means to pull embeddings toward
    anchored: torch.Tensor | None = None  # (C,) bool: the classes that have one
    outliers: bool = False  # x are rows to expose as outliers (Learner.train), probs unused


# A neighbour's parameter vector farther from ours than this many times our own norm (+1) is no model
# of the same task (honest ones differ by a fraction of it): refused and counted, never averaged in.
# Without it one finite but huge vector (weights x 1e36) reaches every model it touches.
PLAUSIBLE_RADIUS = 100.0
# The reputation defence's memory: this much of a sender's old self_support, the rest this round's. One
# honest-looking round after many lies lifts a liar's weight by 30% of the way, not all of it.
REPUTATION_MEMORY = 0.7
MAX_REPUTATIONS = 1024  # senders remembered (16x node.MAX_PEERS)
# checkpointed mode state: a sender's running self_support (logits) / standing (parameters) under these keys
SUPPORT_KEY, STANDING_KEY = "support:", "standing:"


class RunningMeans:
    """Per sender, a running mean (REPUTATION_MEMORY of the old value, the rest the new one; a stranger's
    first value taken whole), for at most MAX_REPUTATIONS senders: identities come and go (Sybils), the
    least recently heard is forgotten first."""

    def __init__(self) -> None:
        self._mean: dict[str, float] = {}

    def update(self, sender: str, value: float) -> float | None:
        """The sender's mean after `value` (NaN: nothing to judge, the mean as it was; None if it has none)."""
        old = self._mean.pop(sender, None)  # re-inserted last: the dict forgets the least recent first
        new = old if np.isnan(value) else value if old is None else REPUTATION_MEMORY * old + (1 - REPUTATION_MEMORY) * value
        if new is not None:
            self._mean[sender] = new
        self._forget()
        return new

    def _forget(self) -> None:
        """Down to MAX_REPUTATIONS senders, the least recently heard dropped first."""
        while len(self._mean) > MAX_REPUTATIONS:
            del self._mean[next(iter(self._mean))]

    def state(self, prefix: str) -> dict[str, float]:
        """The means as checkpoint numbers, keyed prefix + sender, least recently heard first."""
        return {prefix + sender: mean for sender, mean in self._mean.items()}

    def load(self, prefix: str, state: dict[str, float]) -> None:
        """The means `state` saved under `prefix` (a restarted node keeps distrusting whom it distrusted:
        a liar gets no clean slate from a crash); non-finite numbers are not means and are dropped."""
        self._mean = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and np.isfinite(v)}
        self._forget()


def plausible(own: np.ndarray, inbox: list[Received]) -> tuple[list[Received], list[tuple[str, str, str]]]:
    """(the contributions within PLAUSIBLE_RADIUS of `own`, Teaching.refused entries for the others)."""
    reach = PLAUSIBLE_RADIUS * (float(np.linalg.norm(own.astype(np.float64))) + 1.0)
    near = [float(np.linalg.norm(r.array.astype(np.float64) - own)) <= reach for r in inbox]
    why = f"a parameter vector more than {PLAUSIBLE_RADIUS:.0f}x our own norm away from ours; not averaged in"
    return ([r for r, ok in zip(inbox, near) if ok],
            [(r.sender, "implausible", why) for r, ok in zip(inbox, near) if not ok])


@dataclass
class NodeContext:
    """What a mode may use: the learner, the shared reference set, mixing weights, settings."""

    learner: Learner
    reference: Reference | None
    self_weight: float
    gossip: GossipConfig
    rounds: int = 1  # the run's last round (for schedules)


class Mode(ABC):
    name: str
    kinds: tuple[str, ...]  # knowledge kinds it sends (none: shares nothing); must equal MODE_FACTS[name].kinds

    @classmethod
    def from_config(cls, adapter: AdapterConfig, averaging: str) -> Mode:
        """The mode as a scenario configures it; `averaging` is for the parameter modes."""
        return cls()

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
        return ctx.learner.train(steps, teaching.x, teaching.probs, teaching.kd_weight, teaching.anchors,
                                 teaching.anchored, teaching.outliers)

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
        self._drift: float | None = None  # the last drift measured (Teaching.drift)
        self._support = RunningMeans()  # sender -> running mean of its self_support (the reputation defence)

    def state(self):
        return self._support.state(SUPPORT_KEY)

    def load_state(self, state):
        self._support.load(SUPPORT_KEY, state)

    @property
    def taught(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The latest teacher of every reference row (size, C) and the round each row was last taught
        (-1: never); None before the first round. What diagnostics read after a run."""
        return self._table, self._taught

    def warmup(self, ctx):
        # Outlier exposure: reference rows, most of which are classes this node never saw, teach it to say
        # "I don't know" there instead of naming one of its own classes, so its first knowledge is worth
        # combining (docs/experiments.md). "pooled" asks a row only "one of mine or not": rows of its own
        # classes keep its ranking of them, which uniform targets flatten (BENCHMARKS.md, spoken digits).
        exposure = ctx.gossip.outlier_exposure
        if exposure == "none":
            return Teaching()
        x = torch.from_numpy(ctx.reference.x[ctx.reference.slice_rows(0)])
        if exposure == "pooled":
            return Teaching(x, outliers=True)
        c = ctx.learner.num_classes
        return Teaching(x, torch.full((len(x), c), 1.0 / c))

    def share(self, ctx, round_idx):
        start, count = ctx.reference.slice_bounds(round_idx)
        logits = normalize_logits(self._own_logits(ctx, start, count), ctx.gossip.logit_range)
        return [Outgoing("logits", logits, start, count)]

    def absorb(self, ctx, inbox, round_idx):
        # 1) group neighbours by the slice they spoke about (they may be a round ahead or behind),
        # 2) per slice, the teacher combines own logits (computed once per slice) with theirs and
        #    is written into a table over the whole reference set,
        # 3) every row taught within the last `teacher_memory` rounds is distilled on.
        groups: dict[tuple[int, int], list[Received]] = {}
        refused = []
        for r in inbox:
            if r.rows is not None and ctx.gossip.consensus not in ROW_RULES:  # this rule pools whole slices only
                refused.append((r.sender, "shape", f"a frame about some rows of a slice; consensus "
                                                   f"{ctx.gossip.consensus!r} needs every row"))
                continue
            groups.setdefault((r.ref_start, r.ref_count), []).append(r)
        if self._table is None:
            self._table = np.zeros((ctx.reference.size, ctx.learner.num_classes), dtype=np.float32)
            self._taught = np.full(ctx.reference.size, -1, dtype=np.int64)
        stale, moves, agreed, weighed = [], [], {}, {}
        defence = parse_defence(ctx.gossip.defence)
        for (start, count), received in sorted(groups.items()):
            own = Contribution(self._own_logits(ctx, start, count), ctx.learner.label_counts, ctx.self_weight)
            contribs = [own] + [Contribution(r.array, r.label_counts, r.weight, r.rows) for r in received]
            if "claims" in defence:
                contribs = bound_claims(contribs)
            if "reputation" in defence:
                factors = self._reputation(received, self_support(contribs))
                weighed |= {r.sender: f for r, f in zip(received, factors)}
                contribs = [contribs[0]] + [replace(c, weight=c.weight * f) for c, f in zip(contribs[1:], factors)]
            if "clip" in defence:
                contribs = clip_to_own(contribs)
            rows = ctx.reference.rows(start, count)
            new = teacher(contribs, rule=ctx.gossip.consensus, floor=ctx.gossip.floor,
                          reliability=ctx.gossip.reliability)
            again = self._taught[rows] >= 0
            moves.append(total_variation(new[again], self._table[rows[again]]))
            self._table[rows] = new
            spoken = np.zeros(count, dtype=bool)  # rows some neighbour spoke about: the others teach nothing new
            for r in received:
                spoken[slice(None) if r.rows is None else r.rows] = True
            self._taught[rows[spoken]] = round_idx
            stale += [round_idx - 1 - r.round for r in received]
            agreed |= {r.sender: a for r, a in zip(received, agreement(contribs, ctx.gossip.floor)[1:])
                       if not np.isnan(a)}
        self._own.clear()  # training is about to change the model
        if not groups:
            return Teaching(drift=self._drift, refused=refused)
        moved = np.concatenate(moves)
        self._drift = float(moved.mean()) if moved.size else None
        rows = np.flatnonzero(self._taught >= round_idx - ctx.gossip.teacher_memory)
        return Teaching(torch.from_numpy(ctx.reference.x[rows]), torch.from_numpy(self._table[rows]),
                        contributors=len(inbox) - len(refused), staleness=stale, drift=self._drift,
                        agreement=agreed, weighed=weighed, refused=refused)

    def _reputation(self, received: list[Received], support: np.ndarray) -> list[float]:
        """Each sender's weight factor: its running self_support (a slice without rows to judge leaves it
        as it was, a stranger starts at full weight) through `reputation_factor`."""
        out = []
        for r, s in zip(received, support[1:]):
            mean = self._support.update(r.sender, float(s))
            out.append(reputation_factor(1.0 if mean is None else mean))
        return out

    def _own_logits(self, ctx, start, count):
        key = (start, count)
        if key not in self._own:
            self._own[key] = ctx.learner.logits(ctx.reference.x[ctx.reference.rows(start, count)])
        return self._own[key]


class PrototypeMode(Mode):
    """FedProto without a server: a node shares the mean embed() of its training rows per class (C x d
    floats) with its label counts; before training, per class, the mean of its own and its neighbours'
    means weighted by mixing weight x count is the prototype its labelled embeddings are pulled toward
    (and, with train.proto_head_weight > 0, its classifier learns to name every pooled prototype's
    class, also of classes it has no label of). Needs one embed_dim on every node (a frame of another
    shape is refused); no reference set.

    Defences (gossip.defence): claims bounds each neighbour's label counts; reputation weighs a neighbour
    by `averaging.row_standings` on the classes both hold (the smaller of this round's verdict and its
    running mean, as in parameter modes); clip bounds each class row's pull around ours."""

    name, kinds = "prototypes", ("prototypes",)
    logits = False  # what is averaged per class: embeddings (here) or logits (FDMode)

    def __init__(self) -> None:
        self._own: np.ndarray | None = None  # the means as share() sent them (absorb pools these, not later ones)
        self._reputation = RunningMeans()  # sender -> running mean of its verdicts (the reputation defence)

    def state(self):
        return self._reputation.state(STANDING_KEY)

    def load_state(self, state):
        self._reputation.load(STANDING_KEY, state)

    def share(self, ctx, round_idx):
        self._own = ctx.learner.class_means(logits=self.logits)
        return [Outgoing(self.kinds[0], self._own)]

    def absorb(self, ctx, inbox, round_idx):
        """Per class, our own and the neighbours' means pooled by weight x label count; nothing to
        learn from (trained as `local` is) until a neighbour's frame is usable."""
        own = self._own if self._own is not None else ctx.learner.class_means(logits=self.logits)
        self._own = None  # training is about to change the model
        inbox = [r for r in inbox if r.kind == self.kinds[0]]
        fits = [r for r in inbox if r.array.shape == own.shape]
        refused = [(r.sender, "shape", f"{r.kind} of shape {r.array.shape}; ours are {own.shape} (one "
                                       f"{'embed_dim' if not self.logits else 'label set'} on every node)")
                   for r in inbox if r.array.shape != own.shape]
        fits, far = plausible(own, fits)  # one finite but huge frame would drag every node it reaches away
        if not fits:
            return Teaching(refused=refused + far)
        contribs = [Contribution(own, ctx.learner.label_counts, ctx.self_weight)] + [
            Contribution(r.array, r.label_counts, r.weight) for r in fits]
        defence, weighed = parse_defence(ctx.gossip.defence), {}
        if "claims" in defence:
            contribs = bound_claims(contribs)
        if "reputation" in defence:
            factors = [self._factor(r.sender, v) for r, v in zip(fits, self._verdicts(contribs))]
            weighed = {r.sender: f for r, f in zip(fits, factors)}
            contribs = [contribs[0]] + [replace(c, weight=c.weight * f) for c, f in zip(contribs[1:], factors)]
        if "clip" in defence:
            contribs = self._clipped(contribs)
        pooled, have = class_means(self._pooled_space(contribs))
        taught = Teaching(contributors=len(fits), staleness=[round_idx - 1 - r.round for r in fits],
                          refused=refused + far, weighed=weighed)
        return self.teach(ctx, taught, pooled, have)

    def _verdicts(self, contribs: list[Contribution]) -> np.ndarray:
        """(K-1,) each neighbour's verdict this round (NaN: nothing to judge it by)."""
        held = [held_classes(c.label_counts) for c in contribs]
        return row_standings(contribs[0].logits, held[0], [c.logits for c in contribs[1:]], held[1:])

    def _factor(self, sender: str, verdict: float) -> float:
        mean = self._reputation.update(sender, verdict)  # NaN (nothing to judge): the mean as it was
        if mean is None:  # a stranger with nothing to judge it by keeps its whole weight
            return 1.0
        return mean if np.isnan(verdict) else min(mean, verdict)

    def _clipped(self, contribs: list[Contribution]) -> list[Contribution]:
        held = [held_classes(c.label_counts) for c in contribs]
        rows = clip_rows(contribs[0].logits, held[0], [c.logits for c in contribs[1:]], held[1:])
        return [contribs[0]] + [replace(c, logits=x) for c, x in zip(contribs[1:], rows)]

    def _pooled_space(self, contribs: list[Contribution]) -> list[Contribution]:
        return contribs

    def teach(self, ctx: NodeContext, taught: Teaching, pooled: np.ndarray, have: np.ndarray) -> Teaching:
        return replace(taught, anchors=torch.from_numpy(pooled), anchored=torch.from_numpy(have))


class FDMode(PrototypeMode):
    """Federated distillation (FD, Jeong et al. 2018) without a server: a node shares its mean logits
    over its own training rows per class (C x C floats) with its label counts; the per-class pool of its
    own and its neighbours' is the teacher of its own rows (each labelled row is also distilled toward
    its class's pooled prediction). No reference set, so it teaches a node nothing about inputs of
    classes it has no rows of: the decentralized baseline the reference set is measured against.

    Unlike the paper, which averages logits, the pool is of probabilities (each node's softmax of its
    mean logits): a logit has no bound, so whoever sends the largest numbers would decide every class's
    teacher; a probability pulls by its weight's share at most. Reputation: `consensus.class_row_support`
    (a neighbour's row of a class it claims must give that class a real share), through the logits mode's
    ramp; clip: the logits mode's probability-space clipping."""

    name, kinds = "fd", ("class-logits",)
    logits = True

    def state(self):
        return self._reputation.state(SUPPORT_KEY)

    def load_state(self, state):
        self._reputation.load(SUPPORT_KEY, state)

    def _verdicts(self, contribs):
        return class_row_support(contribs)[1:]

    def _factor(self, sender, verdict):
        mean = self._reputation.update(sender, float(verdict))
        return reputation_factor(1.0 if mean is None else mean)

    def _clipped(self, contribs):
        return clip_to_own(contribs)

    def _pooled_space(self, contribs):
        return [replace(c, logits=softmax(c.logits.astype(np.float64)).astype(np.float32)) for c in contribs]

    def teach(self, ctx, taught, pooled, have):
        # each row a mixture of distributions; a class nobody holds has a zero row, and our own labelled rows are
        # all of classes we hold (our counts are in the pool)
        probs = pooled / np.maximum(pooled.sum(axis=1, keepdims=True), 1e-12)
        return replace(taught, x=ctx.learner.x, probs=torch.from_numpy(probs)[ctx.learner.y])


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
        self._standing = RunningMeans()  # sender -> running mean of its standing (the reputation defence)

    @classmethod
    def from_config(cls, adapter, averaging):
        return cls(averaging)

    def share(self, ctx, round_idx):
        if not self.push_sum:
            return [Outgoing("params", ctx.learner.get_flat())]
        out = Outgoing("params", ctx.learner.get_flat(), mass=self.mass)
        self.mass *= ctx.self_weight  # the rest goes to the neighbours, a weight's share each
        return [out]

    def state(self):
        return ({"mass": self.mass} if self.push_sum else {}) | self._standing.state(STANDING_KEY)

    def reclaim(self, mass):
        self.mass += mass

    def load_state(self, state):
        self.mass = state.get("mass", self.mass)
        self._standing.load(STANDING_KEY, state)

    def absorb(self, ctx, inbox, round_idx):
        own = ctx.learner.get_flat()
        inbox, refused = plausible(own, [r for r in inbox if r.kind == "params"])
        defence, weighed = parse_defence(ctx.gossip.defence), {}
        if "reputation" in defence and inbox:  # a far or opposed neighbour's pull taken away, now and for a while
            now = standings(own, [r.array for r in inbox])
            factors = [min(f, self._standing.update(r.sender, f)) for r, f in zip(inbox, now)]
            weighed = {r.sender: f for r, f in zip(inbox, factors)}
            inbox = [replace(r, array=toward(own, r.array, f)) for r, f in zip(inbox, factors)]
        if "clip" in defence:  # each neighbour pulls us at most a bounded distance
            inbox = [replace(r, array=v) for r, v in zip(inbox, clip_around(own, [r.array for r in inbox]))]
        if self.push_sum:  # a neighbour's mass counts once, however many rounds its frame stays newest
            inbox = [r for r in inbox if self._consumed.get(r.sender, -1) < r.round]
            if inbox:  # a share is what a peer says of its mass: bounded as label counts are (bound_claims), or
                # one share of the wire's largest mass would replace our vector with its own and spread on
                cap = CLAIM_FACTOR * max(self.mass, float(np.percentile([r.mass for r in inbox], 50, method="lower")))
                inbox = [replace(r, mass=min(r.mass, cap)) for r in inbox]
            self._consumed |= {r.sender: r.round for r in inbox}
            if inbox:
                flat, self.mass = push_sum(ctx.learner.get_flat(), self.mass, [(r.mass, r.array) for r in inbox])
                ctx.learner.set_flat(flat)
        elif inbox:
            ctx.learner.set_flat(mix(ctx.learner.get_flat(), [(r.weight, r.array) for r in inbox]))
        return Teaching(contributors=len(inbox), staleness=[round_idx - 1 - r.round for r in inbox], refused=refused,
                        weighed=weighed)


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

    @classmethod
    def from_config(cls, adapter, averaging):
        return cls(kd_decay=adapter.kd_decay, averaging=averaging)

    def share(self, ctx, round_idx):
        return super().share(ctx, round_idx) + self._adapter.share(ctx, round_idx)

    def state(self):
        return super().state() | self._adapter.state()

    def reclaim(self, mass):
        self._adapter.reclaim(mass)

    def load_state(self, state):
        super().load_state(state)
        self._adapter.load_state(state)

    def absorb(self, ctx, inbox, round_idx):
        # the teacher first: own logits were computed by share() with the model that was sent
        teaching = super().absorb(ctx, [r for r in inbox if r.kind == "logits"], round_idx)
        averaged = self._adapter.absorb(ctx, inbox, round_idx)
        teaching.contributors = max(teaching.contributors, averaged.contributors)
        teaching.staleness += averaged.staleness
        teaching.refused += averaged.refused
        teaching.weighed = {s: min(teaching.weighed.get(s, 1.0), averaged.weighed.get(s, 1.0))
                            for s in teaching.weighed.keys() | averaged.weighed.keys()}
        teaching.kd_weight = ctx.learner.config.kd_weight * (1.0 - self.kd_decay * round_idx / ctx.rounds)
        return teaching


MODES: dict[str, type[Mode]] = {m.name: m for m in (LocalMode, LogitsMode, FedAvgMode, AdapterMode, HybridMode,
                                                    PrototypeMode, FDMode)}
# the one table of modes and the classes must agree: a mode the wire does not know cannot run, and back
assert {n: m.kinds for n, m in MODES.items()} == {n: f.kinds for n, f in MODE_FACTS.items()}, \
    "modes.MODES and mode_facts.MODE_FACTS disagree on the modes or the kinds they send"


def make_mode(name: str, adapter: AdapterConfig | None = None, averaging: str = "metropolis") -> Mode:
    """A mode by name; `averaging` is for the parameter modes (adapter, hybrid, fedavg)."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; choose one of: {', '.join(MODES)}")
    return MODES[name].from_config(adapter or AdapterConfig(), averaging)
