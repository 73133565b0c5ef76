"""Real nodes: the Transport interface over py-libp2p (TCP + Noise + yamux), with a persistent identity.

    async with Libp2pTransport.open(key_pair=..., listen=..., peers=[...], policy=...) as t:
        await t.send(peer_id, data, kind)      # what Node calls
        peer_id, data = await t.receive()

One protocol id per message family, each a stream of length-prefixed msgpack frames
(`wire.frame` / `wire.FrameDecoder`: the framing rules live in wire/framing.py and are tested without a
network). Outbound, one long-lived stream per (peer, family), reopened after a failure; dialing
a peer that is down backs off exponentially with jitter, so a dead neighbour costs one failed
dial now and then. Inbound, a peer must be admitted by the Policy or its streams are reset; a
stream whose framing breaks (oversized length prefix, truncated frame) or that floods is reset
alone; each refusal reaches the node through `receive()` to be counted by reason. The status
protocol is answered here, from the node's `status()`, so `p2pfl status` needs no session.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from p2pfl import wire
from p2pfl.files import atomic_write_bytes
from p2pfl.transport import PeerUnreachable

log = logging.getLogger(__name__)

PROTOCOLS: dict[str, TProtocol] = {
    "hello": TProtocol("/p2pfl/hello/1.0.0"),  # session control: the hello, acknowledged
    "knowledge": TProtocol("/p2pfl/knowledge/1.0.0"),  # knowledge, then bye (and status between neighbours)
    "status": TProtocol("/p2pfl/status/1.0.0"),  # one request, one reply, answered by the transport
}
# A bye travels behind the knowledge it follows, on the same stream: on the hello stream it could overtake
# a node's last (larger) knowledge frame and have it refused as knowledge after bye
FAMILY_OF_KIND = {"hello": "hello", "bye": "knowledge", "knowledge": "knowledge",
                  "status_request": "knowledge", "status_reply": "knowledge"}
# The receiver writes ACK once a hello-family frame is in its node's inbox; the sender waits for it,
# so a hello is always ahead of the knowledge that follows on the other stream.
ACK = b"\x06"
READ_CHUNK = 1 << 20
STATUS_REQUEST_MAX = 256  # a status request frame is ~20 bytes
MAX_STREAMS_PER_PEER = 8  # inbound streams open at once per peer (a node opens 2)
FLOOD_WINDOW_S = 10.0
FLOOD_FRAMES = 200  # inbound frames per peer per window: a node sends ~2 per round
# loopback and unspecified addresses: a peer listening on 0.0.0.0 announces 127.0.0.1 too, and dialled
# from anywhere else that address reaches the dialler itself (whose handshake then fails: wrong peer id)
SELF_ADDRESSES = ("/ip4/127.", "/ip4/0.0.0.0/", "/ip6/::1/", "/ip6/::/")
CLOSE_S = 2.0  # closing a connection says goodbye on it; on a dead link that write may never finish


# -- identity and private network ------------------------------------------------------------------

def load_identity(state_dir: Path) -> KeyPair:
    """The node's Ed25519 key from `state_dir/identity.key`, created (mode 0600) on first use."""
    path = Path(state_dir) / "identity.key"
    if path.exists():
        raw = path.read_bytes()
        if len(raw) != 32:
            raise ValueError(f"{path} holds {len(raw)} bytes, not a 32-byte Ed25519 key; "
                             f"move it away to start this node with a new identity")
        key = Ed25519PrivateKey.from_bytes(raw)
        return KeyPair(key, key.get_public_key())
    pair = create_new_key_pair()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, pair.private_key.to_bytes(), mode=0o600)
    return pair


def peer_id_of(pair: KeyPair) -> str:
    return ID.from_pubkey(pair.public_key).to_base58()


def new_psk() -> str:
    """A fresh pre-shared key in go-libp2p's swarm.key format (what `p2pfl psk` writes)."""
    return f"/key/swarm/psk/1.0.0/\n/base16/\n{secrets.token_hex(32)}\n"


def read_psk(path: Path) -> str:
    """64 hex characters from a key file: bare, or go-libp2p's swarm.key format."""
    lines = [line.strip() for line in _read(path, "--psk-file").splitlines() if line.strip()]
    if lines[:2] == ["/key/swarm/psk/1.0.0/", "/base16/"]:
        lines = lines[2:]
    key = lines[0] if len(lines) == 1 else ""
    if len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key):
        raise ValueError(f"{path} is not a pre-shared key: expected 64 hex characters (32 bytes), "
                         f"optionally after the swarm.key header; create one with `p2pfl psk --out {path}`")
    return key.lower()


