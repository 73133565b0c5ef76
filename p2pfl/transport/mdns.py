"""LAN discovery (`p2pfl node --discover mdns`): peers on one segment find each other by mDNS, and each
node keeps `degree` of them as neighbours, the same ones every node would pick.

py-libp2p's MDNSDiscovery (zeroconf) announces our addresses and reports peers it hears, from its own
thread; we collect them under a lock and choose in the trio loop. The choice is a ring lattice over
peer ids: sort every id we know (ours included) into a ring and take the nearest ones, alternating
after and before us. Every node that knows the same peers draws the same ring, and a ring is
connected for any degree >= 2, so the graph is too (plus the peers that chose us: a neighbour that
dials us is accepted like any other). We choose once discovery has been quiet for `settle` seconds,
then add a newcomer only while we hold fewer than `degree`. A discovered peer goes through everything
a dialled one does: the allowlist (when given, only its peers are chosen), the PSK (a private network
also announces under its own service name, so other networks' nodes are not even heard) and the hello.
Multicast goes out on every interface of the machine (or of the namespace) the node runs in; tests and
scripts/lan_emulation.py run it only inside network namespaces they create.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable

import trio

from p2pfl.transport.libp2p import SELF_ADDRESSES

log = logging.getLogger(__name__)

DEFAULT_DEGREE = 4  # a ring lattice of degree 4 stays connected with any one node down
SETTLE_S = 3.0
# Two nodes dialling each other at once can both fail py-libp2p's security handshake: of two nodes that
# chose each other, the one with the smaller id dials; the other dials only if it has not been dialled
# after this long (the peer may not have chosen it)
DIAL_GRACE_S = 5.0


def ring_neighbours(me: str, known: set[str], degree: int) -> list[str]:
    """The `degree` ids nearest to `me` on the ring of sorted ids (`me` and `known`): after, before, two
    after, two before, ... (fewer when fewer are known)."""
    ring = sorted(known | {me})
    at, n = ring.index(me), len(ring)
    out: list[str] = []
    for step in range(1, n):
        for side in (at + step, at - step):
            peer = ring[side % n]
            if peer != me and peer not in out:
                out.append(peer)
            if len(out) == min(degree, n - 1):
                return out
    return out


def announced(listening) -> list[str]:
    """What we announce: our listen addresses, one listening on every interface (0.0.0.0) spelled out as
    each of this machine's (or namespace's) non-loopback IPv4 addresses (a peer cannot dial 0.0.0.0)."""
    import ifaddr  # zeroconf's own dependency

    ips = [ip.ip for a in ifaddr.get_adapters() for ip in a.ips
           if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
    out = []
    for addr in map(str, listening):
        addr = addr.rsplit("/p2p/", 1)[0]
        out += [addr.replace("/ip4/0.0.0.0/", f"/ip4/{ip}/") for ip in ips] if "/ip4/0.0.0.0/" in addr else [addr]
    return out


class MdnsNeighbours:
    """Runs discovery for one node (`run`, a task), introducing chosen peers through `introduce`."""

    def __init__(self, transport, *, degree: int, introduce: Callable[[str], bool],
                 allow: frozenset[str] = frozenset(), psk: str | None = None, settle: float = SETTLE_S,
                 say: Callable[[str], None] = lambda line: None):
        self.transport = transport
        self.degree = degree
        self.introduce = introduce
        self.allow = allow
        self.psk = psk
        self.settle = settle
        self.say = say
        self.chosen: list[str] = []
        self._later: dict[str, float] = {}  # chosen peers we let dial us first -> when we dial them anyway
        self._found: dict[str, list] = {}  # peer id -> multiaddrs, written by zeroconf's thread
        self._lock = threading.Lock()
        self._last_found = 0.0

    def _on_peer(self, info) -> None:  # zeroconf's thread
        peer = info.peer_id.to_base58()
        if peer == self.transport.local_id or (self.allow and peer not in self.allow):
            return
        # loopback and unspecified addresses are ours to us (dialled, they reach this very node)
        addrs = [a for a in info.addrs if not str(a).startswith(SELF_ADDRESSES)]
        if not addrs:
            return
        self.transport.admit(peer)  # at once (a set's add is atomic): it may dial us before we choose
        with self._lock:
            self._found.setdefault(peer, addrs)

    async def run(self) -> None:
        from libp2p.discovery.events.peerDiscovery import peerDiscovery
        from libp2p.discovery.mdns.mdns import create_mdns_discovery

        host = self.transport.host
        fingerprint = hashlib.sha256(self.psk.encode()).hexdigest()[:16] if self.psk else None
        addrs = announced(host.get_transport_addrs())
        port = int(addrs[0].split("/tcp/")[1].split("/")[0]) if addrs else 0
        discovery = create_mdns_discovery(host.get_network(), port=port, listen_addrs=addrs,
                                          private_network_fingerprint=fingerprint)
        peerDiscovery.register_peer_discovered_handler(self._on_peer)
        discovery.start()
        try:
            seen = 0
            while True:
                await trio.sleep(0.5)
                with self._lock:
                    found = dict(self._found)
                if len(found) != seen:
                    seen, self._last_found = len(found), trio.current_time()
                if found and trio.current_time() - self._last_found >= self.settle:
                    self._choose(found)
                for peer, when in list(self._later.items()):
                    if trio.current_time() >= when:
                        del self._later[peer]
                        self.introduce(peer)  # False if it dialled us meanwhile: a neighbour already
        finally:
            peerDiscovery.unregister_peer_discovered_handler(self._on_peer)
            discovery.stop()  # in the loop's thread: it cancels a trio scope (zeroconf's close blocks briefly)

    def _choose(self, found: dict[str, list]) -> None:
        want = [p for p in ring_neighbours(self.transport.local_id, set(found), self.degree)
                if p not in self.chosen][: max(0, self.degree - len(self.chosen))]
        for peer in want:
            self.transport.add_peer(peer, found[peer])
            self.chosen.append(peer)
            if peer > self.transport.local_id:
                self.introduce(peer)
            else:
                self._later[peer] = trio.current_time() + DIAL_GRACE_S
            self.say(f"discovered {peer} by mDNS: a neighbour ({len(self.chosen)} of {self.degree})")
