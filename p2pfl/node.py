"""The node runtime: one trio loop per node, the same over the memory transport and over libp2p.

    async with Node(...) as node:      # owns its nursery: receiver, one sender per peer, bye on exit
        result = await node.run()

Each round: wait (bounded staleness, per neighbour: no global barrier) -> consensus -> train ->
share -> evaluate -> log. Everything a peer sends goes through `wire.PeerSession`; a violation is
counted by reason, logged and dropped, and the node keeps running. How frames relate to earlier
frames is `gossip.Outbox` / `gossip.Inbox`; what is shared and learned is the `Mode`'s. Sends go
through one task per peer with a latest-wins queue, so a slow or silent neighbour delays only
itself. Nodes are built by `assemble.make_node`.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import trio

from p2pfl import wire
from p2pfl.config import GossipConfig
from p2pfl.data.reference import Reference
from p2pfl.knowledge import Outgoing
from p2pfl.gossip import Inbox, Outbox, Share, resolve_codecs
from p2pfl.learner import Learner
from p2pfl.lifetime import Lifetime
from p2pfl.modes import Mode, NodeContext, Received, Teaching
from p2pfl.transport import PeerUnreachable, Transport

log = logging.getLogger(__name__)

BYE_TIMEOUT_S = 3.0  # all byes together; a stopping node must exit within seconds
# A frame more than this many rounds past the end of our own run is no honest peer's: a round of 2^63-1
# would otherwise stay a peer's "newest" knowledge forever and hide everything it says after it
MAX_ROUNDS_AHEAD = 1_000
MAX_QUEUED_REPLIES = wire.MAX_PENDING_STATUS  # status replies waiting for one peer's sender
MAX_PEERS = 64  # neighbours a node keeps (real nodes accept peers that dial in); status must fit a frame
MAX_REFUSERS = 1_024  # (peer, reason) pairs whose refusals are counted for logging; the oldest is forgotten
# a neighbour whose weight the reputation defence cut below this share is counted (rejected: distrusted)
DISTRUSTED = 0.5
TRUST_MEMORY = 0.7  # a neighbour's trust: this much of the old value, the rest this round's agreement
# A straggler: a neighbour whose rounds come at less than SLOWER x our own rate over its last RATE_WINDOW
# rounds. Only a straggler's wait is cut to our patience: a neighbour as fast as us but late this round
# (on a busy machine real rounds vary by half) is waited for as ever (cutting those waits cost 8 real
# nodes on an emulated LAN 0.11 global against the simulation: scripts/lan_emulation.py, BENCHMARKS.md)
SLOWER = 0.7
RATE_WINDOW = 4
QUIET = 3.0  # ... and so is one we have heard nothing from for this many of our rounds (it went down)
# Our connection to a neighbour quiet for QUIET of its rounds and ours, and at least this long, while we
# keep sending to it is renewed once: it may be dead with neither end told (a pulled cable)
RECONNECT_S = 5.0
# train.idle_steps are trained in chunks this long, so a neighbour's knowledge that arrives mid-chunk waits
# at most a chunk (a ninth of a default 90-step round) before our round goes on
IDLE_CHUNK = 10

Compute = Callable[..., Awaitable[Any]]  # await compute(fn, *args, steps=N) -> fn(*args)


def _rate(heard: deque) -> float | None:
    """Rounds per second over (round, time) pairs; None with fewer than three."""
    if len(heard) < 3 or heard[-1][1] <= heard[0][1]:
        return None
    return (heard[-1][0] - heard[0][0]) / (heard[-1][1] - heard[0][1])


async def thread_compute(fn: Callable[..., Any], *args: Any, steps: int = 0) -> Any:
    """Real nodes: the work runs in a worker thread so the loop keeps answering peers meanwhile."""
    return await trio.to_thread.run_sync(fn, *args)


# -- bookkeeping ------------------------------------------------------------------------------------

@dataclass
class Pending:
    """One encoded message waiting for a peer's sender task."""

    data: bytes
    kind: str  # wire.kind_of(msg): the transport may route message families differently
    share: float | None = None  # push-sum: the mass share it carries (reclaimed if it never goes out)
    stream: str = ""  # knowledge: its kind (logits | params), the unit of latest-wins


