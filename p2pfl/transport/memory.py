"""An in-process network for simulations: per-link latency, bandwidth and loss, cuts and churn, byte counts.

Everything is real bytes (messages are encoded by the sender and decoded by the receiver exactly
as over libp2p) and all delays are trio sleeps, so under `trio.testing.MockClock` a long
simulated run costs only its compute.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from p2pfl.lifetime import Lifetime
from p2pfl.transport import PeerUnreachable


@dataclass(frozen=True)
class LinkModel:
    latency: float = 0.02  # seconds
    jitter: float = 0.005  # uniform +- seconds
    loss: float = 0.0  # drop probability per message
    bandwidth: float = 0.0  # bytes per second; 0 = unlimited


class MemoryNetwork(Lifetime):
    """Owns the delivery tasks; `async with MemoryNetwork(...) as net:` then `net.endpoint(name)`."""

    def __init__(self, link: LinkModel = LinkModel(), *, seed: int = 0):
        self.link = link
        self._seed = seed
        self._rngs: dict[tuple[str, str], random.Random] = {}
        self._inboxes: dict[str, trio.MemorySendChannel] = {}
        self._down: set[str] = set()
        self._left: set[str] = set()  # down after closing cleanly: what they sent before still arrives
        self._cut: set[frozenset[str]] = set()
        self._links: dict[tuple[str, str], LinkModel] = {}  # links whose model an event changed
        self._busy_until: dict[tuple[str, str], float] = defaultdict(float)
        self._last_arrival: dict[tuple[str, str], float] = defaultdict(float)
        self.bytes_sent: dict[tuple[str, str], int] = defaultdict(int)
        self.dropped = 0
        self._nursery: trio.Nursery | None = None

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[MemoryNetwork]:
        """The delivery tasks live in a nursery entered with `async with`, whatever raises."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()  # undelivered messages die with the network

    def endpoint(self, name: str) -> MemoryEndpoint:
        if name in self._inboxes:
            raise ValueError(f"endpoint {name!r} already exists")
        send, receive = trio.open_memory_channel(math.inf)
        self._inboxes[name] = send
        return MemoryEndpoint(self, name, receive)

    # -- faults, driven by scenario events ------------------------------------------------------
    def set_down(self, name: str, down: bool = True, *, clean: bool = False) -> None:
        """down: nothing more reaches or leaves `name`, and what is in flight to or from it is lost (a crash);
        clean: what it sent before is still delivered (a process that closed its connections)."""
        (self._down.add if down else self._down.discard)(name)
        (self._left.add if down and clean else self._left.discard)(name)

    def cut(self, a: str, b: str, cut: bool = True) -> None:
        (self._cut.add if cut else self._cut.discard)(frozenset((a, b)))

    def heal(self) -> None:
        """Every cut link carries messages again."""
        self._cut.clear()

    def link_model(self, src: str, dst: str) -> LinkModel:
        return self._links.get((src, dst), self.link)

    def set_link(self, a: str, b: str, model: LinkModel) -> None:
        """Both directions of the link a-b from now on (messages in flight keep their arrival time)."""
        self._links[(a, b)] = self._links[(b, a)] = model

    def reachable(self, a: str, b: str) -> bool:
        return a not in self._down and self._carries(a, b)

    def _carries(self, src: str, dst: str) -> bool:
        """The link delivers to dst whatever src sent before it went down."""
        return dst not in self._down and frozenset((src, dst)) not in self._cut

    # -- delivery -------------------------------------------------------------------------------
    def _send(self, src: str, dst: str, data: bytes) -> None:
        if dst not in self._inboxes:
            raise PeerUnreachable(f"no peer named {dst!r} on this network")
        if not self.reachable(src, dst):
            raise PeerUnreachable(f"{dst} is unreachable from {src}")
        self.bytes_sent[(src, dst)] += len(data)
        rng = self._link_rng(src, dst)
        link = self.link_model(src, dst)
        if rng.random() < link.loss:
            self.dropped += 1
            return
        now = trio.current_time()
        start = max(now, self._busy_until[(src, dst)])
        done = start + (len(data) / link.bandwidth if link.bandwidth > 0 else 0.0)
        self._busy_until[(src, dst)] = done  # one message at a time per link, like a stream
        arrival = done + max(0.0, link.latency + rng.uniform(-link.jitter, link.jitter))
        # FIFO per link, as on a stream: jitter may delay a message but never lets a later one
        # (a bye, say) overtake it
        arrival = max(arrival, self._last_arrival[(src, dst)] + 1e-6)  # strictly later: equal wake-ups may swap
        self._last_arrival[(src, dst)] = arrival
        self._nursery.start_soon(self._deliver, src, dst, data, arrival - now)

    def _link_rng(self, src: str, dst: str) -> random.Random:
        # One stream of randomness per link, so the draws a link gets do not depend on the order
        # in which nodes that finished computing at the same simulated instant happen to send.
        key = (src, dst)
        if key not in self._rngs:
            self._rngs[key] = random.Random(f"{self._seed}/{src}/{dst}")
        return self._rngs[key]

    async def _deliver(self, src: str, dst: str, data: bytes, delay: float) -> None:
        await trio.sleep(delay)
        # a cut or crash while in flight loses the message; a clean close does not
        if (src not in self._down or src in self._left) and self._carries(src, dst):
            self._inboxes[dst].send_nowait((src, data))
        else:
            self.dropped += 1


class MemoryEndpoint:
    """One node's view of a MemoryNetwork; implements transport.Transport."""

    def __init__(self, network: MemoryNetwork, name: str, inbox: trio.MemoryReceiveChannel):
        self.local_id = name
        self._network = network
        self._inbox = inbox

    async def send(self, peer: str, data: bytes, kind: str = "knowledge") -> None:
        self._network._send(self.local_id, peer, data)
        await trio.lowlevel.checkpoint()

    async def reconnect(self, peer: str, silent_since: float) -> bool:
        """Nothing to renew: the memory network keeps no connections (a cut drops frames while it lasts)."""
        await trio.lowlevel.checkpoint()
        return False

    async def receive(self) -> tuple[str, bytes]:
        return await self._inbox.receive()

    def drain(self) -> int:
        """Drop what arrived for a process that is gone (a restarted node starts with an empty socket)."""
        dropped = 0
        while True:
            try:
                self._inbox.receive_nowait()
            except trio.WouldBlock:
                return dropped
            dropped += 1
