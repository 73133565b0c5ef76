"""What crosses the wire: versioned msgpack messages, framing and the per-peer state machine (no I/O).

Like h11, this package never touches a socket: bytes in, typed frozen messages out, and back. The
transports (memory, libp2p) are thin adapters around `encode`/`decode`, `frame`/`FrameDecoder` and
`PeerSession`, so every protocol rule is tested without a network.

- messages.py: the schema (its docstring's table is the contract), message classes, encode/decode
- framing.py: length-prefixed frames on a stream
- session.py: `PeerSession`, the state machine (TRANSITIONS) and hello compatibility (MUST_MATCH)
- limits.py: hard limits; errors.py: `RemoteProtocolError` / `LocalProtocolError` and their REASONS

Every name is re-exported here, so callers write `from p2pfl import wire; wire.Knowledge(...)`.
"""

from p2pfl.wire.errors import REASONS, LocalProtocolError, ProtocolError, RemoteProtocolError
from p2pfl.wire.framing import FrameDecoder, frame
from p2pfl.wire.limits import (
    MAX_CLASSES, MAX_CODECS, MAX_COUNT, MAX_FRAME_BYTES, MAX_ID_LEN, MAX_INT, MAX_LIST_LEN, MAX_MAP_LEN, MAX_MASS,
    MAX_PARAMS, MAX_PAYLOAD_ELEMENTS, MAX_PENDING_STATUS, MAX_REF_ROWS, MAX_STATUS_DEPTH, MAX_STATUS_ITEMS, MAX_STR_LEN,
)
from p2pfl.wire.messages import (
    KNOWLEDGE_KINDS, PROTOCOL_VERSION, Bye, Expectations, Hello, Knowledge, Message, StatusReply, StatusRequest,
    decode, encode, kind_of, row_indices, row_mask,
)
from p2pfl.wire.session import (
    KINDS_BY_MODE, MODES, MUST_MATCH, TRANSITIONS, PeerSession, Role, State, hello_mismatch,
)

__all__ = [
    # errors
    "REASONS", "ProtocolError", "LocalProtocolError", "RemoteProtocolError",
    # limits
    "MAX_CLASSES", "MAX_CODECS", "MAX_COUNT", "MAX_FRAME_BYTES", "MAX_ID_LEN", "MAX_INT", "MAX_LIST_LEN",
    "MAX_MAP_LEN", "MAX_MASS", "MAX_PARAMS", "MAX_PAYLOAD_ELEMENTS", "MAX_PENDING_STATUS", "MAX_REF_ROWS", "MAX_STATUS_DEPTH",
    "MAX_STATUS_ITEMS", "MAX_STR_LEN",
    # messages
    "PROTOCOL_VERSION", "KNOWLEDGE_KINDS", "Hello", "Knowledge", "Bye", "StatusRequest", "StatusReply", "Message",
    "Expectations", "encode", "decode", "kind_of", "row_indices", "row_mask",
    # framing
    "frame", "FrameDecoder",
    # session
    "State", "Role", "TRANSITIONS", "MUST_MATCH", "MODES", "KINDS_BY_MODE", "hello_mismatch", "PeerSession",
]
