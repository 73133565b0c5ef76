"""The node runtime: one trio loop per node, the same over the memory transport and over libp2p.

    async with Node(...) as node:      # owns its nursery: receiver task, clean bye on exit
        result = await node.run()

Each round: wait (bounded staleness, per neighbour: no global barrier) -> consensus -> train ->
share -> evaluate -> log. Everything a peer sends goes through `wire.PeerSession`; a violation is
counted by reason, logged and dropped, and the node keeps running.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import outcome
import trio
import trio.testing

from p2pfl import wire
from p2pfl.codecs import BIT_LADDER, CODECS, codec_bits, encode as encode_array, with_bits
from p2pfl.config import GossipConfig
from p2pfl.delta import DeltaEncoder, apply as apply_delta
from p2pfl.learner import Learner
from p2pfl.modes import Mode, NodeContext, Received, adaptive_bits, resolve_codecs
from p2pfl.transport import PeerUnreachable, Transport
from p2pfl.data.reference import Reference

log = logging.getLogger(__name__)

BYE_TIMEOUT_S = 3.0  # all byes together; a stopping node must exit within seconds

# -- how compute is run -----------------------------------------------------------------------------

class FrozenTimePool:
    """Worker threads for simulations that keep simulated time independent of real time.

    Work that a node starts at simulated instant t runs in a thread and its result is handed
    back at t + its modelled duration. Meanwhile the mock clock runs on, so nodes whose work
    overlaps in simulated time really compute side by side on the cores; the clock stops only
    while some node has reached its finishing instant before its thread has. A run is therefore
    the same for a seed however the threads are scheduled. (Stopping the clock for every busy
    thread, the first version, left one core idle: with jittered durations two nodes rarely
    start at the same instant.)
    """

    def __init__(self, clock: trio.testing.MockClock, workers: int):
        self.clock = clock
        self.limiter = trio.CapacityLimiter(workers)
        self._waiting = 0  # nodes at their finishing instant whose thread is still running

    async def run(self, fn: Callable[..., Any], *args: Any, duration: float) -> Any:
        done = trio.Event()
        result: list[outcome.Outcome] = []

        async def work() -> None:
            result.append(await outcome.acapture(trio.to_thread.run_sync, fn, *args, limiter=self.limiter))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(work)
            await trio.sleep(duration)
            if not done.is_set():
                self._waiting += 1
                self.clock.autojump_threshold = math.inf
                try:
                    await done.wait()
                finally:
                    self._waiting -= 1
                    if self._waiting == 0:
                        self.clock.autojump_threshold = 0
        return result[0].unwrap()


class SimulatedCompute:
    """Simulations: the work's result arrives after its modelled duration of simulated time.

    The modelled duration (seconds per step / speed, with per-call jitter) is what makes nodes
    drift apart as real ones do. Without a pool the work runs inline, then the node sleeps.
    """

    def __init__(self, seconds_per_step: float, *, jitter: float = 0.1, seed: int = 0,
                 pool: FrozenTimePool | None = None):
        self.seconds_per_step = seconds_per_step
        self.jitter = jitter
        self.pool = pool
        self._rng = random.Random(seed)

    async def __call__(self, fn: Callable[..., Any], *args: Any, steps: int = 0) -> Any:
        duration = steps * self.seconds_per_step * (1 + self._rng.uniform(-self.jitter, self.jitter))
        if self.pool:
            return await self.pool.run(fn, *args, duration=duration)
        out = fn(*args)
        await trio.sleep(duration)
        return out


async def thread_compute(fn: Callable[..., Any], *args: Any, steps: int = 0) -> Any:
    """Real nodes: the work runs in a worker thread so the loop keeps answering peers meanwhile."""
    return await trio.to_thread.run_sync(fn, *args)


Compute = Callable[..., Awaitable[Any]]


# -- bookkeeping ------------------------------------------------------------------------------------

@dataclass
class PeerState:
    session: wire.PeerSession
    weight: float  # mixing weight (Metropolis-Hastings from the topology)
    latest: dict[str, wire.Knowledge] = field(default_factory=dict)  # per kind, the newest by round
    # per stream (kind, ref_start, ref_count, row_mask): (round, value) of its latest frame, deltas applied
    values: dict[tuple[str, int, int, bytes], tuple[int, np.ndarray]] = field(default_factory=dict)
    up: bool = True  # False after bye or a failed send, until it speaks again
    hello_sent: bool = False
    epoch: int = 0  # the session.epoch its values and hello_sent belong to


@dataclass
class Counters:
    bytes_out: int = 0
    bytes_in: int = 0
    msgs_out: int = 0
    msgs_in: int = 0
    send_failures: int = 0
    rejected: Counter = field(default_factory=Counter)
    behind: int = 0  # delta frames dropped because an earlier frame of theirs never arrived


@dataclass(frozen=True)
class EvalData:
    x: np.ndarray
    y: np.ndarray


class Node:
    def __init__(self, *, node_id: str, arch: str, mode: Mode, learner: Learner, transport: Transport,
                 neighbours: dict[str, float], reference: Reference | None, test: EvalData,
                 rounds: int, gossip: GossipConfig, compute: Compute, codec: str = "auto", params_codec: str = "",
                 on_record: Callable[[dict], None] = lambda record: None, eval_every: int = 1,
                 start_round: int = 0, incarnation: int | None = None, accept_new_peers: bool = False,
                 profile: str = ""):
        # start_round: rounds already completed (0 = fresh; a checkpoint restores more).
        # incarnation: new per process start, so neighbours notice a restart (random if None).
        # accept_new_peers: a peer not in `neighbours` that says a compatible hello becomes one, and
        # mixing weights turn uniform (real nodes: the transport decides who may connect at all).
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
        self.codecs = resolve_codecs(mode.kinds, codec, params_codec)  # kind -> the codec we send it in
        self.on_record = on_record
        self.eval_every = eval_every
        self.round = start_round
        self.counters = Counters()
        self.hello = wire.Hello(
            node_id=node_id, version=wire.PROTOCOL_VERSION, arch=arch, mode=mode.name,
            num_classes=learner.num_classes, ref_digest=reference.digest if reference else "",
            # we decode any codec; the hello lists ours first, then the common ones a peer may fall back to
            codecs=tuple(dict.fromkeys((*self.codecs.values(), *self._fewer_bits(), *CODECS))),
            param_count=learner.adapter.size if "params" in mode.kinds else 0,
            adapter_shape=learner.adapter.shape if "params" in mode.kinds else (),
            incarnation=secrets.randbits(62) | 1 << 61 if incarnation is None else incarnation,
        )
        self.accept_new_peers = accept_new_peers
        self._expect = wire.Expectations.for_hello(self.hello, ref_size=reference.size if reference else None)
        self.peers: dict[str, PeerState] = {
            p: PeerState(wire.PeerSession(self.hello, self._expect), w) for p, w in neighbours.items()
        }
        self.ctx = NodeContext(learner, reference, 1.0 - sum(neighbours.values()), gossip, rounds)
        self._encoders: dict[tuple, DeltaEncoder] = {}  # gossip.delta: one stream per kind, slice, codec
        self._arrived = trio.Event()
        self._logged = (0, 0)  # counters.bytes_out/in at the last record
        self._nursery: trio.Nursery | None = None

    # -- lifetime ---------------------------------------------------------------------------------
    async def __aenter__(self) -> Node:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._receive_loop)
        await self._greet_all()
        return self

    async def __aexit__(self, *exc):
        # shielded so a cancelled node still says bye, bounded so a dead neighbour cannot hold it
        with trio.CancelScope(shield=True, deadline=trio.current_time() + BYE_TIMEOUT_S):
            await self._broadcast_bye("done" if exc[0] is None else "stopping")
        self._nursery.cancel_scope.cancel()
        return await self._nursery_cm.__aexit__(*exc)

    # -- the round loop ---------------------------------------------------------------------------
    async def run(self) -> list[dict]:
        """Train for the configured rounds; returns this node's per-round records."""
        records = []
        if self.round == 0:  # round 0 is the label-only warm-up; its knowledge seeds round 1's teacher
            steps = self.learner.config.warmup_steps
            teaching = self.mode.warmup(self.ctx)
            await self.compute(self.mode.train, self.ctx, teaching, steps, steps=steps)
            await self._share(0)
        while self.round < self.rounds:
            r = self.round + 1
            waited = await self._wait_for_neighbours(r)
            inbox = self._usable_inbox(r)
            teaching = await self.compute(self.mode.absorb, self.ctx, inbox, r)
            steps = self.learner.config.local_steps
            loss = await self.compute(self.mode.train, self.ctx, teaching, steps, steps=steps)
            await self._share(r)
            record = {
                "node": self.node_id, "arch": self.arch, "profile": self.profile, "round": r, "time": trio.current_time(),
                "train_loss": loss, "contributors": teaching.contributors,
                "inbox": dict(Counter(k.kind for k in inbox)),  # usable knowledge this round, by kind
                "staleness": float(np.mean(teaching.staleness)) if teaching.staleness else None,
                "waited": waited,
                # everything since the previous record, so hellos and the warm-up's knowledge count too
                "bytes_out": self.counters.bytes_out - self._logged[0], "bytes_in": self.counters.bytes_in - self._logged[1],
                "neighbours_up": sum(p.up for p in self.peers.values()),
                "rejected": dict(self.counters.rejected), "delta_behind": self.counters.behind,
                "drift": self.mode.drift,
            }
            if r % self.eval_every == 0 or r == self.rounds:
                ev = await self.compute(self.learner.evaluate, self.test.x, self.test.y)
                record |= {"global_acc": ev.global_acc, "personal_acc": ev.personal_acc, "test_loss": ev.loss}
            self._logged = (self.counters.bytes_out, self.counters.bytes_in)
            records.append(record)
            self.on_record(record)
            self.round = r
        return records

    async def _wait_for_neighbours(self, r: int) -> float:
        """Bounded staleness, per neighbour: proceed once every live neighbour has shared round
        >= r-1-max_lag, or after wait_timeout (then the silent ones count as down until they speak)."""
        if not self.mode.kinds:
            return 0.0
        need = r - 1 - self.gossip.max_lag
        start = trio.current_time()
        deadline = start + self.gossip.wait_timeout
        while True:
            behind = [p for p in self.peers.values() if p.up and newest_round(p) < need]
            if not behind:
                break
            if trio.current_time() >= deadline:
                for p in behind:
                    p.up = False
                log.info("%s: round %d: %d neighbour(s) silent for %.1fs, going on without them",
                         self.node_id, r, len(behind), self.gossip.wait_timeout)
                break
            with trio.move_on_at(deadline):
                await self._arrived.wait()
        return trio.current_time() - start

    def _usable_inbox(self, r: int) -> list[Received]:
        """Per neighbour, the newest knowledge within the staleness bound."""
        out = []
        for peer_id, p in self.peers.items():
            for k in p.latest.values():
                if r - 1 - k.round > self.gossip.staleness:
                    continue
                held = p.values.get(_stream(k))
                if k.base == -1:
                    value = k.array()
                elif held is not None and held[0] == k.round:
                    value = held[1]
                else:  # the held value is of another round (frames out of order): not this frame's
                    continue
                out.append(Received(peer_id, k.round, k.kind, value, k.ref_start, k.ref_count,
                                    self._label_counts(k), p.weight, k.mass, wire.row_indices(k), k.keeps))
        return out

    def _label_counts(self, k: wire.Knowledge) -> np.ndarray:
        """A peer that keeps its label mix private (label_counts = []) counts as uniform over classes."""
        if k.label_counts:
            return np.asarray(k.label_counts, dtype=np.int64)
        c = self.learner.num_classes
        return np.full(c, max(k.samples, c) // c, dtype=np.int64)

    async def _share(self, r: int) -> None:
        outgoing = await self.compute(self.mode.share, self.ctx, r)
        if not outgoing:
            return
        messages: dict[tuple[int, str], wire.Knowledge] = {}  # encoded once per codec, whoever needs it

        def knowledge(i: int, codec: str) -> wire.Knowledge:
            if (i, codec) not in messages:
                out = outgoing[i]
                mask = b"" if out.rows is None else wire.row_mask(out.rows, out.ref_count)
                if self.gossip.delta:  # one stream per kind, slice, row selection and codec
                    stream = (out.kind, out.ref_start, out.ref_count, mask, codec)
                    encoder = self._encoders.setdefault(stream, DeltaEncoder(codec, self.gossip.key_every))
                    payload, base = encoder.encode(out.array, r)
                else:
                    payload, base = encode_array(out.array, codec), -1
                messages[i, codec] = wire.Knowledge(
                    sender=self.node_id, round=r, time=trio.current_time(), kind=out.kind,
                    ref_start=out.ref_start, ref_count=out.ref_count, payload=payload,
                    label_counts=tuple(int(c) for c in self.learner.label_counts),
                    samples=int(self.learner.label_counts.sum()), val_acc=0.0, base=base, row_mask=mask,
                    keeps=out.keeps,
                )
            return messages[i, codec]

        for peer_id, p in list(self.peers.items()):
            if not p.hello_sent:  # unreachable when we greeted: try again (the transport backs off)
                p.hello_sent = await self._send(peer_id, p, self.hello)
            for i, out in enumerate(outgoing):
                # only to peers that have our hello and we theirs; checked before every send, since the
                # peer may say bye while we await the previous one
                ready = (p.hello_sent and p.session.their_state is wire.State.READY
                         and p.session.our_state is wire.State.READY)
                codec = self._codec_for(p, out.kind) if ready else None
                if ready and codec is None:
                    log.warning("%s: %s decodes none of our codecs %s", self.node_id, peer_id, self.hello.codecs)
                msg = knowledge(i, codec) if codec else None
                if out.mass is not None:  # push-sum: this neighbour's share of our mass
                    share = out.mass * p.weight
                    if msg is None or not await self._send(peer_id, p, replace(msg, mass=share)):
                        self.mode.reclaim(share)  # not sent: the share stays ours, so no mass is lost
                elif msg is not None:
                    await self._send(peer_id, p, msg)

    def _codec_for(self, p: PeerState, kind: str) -> str | None:
        """Ours for this kind (at this round's adaptive bit width) if the peer decodes it, else ours at full
        width, else the first common one (every node lists the plain codecs after its own, so fp32 is
        always there for a peer of this version)."""
        common = p.session.common_codecs
        ours = self.codecs[kind]
        bits = codec_bits(ours)
        if kind == "logits" and bits is not None:
            adapted = with_bits(ours, adaptive_bits(bits, self.mode.drift, self.gossip.adaptive_bits))
            if adapted in common:
                return adapted
        if ours in common:
            return ours
        return "fp32" if "fp32" in common else (common[0] if common else None)

    def _fewer_bits(self) -> list[str]:
        """Our logits codec at the narrower widths adaptive bit width may send (listed in every hello, so
        that two nodes with the same codec can adapt whatever their own settings)."""
        ours = self.codecs.get("logits", "")
        bits = codec_bits(ours) or 0
        return [with_bits(ours, b) for b in BIT_LADDER if b < bits]

    # -- messaging --------------------------------------------------------------------------------
    async def _send(self, peer_id: str, p: PeerState, msg: wire.Message) -> bool:
        data = p.session.send(msg)
        try:
            await self.transport.send(peer_id, data, wire.kind_of(msg))
        except PeerUnreachable as e:
            self.counters.send_failures += 1
            p.up = False
            log.debug("%s: send to %s failed: %s", self.node_id, peer_id, e)
            return False
        self.counters.bytes_out += len(data)
        self.counters.msgs_out += 1
        return True

    async def _greet_all(self) -> None:
        for peer_id, p in self.peers.items():
            p.hello_sent = await self._send(peer_id, p, self.hello)

    async def _broadcast_bye(self, reason: str) -> None:
        for peer_id, p in self.peers.items():
            if p.session.our_state is not wire.State.CLOSED:
                await self._send(peer_id, p, wire.Bye(self.node_id, reason))

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
                if not self.accept_new_peers:
                    self._reject(peer_id, "state", "not a neighbour of this node")
                    continue
                # a stranger: it becomes a neighbour only once its hello is accepted below
                p = PeerState(wire.PeerSession(self.hello, self._expect), 0.0, up=False)
            try:
                msg = p.session.receive(data)
            except wire.RemoteProtocolError as e:
                self._reject(peer_id, e.reason, str(e))
                continue
            if p.session.epoch != p.epoch:  # it came back after its bye, or restarted: a new session
                p.epoch = p.session.epoch
                p.hello_sent = False
                p.values.clear()  # its delta streams start over with key frames
            if peer_id not in self.peers and isinstance(msg, wire.Hello):
                self._add_peer(peer_id, p)
            await self._handle(peer_id, p, msg)

    async def _handle(self, peer_id: str, p: PeerState, msg: wire.Message) -> None:
        if isinstance(msg, wire.Hello):
            p.up = True
            if not p.hello_sent or p.session.our_state is wire.State.NEW:
                p.hello_sent = await self._send(peer_id, p, self.hello)
        elif isinstance(msg, wire.Knowledge):
            stream = _stream(msg)
            value = apply_delta(p.values.get(stream), msg.base, msg.array())
            if value is None:  # a difference to a frame we never got: wait for its next key frame
                self.counters.behind += 1
                log.debug("%s: %s's %s frame of round %d builds on round %d, which we lack", self.node_id,
                          peer_id, msg.kind, msg.round, msg.base)
                return
            p.values[stream] = (msg.round, value)
            if msg.kind not in p.latest or msg.round >= p.latest[msg.kind].round:
                p.latest[msg.kind] = msg
            p.up = True
            self._arrived.set()
            self._arrived = trio.Event()
        elif isinstance(msg, wire.Bye):
            p.up = False
            self._arrived.set()  # someone waiting on this peer can stop waiting
            self._arrived = trio.Event()
        elif isinstance(msg, wire.StatusRequest):
            await self._send(peer_id, p, wire.StatusReply(msg.nonce, self.status()))

    def _add_peer(self, peer_id: str, p: PeerState) -> None:
        """A new neighbour: every mixing weight, ours included, becomes 1 / (neighbours + 1)."""
        self.peers[peer_id] = p
        w = 1.0 / (len(self.peers) + 1)
        for q in self.peers.values():
            q.weight = w
        self.ctx.self_weight = w
        log.info("%s: %s joined as a neighbour (%d now)", self.node_id, peer_id, len(self.peers))

    def _reject(self, peer_id: str, reason: str, detail: str) -> None:
        self.counters.rejected[reason] += 1
        log.warning("%s: rejected a message from %s (%s): %s", self.node_id, peer_id, reason, detail)

    def status(self) -> dict:
        return {
            "node": self.node_id, "arch": self.arch, "mode": self.mode.name, "round": self.round,
            "rounds": self.rounds, "bytes_out": self.counters.bytes_out, "bytes_in": self.counters.bytes_in,
            "rejected": dict(self.counters.rejected), "delta_behind": self.counters.behind,
            "neighbours": {pid: {"up": p.up, "round": newest_round(p)} for pid, p in self.peers.items()},
        }


def _stream(k: wire.Knowledge) -> tuple[str, int, int, bytes]:
    """The frames a delta builds on: same kind, reference slice and row selection."""
    return k.kind, k.ref_start, k.ref_count, k.row_mask


def newest_round(p: PeerState) -> int:
    """The newest round a neighbour has shared, -1 before its first knowledge."""
    return max((k.round for k in p.latest.values()), default=-1)