class SendQueue:
    """What waits to go to one peer: session messages (hello, status) in order and first, then
    knowledge, latest wins per kind (a newer frame replaces one its sender task has not taken yet),
    then our bye, which nothing follows."""

    def __init__(self) -> None:
        self.control: deque[Pending] = deque()
        self.knowledge: dict[str, Pending] = {}
        self.last: Pending | None = None
        self._ready = trio.Event()
        self._busy = False  # the sender holds an item get() gave it
        self._idle = trio.Event()  # set while nothing is queued or in hand
        self._idle.set()

    def put_control(self, item: Pending) -> Pending | None:
        """Queue a session message; returns one it displaced: a hello replaces a hello still waiting (a
        peer re-greeting in a loop cannot pile ours up), and past MAX_QUEUED_REPLIES status replies
        the oldest goes (a peer that asks and never reads cannot fill our memory)."""
        same = [c for c in self.control if c.kind == item.kind]
        old = same[0] if item.kind == "hello" and same or len(same) >= MAX_QUEUED_REPLIES else None
        if old is not None:
            self.control.remove(old)
        self.control.append(item)
        self._wake()
        return old

    def put_last(self, item: Pending) -> None:
        self.last = item
        self._wake()

    def put_knowledge(self, item: Pending) -> Pending | None:
        """Queue a knowledge frame; returns the frame of the same kind it replaced, if any."""
        old = self.knowledge.pop(item.stream, None)
        self.knowledge[item.stream] = item
        self._wake()
        return old

    def drop_knowledge(self) -> list[Pending]:
        dropped, self.knowledge = list(self.knowledge.values()), {}
        self._settle()
        return dropped

    def __bool__(self) -> bool:
        return bool(self.control or self.knowledge or self.last)

    async def get(self) -> Pending:
        while not self:
            self._ready = trio.Event()
            await self._ready.wait()
        self._busy = True
        if self.control:
            return self.control.popleft()
        if self.knowledge:
            return self.knowledge.pop(next(iter(self.knowledge)))
        item, self.last = self.last, None
        return item

    def done(self) -> None:
        """The sender finished with what get() gave it."""
        self._busy = False
        self._settle()

    def _settle(self) -> None:
        if not self and not self._busy:
            self._idle.set()

    async def drained(self) -> None:
        await self._idle.wait()

    def _wake(self) -> None:
        self._ready.set()
        if self._idle.is_set():
            self._idle = trio.Event()


@dataclass
class PeerState:
    session: wire.PeerSession
    weight: float  # mixing weight (Metropolis-Hastings from the topology)
    inbox: Inbox
    up: bool = True  # False after bye or a failed send, until it speaks again
    silent: bool = False  # it timed out while we waited: only knowledge (not a hello) counts it as up again
    lagging: bool = False  # a straggler that outlasted our patience: not waited for until it is within max_lag again
    heard: deque = field(default_factory=lambda: deque(maxlen=RATE_WINDOW))  # (round, time) of its newest rounds
    last_heard: float | None = None  # when its last valid message arrived (None: never)
    hello_sent: bool = False  # our hello is queued or sent (a failed send clears it)
    reconnected: bool = False  # we renewed our connection since it last spoke
    epoch: int = 0  # the session.epoch its inbox and hello_sent belong to
    trust: float | None = None  # how often its predictions agree with the others' (a running mean; None: unknown)
    reputation: float | None = None  # the reputation defence's factor on its weight (1: full; None: not judged)
    queue: SendQueue = field(default_factory=SendQueue)


@dataclass
class Counters:
    bytes_out: int = 0  # counted when queued; a frame whose send fails is taken back
    bytes_in: int = 0
    msgs_out: int = 0
    msgs_in: int = 0
    send_failures: int = 0
    superseded: int = 0  # knowledge frames replaced by a newer one before their peer's sender took them
    rejected: Counter = field(default_factory=Counter)
    behind: int = 0  # delta frames dropped because an earlier frame of theirs never arrived


@dataclass(frozen=True)
class EvalData:
    x: np.ndarray
    y: np.ndarray


