"""Attacks as a liar mounts them: an attacking node learns like an honest one, then lies in its frames.

`Attacker` wraps the node's honest mode: it trains and absorbs as that mode does (so its lies can be
informed by what it hears), and rewrites what the mode shares before the node's Outbox encodes it. A
lie therefore crosses the same wire, codecs and session rules as honest knowledge, and no honest
node's code knows that attacks exist. Which nodes lie is scenario data (`[[attack]]`, `attackers`).

Logits attacks rewrite a slice's normalized logits (R, C); parameter attacks a flat vector:

    shift      all mass on each row's least likely class (LMA-style; the attacker's own view of it)
    uniform    no opinion on any row
    invert     the ranking reversed (logits negated)
    reorder    the confidences reassigned in reverse rank order (FDLA)
    scale      logits times `strength` (default 10)
    replay     its first frame, resent every round (stale knowledge, an old slice)
    echo       a free-rider: the consensus it was taught, sent back as its own. Slices rotate, so no node
               is ever taught the slice it must speak about before it speaks: a free-rider answers late,
               about the slice its neighbours last spoke of, under their round (`Outgoing.round`), and
               sends nothing in a round when it has heard nothing newer than it already spoke of (so
               nothing in its first round of lying, whose slice it answered honestly the round before) or
               was not taught every row of it. Its frames are a round old: under gossip.max_lag = 0 its
               neighbours wait for it once (wait_timeout), then go on without waiting for it
    inflate    honest logits, but label counts of `strength` (default 10,000) per class
    sign-flip  -x;  gaussian: noise of std `strength` (default 1);  huge: x * `strength` (default 1e36)
    alie       the neighbours' mean + z std (z = `strength`, default 1; "a little is enough")
    ipm        -eps times the neighbours' mean (eps = `strength`, default 0.5; inner-product manipulation)
    silent     no knowledge at all, in any mode (a free-rider that only listens; with it the benchmark
               measures what honest nodes lose when the liars' data is simply absent: a defence's ceiling)
    dissensus  any mode: its own view pushed away from the consensus by `strength` (default 1) times their
               gap (logits: own + s (own - the teacher it was taught), late as echo is; parameters: own +
               s (own - the neighbours' mean)), so its neighbours are pulled apart instead of together. Broadcast (every
               neighbour hears the same frame), so it is the paper's attack (He et al. 2022, which tailors
               each neighbour's message) without the tailoring; with `place = "bottleneck"` it sits where
               the graph's paths cross.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import networkx as nx
import numpy as np

from p2pfl.config import ANY_ATTACKS, LIES_BY_KIND, AttackConfig, Scenario, parse_attack
from p2pfl.consensus import normalize_logits
from p2pfl.modes import Mode, NodeContext, Outgoing, Received, Teaching

log = logging.getLogger(__name__)


def attackers(s: Scenario, graph: nx.Graph) -> dict[int, AttackConfig]:
    """Node index -> the attack it mounts: each [[attack]] table's listed nodes (taken first, so no chosen
    count is shortened by them; a node listed twice is an error), a count or share chosen with the scenario
    seed among nodes no earlier table took, or a cover of every honest node's neighbourhood."""
    n = graph.number_of_nodes()
    rng = np.random.default_rng([s.seed, 7_001])
    shuffled = [int(i) for i in rng.permutation(n)]
    central = nx.betweenness_centrality(graph) if any(a.place == "bottleneck" for a in s.attack) else {}
    out: dict[int, AttackConfig] = {}
    for a in sorted(s.attack, key=lambda a: not a.nodes):  # stable: the other tables in their order
        free = [i for i in shuffled if i not in out]
        if a.place == "bottleneck":
            free.sort(key=lambda i: -central[i])  # stable: ties in the seeded order
        if a.neighbours:
            chosen = neighbourhood_cover(graph, a.neighbours, free, set(out))
        elif a.nodes:
            chosen = list(a.nodes)
            if twice := sorted(set(chosen) & set(out)):
                raise ValueError(f"attack.nodes: {twice} are listed by two [[attack]] tables; a node mounts one attack")
        else:
            want = a.count or max(1, round(a.fraction * n))
            if want > len(free):
                raise ValueError(f"attack {a.kind!r}: {want} attackers asked for, but only {len(free)} of the {n} nodes "
                                 f"are left to take; give a smaller count or fraction")
            chosen = free[:want]
        bad = [i for i in chosen if not 0 <= i < n]
        if bad:
            raise ValueError(f"attack.nodes: {bad} are not node indices of a {n}-node topology (0..{n - 1})")
        out |= {i: a for i in chosen}
        if a.neighbours:  # a node of lower degree cannot have k attacking neighbours: all it has attack; say so
            have = {v: sum(u in out for u in graph[v]) for v in graph if v not in out}
            if short := [v for v, bad_ones in have.items() if bad_ones < a.neighbours]:
                log.warning("attack %r: neighbours = %d: honest node(s) %s have fewer attacking neighbours (%s): "
                            "their degree, or the nodes other tables took, allow no more", a.kind, a.neighbours,
                            short, ", ".join(f"{have[v]} of {graph.degree[v]}" for v in short))
    if len(out) == n:  # nobody left to learn, and nothing for the honest-only numbers to measure
        raise ValueError(f"the [[attack]] tables make all {n} nodes attackers; leave at least one honest node "
                         f"(a smaller count or fraction, or fewer nodes listed)")
    return out


