"""Moving bytes between peers: one small interface, an in-memory network for simulations, libp2p for real."""

from __future__ import annotations

from typing import Protocol


class PeerUnreachable(Exception):
    """The peer is down or the link is cut; the caller decides whether to retry later."""


class Transport(Protocol):
    """What a Node needs from a network. Messages are opaque bytes (wire.py gives them meaning)."""

    local_id: str

    async def send(self, peer: str, data: bytes) -> None:
        """Deliver `data` to `peer` (best effort, may arrive late); raise PeerUnreachable if it cannot."""

    async def receive(self) -> tuple[str, bytes]:
        """The next inbound message and who sent it."""


__all__ = ["Transport", "PeerUnreachable"]
