"""Moving bytes between peers: one small interface, an in-memory network for simulations, libp2p for real."""

from __future__ import annotations

from typing import Protocol

from p2pfl.wire import RemoteProtocolError


class PeerUnreachable(Exception):
    """The peer is down or the link is cut; the caller decides whether to retry later."""


class Transport(Protocol):
    """What a Node needs from a network. Messages are opaque bytes (p2pfl.wire gives them meaning)."""

    local_id: str

    async def send(self, peer: str, data: bytes, kind: str = "knowledge") -> None:
        """Deliver `data` to `peer` (best effort, may arrive late); raise PeerUnreachable if it cannot.

        `kind` is the wire kind of the message (wire.kind_of): a transport may route message
        families differently (libp2p: one protocol id per family); the in-memory one ignores it.
        A hello must have reached the peer's inbox before a later send to it can: the node shares
        knowledge only after its hello went out, and the peer would refuse knowledge first.
        """

    async def reconnect(self, peer: str, silent_since: float) -> bool:
        """Drop whatever connection we hold to `peer`, so that the next send dials afresh, unless
        something of it (part of a frame) arrived after `silent_since` (trio time); whether it did. The
        node asks when a neighbour it keeps sending to has gone quiet: a link can die with neither end
        told (a pulled cable sends no reset), and the old connection may only wake long after it is back."""

    async def receive(self) -> tuple[str, bytes | RemoteProtocolError]:
        """The next inbound message and who sent it; or the error for a stream the transport itself
        refused (bad framing, a peer the policy does not allow), for the node to count and log."""


__all__ = ["Transport", "PeerUnreachable"]
