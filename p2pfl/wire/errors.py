"""The two protocol errors and the fixed set of reasons they carry.

- `RemoteProtocolError`: a peer sent something invalid. Its `reason` is one short word from
  `REASONS`; the node counts it per reason, logs the message, drops the frame (or the stream) and
  keeps running.
- `LocalProtocolError`: we misused the API (built an invalid message, sent out of order). A bug here.
"""

from __future__ import annotations

REASONS = frozenset({
    "malformed",  # not msgpack, not a map, missing/extra key, wrong type, out-of-range value
    "version",  # frame or hello speaks another protocol version
    "kind",  # unknown message kind (or knowledge kind)
    "oversized",  # beyond a hard limit (limits.py)
    "shape",  # payload/label shapes don't match the reference slice x classes or the param count
    "non-finite",  # NaN or Inf in a float field or in decoded payload values
    "state",  # not legal in this peer state (see TRANSITIONS), or sender/nonce doesn't fit the session
    "mismatch",  # hello incompatible with ours (see MUST_MATCH)
    "codec",  # unknown codec, codec we didn't offer, or a payload that isn't valid for its codec
    "refused",  # transport: a peer the node's policy does not admit (not a neighbour, not allowed)
    "flood",  # transport: too many streams or frames from one peer in a short time
    "implausible",  # well-formed but beyond any honest value: rounds far ahead of ours, a vector far from any model
})

class ProtocolError(Exception):
    """Base of both protocol errors; `reason` is one of REASONS, str(error) the human message."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown protocol error reason {reason!r}; "
                             f"choose one of: {', '.join(sorted(REASONS))}")
        super().__init__(reason, message)  # both in args, so the error survives pickling
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


class LocalProtocolError(ProtocolError):
    """We misused the protocol: an invalid message built here, or a send that is illegal now."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid; count `reason`, log the message, drop it, keep running."""