class Node(Lifetime):
    def __init__(self, *, node_id: str, arch: str, mode: Mode, learner: Learner, transport: Transport,
                 neighbours: dict[str, float], reference: Reference | None, test: EvalData,
                 rounds: int, gossip: GossipConfig, compute: Compute, codec: str = "auto", params_codec: str = "",
                 on_record: Callable[[dict], None] = lambda record: None, eval_every: int = 1,
                 start_round: int = 0, incarnation: int | None = None, accept_new_peers: bool = False,
                 profile: str = "", status_extra: dict[str, Any] | None = None,
                 record_extra: dict[str, Any] | None = None, min_peers: int = 0,
                 start_timeout: float = 60.0, say: Callable[[str], None] | None = None, late: bool = False,
                 round_seconds: float | None = None):
        # start_round: rounds already completed (0 = fresh; a checkpoint restores more).
        # incarnation: new per process start, so neighbours notice a restart (random if None).
        # accept_new_peers: a peer not in `neighbours` that says a compatible hello becomes one, and
        # mixing weights turn uniform (real nodes: the transport decides who may connect at all).
        # min_peers: a fresh node waits before its first share (at most start_timeout seconds) until this
        # many neighbours have exchanged hellos, so a node started first does not train alone; `say` gets
        # the progress lines (real nodes print them; default: the log).
        # late: the node joins (or returns to) a running network: before its first round it waits, at most
        # wait_timeout, until half the neighbours it knows are there have shared, then catches up to them.
        # round_seconds: how long a round of ours took before a restart (patience is a share of it).
        self.node_id = node_id
        self.arch = arch
        self.profile = profile or arch  # the node profile's name, for metrics
        self.mode = mode
        self.learner = learner
        self.transport = transport
        self.reference = reference
        self.test = test
        self.rounds = rounds
        self.gossip = gossip
        self.compute = compute
        self.on_record = on_record
        self.eval_every = eval_every
        self.round = start_round
        self.status_extra = dict(status_extra or {})  # what the process adds to status (name, addresses)
        self.record_extra = dict(record_extra or {})  # what every record says besides (a simulated attacker's kind)
        self.min_peers = min_peers
        self.start_timeout = start_timeout
        self.late = late
        self._round_s = round_seconds  # our last round's duration, waiting apart (patience is a share of it)
        self._alone_said = False
        self._skipped = 0  # rounds jumped over to catch up since the last record
        self._owed = 0  # steps of the rounds a late start jumped over, still to be made up (train.make_up)
        self._teaching: Teaching | None = None  # what our last training learned from (train.idle_steps go on with it)
        self._idle = 0  # steps trained while waiting since the last record
        self._own_rounds: deque = deque(maxlen=RATE_WINDOW)  # (round, time) of our last records
        self._rounds_scope = trio.CancelScope()  # `leave` cancels the round loop, not the sessions (bye goes out)
        self.say = say or (lambda line: log.info("%s: %s", node_id, line))
        self.counters = Counters()
        self._refusals: Counter = Counter()  # (peer, reason) -> refusals, for logging
        self._stopping = False  # saying bye: nothing new is accepted
        self._weights_stale = False  # a neighbour joined: uniform weights are due at the next round
        self.outbox = Outbox(node_id, gossip, resolve_codecs(mode.kinds, codec, params_codec), learner.label_counts)
        self.hello = wire.Hello(
            node_id=node_id, version=wire.PROTOCOL_VERSION, arch=arch, mode=mode.name,
            num_classes=learner.num_classes, ref_digest=reference.digest if reference else "",
            codecs=self.outbox.offered_codecs(),
            param_count=learner.adapter.size if "params" in mode.kinds else 0,
            adapter_shape=learner.adapter.shape if "params" in mode.kinds else (),
            incarnation=secrets.randbits(62) | 1 << 61 if incarnation is None else incarnation,
        )
        self.accept_new_peers = accept_new_peers
        self._expect = wire.Expectations.for_hello(self.hello, ref_size=reference.size if reference else None)
        self.peers: dict[str, PeerState] = {p: self._peer_state(p, w) for p, w in neighbours.items()}
        self.ctx = NodeContext(learner, reference, 1.0 - sum(neighbours.values()), gossip, rounds)
        self.drift: float | None = None  # the mode's last Teaching.drift (adaptive bit width reads it)
        self._arrived = trio.Event()
        self._logged = (0, 0)  # counters.bytes_out/in at the last record
        self._nursery: trio.Nursery | None = None

    def _peer_state(self, peer_id: str, weight: float, up: bool = True) -> PeerState:
        # twice the slices of an honest rotation (delta streams and kept rows), and a few for params
        slices = -(-self.reference.size // self.reference.spec.slice_size) if self.reference else 0
        return PeerState(wire.PeerSession(self.hello, self._expect), weight,
                         Inbox(peer_id, self.learner.num_classes, max_streams=2 * slices + 8), up=up)

    # -- lifetime ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[Node]:
        """Receiver and senders live in a nursery entered with `async with`: whatever raises or is
        cancelled (greeting included), the nursery closes and nothing is orphaned."""
        reason = "stopping"
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive_loop)
            for peer_id, p in self.peers.items():
                nursery.start_soon(self._sender, peer_id, p)
                self._greet(p)
            try:
                yield self
                reason = "done"
            finally:
                # shielded so a cancelled node still says bye, bounded so a dead neighbour cannot hold it
                with trio.CancelScope(shield=True, deadline=trio.current_time() + BYE_TIMEOUT_S):
                    await self._say_bye(reason)
                nursery.cancel_scope.cancel()

    # -- the round loop ---------------------------------------------------------------------------
    def leave(self) -> None:
        """Stop the round loop now, wherever it is (a round's work in a worker thread is finished first);
        `run` returns what it recorded, and leaving `async with` says bye as always."""
        self._rounds_scope.cancel()

    async def run(self) -> list[dict]:
        """Train for the configured rounds (or until `leave`); returns this node's per-round records."""
        records: list[dict] = []
        with self._rounds_scope:
            await self._rounds(records)
        return records

    async def _rounds(self, records: list[dict]) -> None:
        if self.round == 0:  # round 0 is the label-only warm-up; its knowledge seeds round 1's teacher
            steps = self.learner.config.warmup_steps
            teaching = self.mode.warmup(self.ctx)
            await self.compute(self.mode.train, self.ctx, teaching, steps, steps=steps)
            self._teaching = teaching
            await self._wait_for_peers()  # a fresh node only: a resumed one goes on where it stopped
            if self.late and self.gossip.catch_up:
                await self._join_running()
            self._reweigh()
            await self._share(self.round)
        elif self.late and self.gossip.catch_up:
            await self._join_running()
        while self.round < self.rounds:
            waited = await self._wait_for_neighbours(self.round + 1)
            if self.gossip.catch_up:
                self._catch_up()
            r = self.round + 1
            began = trio.current_time()
            self._reweigh()
            inbox = self.usable_inbox(r)
            self._take_back_mass()
            teaching = await self.compute(self.mode.absorb, self.ctx, inbox, r)
            self.drift = teaching.drift
            for sender, agreed in teaching.agreement.items():
                if (p := self.peers.get(sender)) is not None:
                    p.trust = agreed if p.trust is None else TRUST_MEMORY * p.trust + (1 - TRUST_MEMORY) * agreed
            for sender, factor in teaching.weighed.items():
                if (p := self.peers.get(sender)) is not None:
                    p.reputation = factor
                if factor < DISTRUSTED:
                    self._reject(sender, "distrusted", f"round {r}: its knowledge contradicts ours (predictions "
                                                       f"against the classes they claim or our labels know, or "
                                                       f"parameters / prototypes pointing away from ours or far "
                                                       f"beyond our other neighbours'); its weight x {factor:.2f}")
            for sender, reason, why in teaching.refused:
                self._reject(sender, reason, f"round {r}: {why}")
            steps, made_up = self._steps()
            loss = await self.compute(self.mode.train, self.ctx, teaching, steps, steps=steps)
            self._teaching = teaching
            await self._share(r)
            alone = bool(self.mode.kinds) and not inbox and not any(p.up for p in self.peers.values())
            if alone and not self._alone_said:
                log.info("%s: round %d: no neighbour is up; training on its own labels until one is", self.node_id, r)
            self._alone_said = alone
            record = {
                "node": self.node_id, "arch": self.arch, "profile": self.profile, "round": r, "time": trio.current_time(),
                "train_loss": loss, "contributors": teaching.contributors,
                "inbox": dict(Counter(k.kind for k in inbox)),  # usable knowledge this round, by kind
                "staleness": float(np.mean(teaching.staleness)) if teaching.staleness else None,
                "waited": waited,
                # everything since the previous record, so hellos and the warm-up's knowledge count too
                "bytes_out": self.counters.bytes_out - self._logged[0], "bytes_in": self.counters.bytes_in - self._logged[1],
                "neighbours_up": sum(p.up for p in self.peers.values()),
                "lagging": sum(p.up and p.lagging for p in self.peers.values()),
                "alone": alone, "skipped": self._skipped, "made_up": made_up, "idle_steps": self._idle,
                "rejected": dict(self.counters.rejected), "delta_behind": self.counters.behind,
                "drift": self.drift,
                "trust": {pid: round(p.trust, 4) for pid, p in self.peers.items() if p.trust is not None},
                "reputation": {pid: round(p.reputation, 4) for pid, p in self.peers.items() if p.reputation is not None},
            } | self.record_extra
            if (spent := self.learner.epsilon_spent()) is not None:
                record["epsilon"] = spent
            if r % self.eval_every == 0 or r == self.rounds:
                ev = await self.compute(self.learner.evaluate, self.test.x, self.test.y)
                record |= {"global_acc": ev.global_acc, "personal_acc": ev.personal_acc, "test_loss": ev.loss}
            self._logged = (self.counters.bytes_out, self.counters.bytes_in)
            self._round_s = trio.current_time() - began
            self._own_rounds.append((r, trio.current_time()))
            self._skipped = self._idle = 0
            records.append(record)
            self.on_record(record)
            self.round = r

    @property
    def round_seconds(self) -> float | None:
        """Our last round's duration, waiting apart (None before the first); a restart passes it on."""
        return self._round_s

    def greeted(self) -> int:
        """Neighbours that have our hello and we theirs."""
        return sum(p.hello_sent and p.session.their_state is wire.State.READY for p in self.peers.values())

    async def _wait_for_peers(self) -> None:
        """Before the first round: until `min_peers` neighbours are greeted, or `start_timeout` passed."""
        if self.greeted() >= self.min_peers:
            return
        start = trio.current_time()
        deadline = start + self.start_timeout
        next_line = start
        while self.greeted() < self.min_peers:
            now = trio.current_time()
            if now >= deadline:
                self.say(f"gave up waiting for neighbours after {self.start_timeout:.0f}s with {self.greeted()} "
                         f"of {self.min_peers} greeted; training with whoever answers")
                return
            if now >= next_line:
                self.say(f"waiting for neighbours: {self.greeted()} of {self.min_peers} greeted "
                         f"({now - start:.0f}s of {self.start_timeout:.0f}s)")
                next_line = now + 5.0
                for p in self.peers.values():  # a hello that failed (peer not up yet, or refused us) again
                    if not p.hello_sent:
                        self._greet(p)
            with trio.move_on_at(min(deadline, next_line)):
                await self._arrived.wait()
        self.say(f"{self.greeted()} neighbour(s) greeted after {trio.current_time() - start:.1f}s; starting")

    async def _wait_for_neighbours(self, r: int) -> float:
        """Bounded staleness, per neighbour: proceed once every live neighbour has shared round
        >= r-1-max_lag. With gossip.patience > 0, a straggler (its rounds come at less than SLOWER x our
        rate) or one gone quiet (nothing from it for QUIET of our rounds: it went down) is waited for at
        most gossip.patience x our last round's duration, then lags (is not waited for) until its
        knowledge is within max_lag again; any other at most wait_timeout, then counts as down until it
        speaks. So a slow or vanished neighbour costs a bounded wait, not one per round. With
        train.idle_steps, the wait is spent training on (up to that many steps, in IDLE_CHUNKs) with
        what our last round learned from, instead of idle."""
        if not self.mode.kinds:
            return 0.0
        need = r - 1 - self.gossip.max_lag
        start = trio.current_time()
        deadline = start + self.gossip.wait_timeout
        cut_short = self._round_s is not None and self.gossip.patience > 0
        patience = start + self.gossip.patience * self._round_s if cut_short else math.inf
        idle = 0
        while True:
            behind = [p for p in self.peers.values() if p.up and not p.lagging and p.inbox.newest_round < need]
            now = trio.current_time()
            if behind and now >= patience:
                for p in behind:
                    p.lagging = self._cut_short(p, now)
                behind = [p for p in behind if not p.lagging]
            if not behind:
                break
            if now >= deadline:
                for p in behind:
                    p.up, p.silent = False, True
                log.info("%s: round %d: %d neighbour(s) silent for %.1fs, going on without them",
                         self.node_id, r, len(behind), self.gossip.wait_timeout)
                break
            if (chunk := min(IDLE_CHUNK, self.learner.config.idle_steps - idle)) > 0 and self._teaching is not None:
                await self.compute(self.mode.train, self.ctx, self._teaching, chunk, steps=chunk)
                idle += chunk
                continue  # what arrived meanwhile is in the peers' state
            with trio.move_on_at(min(deadline, patience) if patience > now else deadline):
                await self._arrived.wait()
        self._idle += idle
        return trio.current_time() - start

    def _cut_short(self, p: PeerState, now: float) -> bool:
        """Whether waiting for this neighbour ends at our patience: a straggler, or one gone quiet."""
        theirs, ours = _rate(p.heard), _rate(self._own_rounds)
        slow = theirs is not None and ours is not None and theirs < SLOWER * ours
        quiet = p.last_heard is not None and now - p.last_heard > QUIET * (self._round_s or math.inf)
        return slow or quiet

    def _gone_quiet(self, p: PeerState, now: float) -> bool:
        """Nothing from this neighbour for QUIET of its rounds and of ours, and RECONNECT_S at least
        (a slow neighbour's silence between its frames is not a dead link); never heard: not judged."""
        if p.last_heard is None:
            return False
        theirs = _rate(p.heard)
        round_s = max(self._round_s or 0.0, 1 / theirs if theirs else 0.0)
        return now - p.last_heard > max(RECONNECT_S, QUIET * round_s)

    def network_round(self) -> int | None:
        """Where the network is, as far as we can tell: the second newest of the rounds shared in their
        current sessions by the live neighbours we know are there (they greeted us or shared), the newest
        with one such neighbour, once at least half of those have shared; None before. Second: one liar
        claiming a late round cannot move it, and two neighbours ahead are enough to show that ours have
        moved on (a node whose neighbours stopped waiting for it sees those ahead of it, while a median
        would also count the others still behind with it, and a group behind together would stay behind)."""
        known = [p for p in self.peers.values()
                 if p.up and (p.inbox.newest_round >= 0 or p.session.their_state is wire.State.READY)]
        rounds = sorted((p.inbox.newest_round for p in known if p.inbox.newest_round >= 0), reverse=True)
        if not rounds or 2 * len(rounds) < len(known):
            return None
        return rounds[min(2, len(rounds)) - 1]

    async def _join_running(self) -> None:
        """A late node: wait until we know where the network is (at most wait_timeout: we may be the
        first one up), then catch up; the rounds jumped over are steps owed (train.make_up)."""
        with trio.move_on_after(self.gossip.wait_timeout):
            while self.network_round() is None:
                await self._arrived.wait()
        self._owed += self._catch_up() * self.learner.config.local_steps

    def _catch_up(self) -> int:
        """Jump to the network's round when it is more than max_lag + 1 rounds past ours (we were down,
        joined late or are slow; neighbours that wait for us are never that far ahead), keeping our
        model: we then speak about the slices our neighbours speak about. The next record counts the
        rounds skipped; returns how many."""
        there = self.network_round()
        if there is None or there - self.round <= self.gossip.max_lag + 1:
            return 0
        target = min(there, self.rounds - 1)
        log.info("%s: the network is at round %d: skipping %d round(s) to join it", self.node_id, there,
                 target - self.round)
        skipped = target - self.round
        self._skipped += skipped
        self.round = target
        return skipped

    def _steps(self) -> tuple[int, int]:
        """This round's training steps, and how many of them make up for rounds a late start jumped
        over: at most train.make_up x local_steps more a round until what is owed is paid. Only a late
        start owes: a slow node that skips rounds would only fall further behind with more work."""
        c = self.learner.config
        extra = min(self._owed, round(c.make_up * c.local_steps))
        self._owed -= extra
        return c.local_steps + extra, extra

    def usable_inbox(self, r: int) -> list[Received]:
        """Per neighbour, the newest knowledge within the staleness bound, as whole rows."""
        return [k for p in self.peers.values()
                for k in p.inbox.usable(r, self.gossip.staleness, p.weight, self.gossip.stale_decay)]

    def _take_back_mass(self) -> None:
        """Push-sum mass that could not be sent goes back to the mode, between its own steps."""
        mass = self.outbox.take_reclaimed()
        if mass:
            self.mode.reclaim(mass)

    async def _share(self, r: int) -> None:
        outgoing = await self.compute(self.mode.share, self.ctx, r)
        by_round: dict[int, list[Outgoing]] = {}  # one share per round the frames are about
        for out in outgoing:
            by_round.setdefault(r if out.round is None else out.round, []).append(out)
        for round_idx, frames in sorted(by_round.items()):
            self.share(self.outbox.share(frames, round_idx, trio.current_time(), self.drift))
        self._take_back_mass()

    def share(self, share: Share) -> None:
        """Queue a round's frames for every peer that has our hello and we theirs."""
        for peer_id, p in self.peers.items():
            if not p.hello_sent:  # unreachable when we greeted: try again (the transport backs off)
                self._greet(p)
            ready = (p.hello_sent and p.session.their_state is wire.State.READY
                     and p.session.our_state is wire.State.READY)
            frames = share.for_peer(p.session.common_codecs if ready else (), p.weight)
            if ready and any(msg is None for msg, _ in frames):
                log.warning("%s: %s decodes none of our codecs %s", self.node_id, peer_id, self.hello.codecs)
            for msg, mass in frames:
                if msg is None:
                    self.outbox.reclaim(mass)  # not sent: the share stays ours, so no mass is lost
                elif mass is None:
                    self._queue(p, msg)
                else:  # a share past the wire's limit (only liars' inflated masses get there) stays ours
                    sent = min(mass, wire.MAX_MASS)
                    self.outbox.reclaim(mass - sent)
                    self._queue(p, replace(msg, mass=sent), share=sent)

    # -- messaging --------------------------------------------------------------------------------
    def _queue(self, p: PeerState, msg: wire.Message, *, share: float | None = None) -> None:
        """Encode `msg` for this peer's session now (its state moves on) and queue it for the sender;
        nothing once we said bye (a peer may still greet or ask while our bye waits to go out)."""
        if p.session.our_state is wire.State.CLOSED:
            self.outbox.reclaim(share)
            return
        knowledge = isinstance(msg, wire.Knowledge)
        item = Pending(p.session.send(msg), wire.kind_of(msg), share, msg.kind if knowledge else "")
        self.counters.bytes_out += len(item.data)
        self.counters.msgs_out += 1
        if knowledge:
            replaced = p.queue.put_knowledge(item)
            if replaced is not None:
                self._unsent(replaced)
                self.counters.superseded += 1
        elif isinstance(msg, wire.Bye):  # after what is queued; nothing may follow it on the wire
            p.queue.put_last(item)
        elif (displaced := p.queue.put_control(item)) is not None:
            self._unsent(displaced)
            self.counters.superseded += 1

    def _unsent(self, item: Pending) -> None:
        self.counters.bytes_out -= len(item.data)
        self.counters.msgs_out -= 1
        self.outbox.reclaim(item.share)

    def _greet(self, p: PeerState) -> None:
        self._queue(p, self.hello)
        p.hello_sent = True

    async def _sender(self, peer_id: str, p: PeerState) -> None:
        """This peer's messages, one at a time: a slow send to it holds up no other peer."""
        while True:
            item = await p.queue.get()
            if not p.reconnected and self._gone_quiet(p, trio.current_time()):
                p.reconnected = await self.transport.reconnect(peer_id, p.last_heard)
            try:
                await self.transport.send(peer_id, item.data, item.kind)
            except PeerUnreachable as e:
                self.counters.send_failures += 1
                self._unsent(item)
                p.up = False
                if item.kind == "hello":
                    p.hello_sent = False
                log.debug("%s: send to %s failed: %s", self.node_id, peer_id, e)
            finally:
                p.queue.done()

    async def _say_bye(self, reason: str) -> None:
        self._stopping = True  # no new neighbours from here on
        for p in list(self.peers.values()):
            if p.session.our_state is not wire.State.CLOSED:
                self._queue(p, wire.Bye(self.node_id, reason))
        for p in list(self.peers.values()):
            await p.queue.drained()

    async def _receive_loop(self) -> None:
        while True:
            peer_id, data = await self.transport.receive()
            if isinstance(data, wire.RemoteProtocolError):  # the transport refused a stream (framing, policy)
                self._reject(peer_id, data.reason, str(data))
                continue
            self.counters.bytes_in += len(data)
            self.counters.msgs_in += 1
            p = self.peers.get(peer_id)
            if p is None:
                if not self.accept_new_peers or self._stopping:
                    self._reject(peer_id, "state", "not a neighbour of this node")
                    continue
                if len(self.peers) >= MAX_PEERS:
                    self._reject(peer_id, "refused", f"already {MAX_PEERS} neighbours")
                    continue
                # a stranger: it becomes a neighbour once its hello is accepted below, and counts as up
                # (is waited for) only once it shares knowledge: fresh identities cannot stall our rounds
                p = self._peer_state(peer_id, 0.0, up=False)
                p.silent = True
            try:
                msg = p.session.receive(data)
            except wire.RemoteProtocolError as e:
                self._reject(peer_id, e.reason, str(e))
                continue
            p.last_heard, p.reconnected = trio.current_time(), False
            if p.session.epoch != p.epoch:  # it came back after its bye, or restarted: a new session
                p.epoch = p.session.epoch
                p.hello_sent = False
                p.inbox.new_session()  # its delta streams start over with key frames
                p.heard.clear()  # and its rounds may start over: its rate is measured afresh
            if peer_id not in self.peers and isinstance(msg, wire.Hello):
                self._add_peer(peer_id, p)
            self._handle(peer_id, p, msg)

    def _handle(self, peer_id: str, p: PeerState, msg: wire.Message) -> None:
        if isinstance(msg, wire.Hello):
            # a hello revives a neighbour that left or failed, not one that went silent on us: a peer that
            # greets in a loop and never shares costs one wait_timeout, not one per hello
            p.up = p.up or not p.silent
            if not p.hello_sent or p.session.our_state is wire.State.NEW:
                self._greet(p)
            self._notify()  # someone waiting for neighbours to greet
        elif isinstance(msg, wire.Knowledge):
            if msg.round > max(self.round, self.rounds) + MAX_ROUNDS_AHEAD:
                self._reject(peer_id, "implausible", f"{msg.kind} knowledge of round {msg.round}, more than "
                                                     f"{MAX_ROUNDS_AHEAD} rounds past our run's end")
                return
            due = self.reference.slice_bounds(msg.round) if msg.kind == "logits" and self.reference else None
            if due is not None and (msg.ref_start, msg.ref_count) != due:
                # every honest node speaks about its round's slice (the rotation is the reference's): an old
                # slice under a new round is a replay, and a slice per frame a flood of retained streams
                self._reject(peer_id, "off-schedule", f"logits about rows {msg.ref_start}+{msg.ref_count} in round "
                                                      f"{msg.round}, whose slice is rows {due[0]}+{due[1]}")
                return
            try:
                taken = p.inbox.add(msg)
            except wire.RemoteProtocolError as e:
                self._reject(peer_id, e.reason, str(e))
                return
            if not taken:  # a difference to a frame we never got: wait for its next key frame
                self.counters.behind += 1
                log.debug("%s: %s's %s frame of round %d builds on round %d, which we lack", self.node_id,
                          peer_id, msg.kind, msg.round, msg.base)
                return
            if not p.heard or msg.round > p.heard[-1][0]:
                p.heard.append((msg.round, trio.current_time()))
            # a silent or lagging neighbour is up again once it shares what a round waits for: old rounds
            # (a peer replaying stale frames, a straggler) would have us wait for it every round
            if msg.round >= self.round - self.gossip.max_lag:
                p.up, p.silent, p.lagging = True, False, False
            elif not p.silent:
                p.up = True
            self._notify()
        elif isinstance(msg, wire.Bye):
            p.up = False
            for item in p.queue.drop_knowledge():  # it left: nothing queued for it is of use any more
                self._unsent(item)
            self._notify()  # someone waiting on this peer can stop waiting
        elif isinstance(msg, wire.StatusRequest) and peer_id in self.peers:  # strangers: the status protocol
            self._queue(p, wire.StatusReply(msg.nonce, self.status()))

    def _notify(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()

    def introduce(self, peer_id: str) -> bool:
        """A neighbour found after start (LAN discovery): greeted now, then one like any other. False
        when it is one already, is us, or we are full or stopping."""
        if peer_id in self.peers or peer_id == self.node_id or self._stopping or len(self.peers) >= MAX_PEERS:
            return False
        p = self._peer_state(peer_id, 0.0)
        self._add_peer(peer_id, p)
        self._greet(p)
        return True

    def _add_peer(self, peer_id: str, p: PeerState) -> None:
        """A new neighbour: every mixing weight, ours included, becomes 1 / (neighbours + 1), from the
        next round on (`_reweigh`): a share computed in a worker thread meanwhile keeps the weights it split
        its push-sum mass by."""
        self.peers[peer_id] = p
        self._nursery.start_soon(self._sender, peer_id, p)
        self._weights_stale = True
        log.info("%s: %s joined as a neighbour (%d now)", self.node_id, peer_id, len(self.peers))

    def _reweigh(self) -> None:
        """Uniform mixing weights over whoever is a neighbour now (between a round's steps, in the loop)."""
        if self._weights_stale:
            w = 1.0 / (len(self.peers) + 1)
            for q in self.peers.values():
                q.weight = w
            self.ctx.self_weight = w
            self._weights_stale = False

    def _reject(self, peer_id: str, reason: str, detail: str) -> None:
        """Count a refusal; log the 1st, 10th, 100th, ... of each peer and reason (a liar that repeats
        itself every round cannot flood the log; every refusal is counted)."""
        self.counters.rejected[reason] += 1
        n = self._refusals.pop((peer_id, reason), 0) + 1
        self._refusals[peer_id, reason] = n  # last: the dict forgets the least recent first
        while len(self._refusals) > MAX_REFUSERS:
            del self._refusals[next(iter(self._refusals))]
        if n == 10 ** round(math.log10(n)):
            log.warning("%s: rejected a message from %s (%s%s): %s", self.node_id, peer_id, reason,
                        "" if n == 1 else f", {n} times so far", detail)

    def status(self) -> dict:
        """What `p2pfl status` shows, over the status protocol and over a session alike."""
        return {
            "node": self.node_id, "arch": self.arch, "mode": self.mode.name, "round": self.round,
            "rounds": self.rounds, "bytes_out": self.counters.bytes_out, "bytes_in": self.counters.bytes_in,
            "rejected": dict(self.counters.rejected), "delta_behind": self.counters.behind,
            "send_failures": self.counters.send_failures, "superseded": self.counters.superseded,
            "neighbours": {pid: {"up": p.up, "lagging": p.lagging, "round": p.inbox.newest_round, "trust": p.trust,
                                 "reputation": p.reputation}
                           for pid, p in self.peers.items()},
        } | ({} if (spent := self.learner.epsilon_spent()) is None else {"epsilon": spent}) | self.status_extra