def neighbourhood_cover(graph: nx.Graph, k: int, order: list[int], taken: set[int]) -> list[int]:
    """Nodes (from `order`, not in `taken`) chosen greedily until every other node has at least `k`
    attacking neighbours (already taken ones count), or no choice brings any node closer: each pick is
    the candidate adjacent to the most nodes still short of `k`, ties in `order`."""
    bad = set(taken)
    chosen: list[int] = []
    while True:
        short = {v for v in graph if v not in bad and sum(u in bad for u in graph[v]) < k}
        candidates = [c for c in order if c not in bad]
        best = max(candidates, key=lambda c: sum(u in short for u in graph[c]), default=None)
        if best is None or not short or sum(u in short for u in graph[best]) == 0:
            return chosen
        bad.add(best)
        chosen.append(best)


class Attacker(Mode):
    """`honest`'s learning, and `attack`'s lies in what it shares from round `attack.start` on."""

    def __init__(self, honest: Mode, attack: AttackConfig, seed: int = 0):
        self.honest = honest
        self.attack = attack
        self.kinds_of_lie = parse_attack(attack.kind)
        self.name, self.kinds = honest.name, honest.kinds
        self._rng = np.random.default_rng(seed)
        self._heard: list[Received] = []  # what the neighbours said last round (alie, ipm, echo, dissensus)
        self._first: dict[str, Outgoing] = {}  # replay: the first frame of each kind
        # per kind, the newest round a frame of ours was about (a late answer must be newer); per kind, since
        # hybrid's params frames are this round's while its late logits are about the round before
        self._sent_round: dict[str, int] = {}

    def warmup(self, ctx: NodeContext) -> Teaching:
        return self.honest.warmup(ctx)

    def train(self, ctx: NodeContext, teaching: Teaching, steps: int) -> float:
        return self.honest.train(ctx, teaching, steps)

    def absorb(self, ctx: NodeContext, inbox: list[Received], round_idx: int) -> Teaching:
        self._heard = inbox
        return self.honest.absorb(ctx, inbox, round_idx)

    def share(self, ctx: NodeContext, round_idx: int) -> list[Outgoing]:
        if "silent" in self.kinds_of_lie and round_idx >= self.attack.start:
            return []  # nothing given out, so a push-sum share keeps its mass
        honest = self.honest.share(ctx, round_idx)
        for out in honest:
            self._first.setdefault(out.kind, out)
        if round_idx >= self.attack.start:
            honest = [lie for out in honest if (lie := self._lie(ctx, out)) is not None]
        for o in honest:
            self._sent_round[o.kind] = max(self._sent_round.get(o.kind, -1), round_idx if o.round is None else o.round)
        return honest

    def state(self):
        return self.honest.state()

    def reclaim(self, mass: float) -> None:
        self.honest.reclaim(mass)

    def load_state(self, state) -> None:
        self.honest.load_state(state)

    # -- the lies ------------------------------------------------------------------------------------
    def _lie(self, ctx: NodeContext, out: Outgoing) -> Outgoing | None:
        """`out` as the lies make it; None: nothing sent (a late answer with nothing new to answer)."""
        for kind in self.kinds_of_lie:
            if kind in ANY_ATTACKS or kind in LIES_BY_KIND[out.kind]:  # each to the payloads it can lie in
                out = getattr(self, "_" + kind.replace("-", "_"))(ctx, out)
                if out is None:
                    return None
        return out

    def _strength(self, default: float) -> float:
        return self.attack.strength or default

    @staticmethod
    def _span(ctx: NodeContext, z: np.ndarray) -> tuple[float, float]:
        """The lowest and highest value an honest frame holds (normalized logits span the logit range)."""
        half = ctx.gossip.logit_range / 2
        return (-half, half) if half > 0 else (float(z.min()), float(z.max()))

    def _shift(self, ctx, out):
        lo, hi = self._span(ctx, out.array)
        target = out.array.argmin(axis=1)  # the class its own model finds least likely, per row
        z = np.full_like(out.array, lo)
        z[np.arange(len(z)), target] = hi
        return replace(out, array=z)

    def _uniform(self, ctx, out):
        return replace(out, array=np.zeros_like(out.array))

    def _invert(self, ctx, out):
        return replace(out, array=-out.array)

    def _reorder(self, ctx, out):
        order = np.argsort(out.array, axis=1)  # ascending: the least likely class first
        z = np.empty_like(out.array)
        rows = np.arange(len(z))[:, None]
        z[rows, order] = np.sort(out.array, axis=1)[:, ::-1]  # the largest value to the least likely class
        return replace(out, array=z)

    def _scale(self, ctx, out):
        return replace(out, array=(out.array * self._strength(10.0)).astype(np.float32))

    def _replay(self, ctx, out):
        return self._first[out.kind]

    def _late(self, ctx, out: Outgoing) -> tuple[Outgoing, np.ndarray] | None:
        """The frame to answer late with: `out` moved to the slice the neighbours last spoke of, under their
        round, with the consensus this node was taught on it (log-probabilities); None when it heard nothing
        newer than what it already sent, or was not taught every row of it."""
        heard = [h for h in self._heard if h.kind == "logits"]
        if not heard:
            return None
        newest = max(heard, key=lambda h: h.round)
        table, taught = getattr(self.honest, "taught", (None, None))
        rows = ctx.reference.rows(newest.ref_start, newest.ref_count)
        if newest.round <= self._sent_round.get(out.kind, -1) or table is None or (taught[rows] < 0).any():
            return None
        late = replace(out, ref_start=newest.ref_start, ref_count=newest.ref_count, round=newest.round)
        return late, np.log(np.maximum(table[rows], 1e-12)).astype(np.float32)

    def _echo(self, ctx, out):
        if (late := self._late(ctx, out)) is None:
            return None
        out, logp = late
        return replace(out, array=normalize_logits(logp, ctx.gossip.logit_range))

    def _dissensus(self, ctx, out):
        s = self._strength(1.0)
        if out.kind == "logits":
            if (late := self._late(ctx, out)) is None:
                return None
            out, consensus = late
            own = ctx.learner.logits(ctx.reference.x[ctx.reference.rows(out.ref_start, out.ref_count)])
            own = own - own.max(axis=1, keepdims=True)  # log-probabilities up to a row's constant
            z = own + s * (own - (consensus - consensus.max(axis=1, keepdims=True)))
            return replace(out, array=normalize_logits(z.astype(np.float32), ctx.gossip.logit_range))
        heard = self._neighbours(out)
        if heard is None:
            return out
        own = out.array.astype(np.float64)
        return replace(out, array=(own + s * (own - heard.mean(axis=0))).astype(np.float32))

    def _inflate(self, ctx, out):
        claim = self._strength(10_000.0)
        return replace(out, label_counts=np.full(ctx.learner.num_classes, int(claim), dtype=np.int64))

    def _sign_flip(self, ctx, out):
        return replace(out, array=-out.array)

    def _gaussian(self, ctx, out):
        noise = self._rng.normal(0.0, self._strength(1.0), size=out.array.shape)
        return replace(out, array=noise.astype(np.float32))

    def _huge(self, ctx, out):
        return replace(out, array=(out.array.astype(np.float64) * self._strength(1e36)).astype(np.float32))

    def _neighbours(self, out: Outgoing) -> np.ndarray | None:
        heard = [r.array for r in self._heard if r.kind == out.kind and r.array.shape == out.array.shape]
        return np.stack(heard).astype(np.float64) if heard else None

    def _alie(self, ctx, out):
        heard = self._neighbours(out)
        if heard is None:
            return out
        z = self._strength(1.0)
        return replace(out, array=(heard.mean(axis=0) + z * heard.std(axis=0)).astype(np.float32))

    def _ipm(self, ctx, out):
        heard = self._neighbours(out)
        if heard is None:
            return out
        return replace(out, array=(-self._strength(0.5) * heard.mean(axis=0)).astype(np.float32))