def read_allowlist(path: Path) -> frozenset[str]:
    """Peer ids, one per line; blank lines and # comments ignored."""
    ids = set()
    for n, line in enumerate(_read(path, "--allow").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            ids.add(ID.from_base58(line).to_base58())
        except Exception:
            raise ValueError(f"{path}:{n}: {line[:60]!r} is not a libp2p peer id (like 12D3KooW...)") from None
    return frozenset(ids)


def _read(path: Path, flag: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{flag} {path}: cannot read it ({e.strerror if isinstance(e, OSError) else e})") from None


@dataclass(frozen=True)
class Policy:
    """Who may open session streams to us: the neighbours we were given, the allowlist, or anyone."""

    allow: frozenset[str] = frozenset()
    accept_any: bool = False

    def admits(self, peer: str, neighbours: set[str]) -> bool:
        return self.accept_any or peer in neighbours or peer in self.allow


PEER_ADDR_FORM = "/ip4/127.0.0.1/tcp/4001/p2p/<peer id>"


def parse_peer(addr: str | multiaddr.Multiaddr, what: str = "--peers") -> tuple[str, multiaddr.Multiaddr]:
    """(peer id, dialable multiaddr) from a full address; a ValueError of one line, in plain words, for anything else."""
    text = str(addr).strip()
    hint = (f"expected {PEER_ADDR_FORM}: copy a whole address from the line the node prints at start, "
            f"'listening on /ip4/.../p2p/12D3KooW...'")
    try:
        ma = multiaddr.Multiaddr(text)
        info = info_from_p2p_addr(ma)
    except ValueError:  # multiaddr's parse errors and libp2p's InvalidAddrError both derive from it
        _, sep, tail = text.rpartition("/p2p/")
        if not sep:
            raise ValueError(f"{what} {text!r} has no /p2p/<peer id>; {hint}") from None
        raise ValueError(f"{what} {text!r}: {tail.split('/')[0]!r} is not a peer id (like 12D3KooW...); {hint}") from None
    if not any(str(a) for a in info.addrs):  # "/p2p/<id>" alone parses, with one empty address
        raise ValueError(f"{what} {text!r} has a peer id but no address to dial; {hint}")
    return info.peer_id.to_base58(), ma


# -- the transport ---------------------------------------------------------------------------------

class Libp2pTransport:
    def __init__(self, host, peers: dict[str, multiaddr.Multiaddr], policy: Policy, *,
                 status: Callable[[], dict] = dict, dial_timeout: float = 10.0, send_timeout: float = 60.0,
                 backoff: tuple[float, float] = (1.0, 10.0), flood_frames: int = FLOOD_FRAMES):
        self.host = host
        self.local_id = host.get_id().to_base58()
        self.policy = policy
        self.status = status
        self.dial_timeout = dial_timeout
        self.send_timeout = send_timeout
        self.backoff = backoff
        self.flood_frames = flood_frames
        self._addrs = dict(peers)  # peer id -> dialable address (from --peers)
        self._known: set[str] = set(peers)  # neighbours: given, or admitted when they dialed in
        self._discovered: set[str] = set()  # peers LAN discovery heard (and the allowlist, if any, admits)
        self._inbox_send, self._inbox = trio.open_memory_channel(256)  # bounded: a slow node slows senders
        self._out: dict[tuple[str, str], object] = {}
        self._locks: defaultdict[tuple[str, str], trio.Lock] = defaultdict(trio.Lock)
        self._retry: dict[str, tuple[float, float]] = {}  # peer -> (next dial allowed at, last delay)
        self._inbound: Counter[str] = Counter()
        self._recent: defaultdict[str, deque[float]] = defaultdict(deque)
        self._last_bytes: dict[str, float] = {}  # peer -> when bytes of any frame (whole or not) last came
        self.bytes_sent = 0
        for family, protocol in PROTOCOLS.items():
            host.set_stream_handler(protocol, self._handler(family))

    @classmethod
    @asynccontextmanager
    async def open(cls, *, key_pair: KeyPair, listen: str | multiaddr.Multiaddr,
                   peers: Sequence[str | multiaddr.Multiaddr] = (), policy: Policy = Policy(),
                   psk: str | None = None, **kw) -> AsyncIterator[Libp2pTransport]:
        addrs = {}
        for a in peers:
            peer_id, ma = parse_peer(a)
            addrs[peer_id] = ma
        host = make_host(key_pair, psk)
        transport = cls(host, addrs, policy, **kw)
        async with host.run([multiaddr.Multiaddr(str(listen))]):
            try:
                yield transport
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    for stream in list(transport._out.values()):
                        await _quiet(stream.close())

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs, ending in /p2p/<peer id>, that others can pass to --peers."""
        return [str(a) for a in self.host.get_addrs()]

    @property
    def neighbours(self) -> list[str]:
        return sorted(self._known)

    def admit(self, peer: str) -> None:
        """A peer LAN discovery heard on our segment: it may dial us (it may have chosen us), as a neighbour may."""
        self._discovered.add(peer)

    def add_peer(self, peer: str, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        """A neighbour found after start (LAN discovery): dialled at these addresses, admitted like --peers."""
        if addrs:
            self._addrs[peer] = addrs[0]
        self._known.add(peer)

    # -- sending ------------------------------------------------------------------------------
    async def send(self, peer: str, data: bytes, kind: str = "knowledge") -> None:
        family = FAMILY_OF_KIND.get(kind, "knowledge")
        async with self._locks[peer, family]:  # one writer per stream: frames never interleave
            stream = self._out.get((peer, family)) or await self._open(peer, family)
            try:
                with trio.fail_after(self.send_timeout):
                    await stream.write(wire.frame(data))
                    if family == "hello" and await stream.read(1) != ACK:
                        raise ConnectionError("no acknowledgement of the hello-family frame")
            except Exception as e:  # StreamReset, closed connection, timeout: the peer is gone for now
                self._out.pop((peer, family), None)
                await _quiet(stream.reset())
                raise PeerUnreachable(f"{peer}: {type(e).__name__}: {e}") from None
            self.bytes_sent += len(data) + 4

    async def _open(self, peer: str, family: str):
        pid = ID.from_base58(peer)
        if not self.host.get_network().get_connections(pid):
            now = trio.current_time()
            next_try, delay = self._retry.get(peer, (0.0, 0.0))
            if now < next_try:
                raise PeerUnreachable(f"{peer}: not connected; next dial in {next_try - now:.1f}s")
            # our backoff decides when to dial again: libp2p's own cache of failed peers would refuse
            # every dial for 60 s after one failure, long after a pulled cable is back
            self.host.get_network().unblock_peer(pid)
            addrs = self._dial_addrs(pid)
            self.host.get_peerstore().clear_addrs(pid)  # libp2p dials every address it holds, not just ours
            try:
                with trio.fail_after(self.dial_timeout):
                    await self.host.connect(PeerInfo(pid, addrs))
            except Exception as e:
                delay = min(self.backoff[1], max(self.backoff[0], 2 * delay))
                # counted from the failure, with jitter so restarted neighbours don't all dial at once
                self._retry[peer] = (trio.current_time() + delay * random.uniform(0.5, 1.5), delay)
                raise PeerUnreachable(f"{peer}: dial failed ({_why(e)}); "
                                      f"retrying in about {delay:.0f}s") from None
        self._retry.pop(peer, None)
        try:
            with trio.fail_after(self.dial_timeout):
                stream = await self.host.new_stream(pid, [PROTOCOLS[family]])
        except Exception as e:
            raise PeerUnreachable(f"{peer}: cannot open {PROTOCOLS[family]}: {type(e).__name__}: {e}") from None
        self._out[peer, family] = stream
        return stream

    async def reconnect(self, peer: str, silent_since: float) -> bool:
        """Close our connection to this peer and let the next send dial at once, backoff or not: a
        pulled cable leaves both ends holding a connection that looks alive, whose TCP retransmissions
        back off (once, on the emulated LAN, 14 s to be heard again after a 45 s cut; BENCHMARKS.md).
        Not while a frame of its is still coming in (a large one on a slow link)."""
        if self._last_bytes.get(peer, -math.inf) > silent_since:
            return False
        pid = ID.from_base58(peer)
        for family in PROTOCOLS:
            self._out.pop((peer, family), None)  # its streams die with the connection
        self._retry.pop(peer, None)
        network = self.host.get_network()
        with trio.move_on_after(CLOSE_S):
            await network.close_peer(pid)
        network.connections.pop(pid, None)  # closing timed out on the dead link: forget it all the same
        log.info("%s: reconnecting to %s (quiet while we kept sending)", self.local_id, peer)
        return True

    def _dial_addrs(self, pid: ID) -> list[multiaddr.Multiaddr]:
        """Where to dial a peer: the address we were given, else what identify learned of it, less the
        addresses that would reach ourselves (unless that is all there is: a peer on this machine)."""
        peer = pid.to_base58()
        if peer in self._addrs:
            return [self._addrs[peer]]
        learned = self.host.get_peerstore().addrs(pid)
        return [a for a in learned if not str(a).startswith(SELF_ADDRESSES)] or learned

    # -- receiving ----------------------------------------------------------------------------
    async def receive(self) -> tuple[str, bytes | wire.RemoteProtocolError]:
        return await self._inbox.receive()

    def _handler(self, family: str):
        async def handle(stream) -> None:
            peer = stream.muxed_conn.peer_id.to_base58()
            try:
                if family == "status":
                    await self._answer_status(peer, stream)
                else:
                    await self._serve(peer, family, stream)
            except wire.RemoteProtocolError as e:
                await self._refuse(peer, stream, e)
            except Exception as e:  # the peer reset or vanished mid-stream: nothing to count
                log.debug("%s stream from %s ended: %s: %s", family, peer, type(e).__name__, e)
                await _quiet(stream.reset())
        return handle

    async def _serve(self, peer: str, family: str, stream) -> None:
        if not self.policy.admits(peer, self._known | self._discovered):
            raise wire.RemoteProtocolError("refused", "not a neighbour, not on the allowlist, and this node "
                                                      "does not --accept-any")
        if self._inbound[peer] >= MAX_STREAMS_PER_PEER:
            raise wire.RemoteProtocolError("flood", f"more than {MAX_STREAMS_PER_PEER} streams open at once")
        self._known.add(peer)
        self._retry.pop(peer, None)  # it reached us: dial it straight away next time
        self._inbound[peer] += 1
        try:
            decoder = wire.FrameDecoder()
            while True:
                try:
                    decoder.feed(await stream.read(READ_CHUNK))
                except StreamEOF:
                    decoder.feed_eof()
                    return
                self._last_bytes[peer] = trio.current_time()
                while (body := decoder.next_frame()) is not None:
                    self._check_rate(peer)
                    await self._inbox_send.send((peer, body))
                    if family == "hello":
                        await stream.write(ACK)
        finally:
            self._inbound[peer] -= 1

    def _check_rate(self, peer: str) -> None:
        now, recent = trio.current_time(), self._recent[peer]
        recent.append(now)
        while recent and recent[0] < now - FLOOD_WINDOW_S:
            recent.popleft()
        if len(recent) > self.flood_frames:
            raise wire.RemoteProtocolError("flood", f"more than {self.flood_frames} frames in {FLOOD_WINDOW_S:.0f}s")

    async def _answer_status(self, peer: str, stream) -> None:
        decoder = wire.FrameDecoder(max_frame_bytes=STATUS_REQUEST_MAX)
        with trio.fail_after(self.dial_timeout):
            while (body := decoder.next_frame()) is None:
                try:
                    decoder.feed(await stream.read(STATUS_REQUEST_MAX))
                except StreamEOF:
                    decoder.feed_eof()
                    raise wire.RemoteProtocolError("malformed", "status stream closed before a request") from None
        request = wire.decode(body)
        if not isinstance(request, wire.StatusRequest):
            raise wire.RemoteProtocolError("kind", f"{wire.kind_of(request)} on the status protocol")
        reply = wire.StatusReply(request.nonce, self.status())
        await stream.write(wire.frame(wire.encode(reply)))
        await stream.close()

    async def _refuse(self, peer: str, stream, error: wire.RemoteProtocolError) -> None:
        await _quiet(stream.reset())
        await self._inbox_send.send((peer, error))


def _why(e: BaseException) -> str:
    """An error and what caused it (libp2p wraps each address's failure as the cause of one summary)."""
    text = f"{type(e).__name__}: {e}"
    return f"{text} <- {e.__cause__}" if e.__cause__ is not None else text


def make_host(key_pair: KeyPair, psk: str | None):
    # min_connections=0: py-libp2p's auto-connector otherwise polls every few seconds to keep 50
    # connections; dialing our few neighbours (with backoff) is this transport's job
    return new_host(key_pair=key_pair, psk=psk, muxer_preference="YAMUX",
                    connection_config=ConnectionConfig(min_connections=0))


async def _quiet(coro) -> None:
    """Closing or resetting a stream that is already gone raises; at that point nobody cares."""
    try:
        await coro
    except Exception:
        pass


# -- a client for `p2pfl status` -------------------------------------------------------------------

async def query_status(addr: str, *, psk: str | None = None, timeout: float = 10.0) -> dict:
    """Ask the node at `addr` (a multiaddr with /p2p/<id>) for its status, with a throwaway identity."""
    info = info_from_p2p_addr(parse_peer(addr, what="address")[1])
    host = make_host(create_new_key_pair(), psk)
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with trio.fail_after(timeout):
            await host.connect(info)
            stream = await host.new_stream(info.peer_id, [PROTOCOLS["status"]])
            nonce = secrets.randbits(62)
            await stream.write(wire.frame(wire.encode(wire.StatusRequest(nonce))))
            decoder = wire.FrameDecoder()
            while (body := decoder.next_frame()) is None:
                decoder.feed(await stream.read(READ_CHUNK))
        reply = wire.decode(body)
        if not isinstance(reply, wire.StatusReply) or reply.nonce != nonce:
            raise wire.RemoteProtocolError("state", "the node answered something other than our status request")
        return reply.status
