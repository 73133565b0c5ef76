"""The per-peer session: which message is legal when, and what it changes (no I/O)."""

from __future__ import annotations

import enum
from dataclasses import replace

from p2pfl import codecs
from p2pfl.wire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from p2pfl.wire.limits import MAX_PENDING_STATUS
from p2pfl.wire.messages import (
    PROTOCOL_VERSION, Bye, Expectations, Hello, Knowledge, Message, StatusReply, StatusRequest, _check_content,
    _parse, encode, kind_of,
)


class State(enum.Enum):
    NEW = "new"  # nothing accepted yet (status traffic may pass: `p2pfl status` never says hello)
    READY = "ready"  # a compatible hello was accepted
    CLOSED = "closed"  # bye: nothing more is legal


# Rule: everything that decides what a peer may send, and where it leads, lives in these tables.
# (state, message kind) -> next state. A pair that is missing is a "state" error. The same table
# applies to what we send (our state) and what we receive (their state).
TRANSITIONS: dict[tuple[State, str], State] = {
    (State.NEW, "hello"): State.READY,  # only if compatible with ours (MUST_MATCH), else "mismatch"
    (State.NEW, "status_request"): State.NEW,
    (State.NEW, "status_reply"): State.NEW,  # only for a nonce the receiver asked for
    (State.NEW, "bye"): State.CLOSED,
    (State.READY, "hello"): State.READY,  # identical to the accepted one: a resend after reconnect;
    #                                       another incarnation of the same hello: the peer restarted,
    #                                       so the session starts over and we must greet it again
    (State.READY, "knowledge"): State.READY,  # only from the hello's id, only kinds of the mode
    (State.READY, "status_request"): State.READY,
    (State.READY, "status_reply"): State.READY,
    (State.READY, "bye"): State.CLOSED,
}

# Hello fields that must be equal on both sides, per mode. Architectures may differ in the
# knowledge-sharing modes (heterogeneous models are the point); fedavg averages whole parameter
# vectors, adapter modes average a shared adapter, so those must line up.
_ALWAYS = ("version", "mode", "num_classes", "ref_digest")
MUST_MATCH: dict[str, tuple[str, ...]] = {
    "logits": _ALWAYS,
    "local": _ALWAYS,
    "fedavg": _ALWAYS + ("arch", "param_count"),
    "adapter": _ALWAYS + ("param_count", "adapter_shape"),
    "hybrid": _ALWAYS + ("param_count", "adapter_shape"),
}
MODES = tuple(MUST_MATCH)

# Which knowledge kinds each mode sends. `local` shares nothing but still says hello/bye and status.
KINDS_BY_MODE: dict[str, frozenset[str]] = {
    "logits": frozenset({"logits"}),
    "adapter": frozenset({"params"}),
    "hybrid": frozenset({"logits", "params"}),
    "fedavg": frozenset({"params"}),
    "local": frozenset(),
}

_MISMATCH_HINTS = {
    "version": ("protocol version", "upgrade the older node"),
    "mode": ("mode", "every node in a run must use the same mode"),
    "num_classes": ("number of classes", "nodes must be trained on the same label set"),
    "ref_digest": ("reference digest", "both nodes must use the same [reference] spec"),
    "arch": ("architecture", "fedavg averages whole parameter vectors, so every node needs the same "
                             "architecture (use logits or adapter mode for mixed models)"),
    "param_count": ("parameter count", "averaged parameter vectors must have the same length"),
    "adapter_shape": ("adapter shape", "the shared adapter must have the same shape on every node"),
}


def _short(v: object) -> str:
    s = str(v)
    return s if len(s) <= 16 else s[:12] + ".."


def hello_mismatch(ours: Hello, theirs: Hello) -> list[str]:
    """Human explanations of every way `theirs` is incompatible with `ours` (empty: compatible)."""
    problems = []
    if theirs.node_id == ours.node_id:
        problems.append(f"peer uses our own node id {ours.node_id!r}; every node needs a distinct id")
    for name in MUST_MATCH.get(ours.mode, _ALWAYS):
        a, b = getattr(ours, name), getattr(theirs, name)
        if a != b:
            label, hint = _MISMATCH_HINTS[name]
            problems.append(f"{label} differs: ours {_short(a)}, theirs {_short(b)}; {hint}")
    return problems


class PeerSession:
    """Protocol state with one remote peer (no I/O): `receive(bytes) -> Message`, `send(msg) -> bytes`.

    A rejected message raises and leaves both states unchanged; whether to drop the peer is the
    caller's policy (the node counts reasons and closes the stream).
    """

    def __init__(self, local_hello: Hello, expect: Expectations | None = None) -> None:
        if local_hello.mode not in MUST_MATCH:
            raise LocalProtocolError("mismatch", f"unknown mode {local_hello.mode!r}; "
                                                 f"choose one of: {', '.join(MODES)}")
        if local_hello.version != PROTOCOL_VERSION:
            raise LocalProtocolError("version", f"our hello says version {local_hello.version}; "
                                                f"this code speaks {PROTOCOL_VERSION}")
        unknown = [c for c in local_hello.codecs if not codecs.is_codec(c)]
        if unknown:
            raise LocalProtocolError("codec", f"our hello offers unknown codecs {unknown}; "
                                              f"known: {codecs.CODEC_GRAMMAR}")
        if expect is None:
            expect = Expectations.for_hello(local_hello)
        if (expect.num_classes, expect.param_count) != (local_hello.num_classes, local_hello.param_count):
            raise LocalProtocolError("mismatch", f"expectations {expect} disagree with our hello (num_classes="
                                                 f"{local_hello.num_classes}, param_count={local_hello.param_count})")
        self.local_hello = local_hello
        self.expect = expect
        self.our_state = State.NEW
        self.their_state = State.NEW
        self.peer: Hello | None = None  # their accepted hello
        self._we_asked: set[int] = set()  # nonces of our status requests awaiting a reply
        self._they_asked: dict[int, None] = {}  # their unanswered nonces, oldest first (an ordered set)

    @property
    def common_codecs(self) -> tuple[str, ...]:
        """Codecs we may send to this peer, our preference order first (empty before their hello)."""
        theirs = set(self.peer.codecs) if self.peer else set()
        return tuple(c for c in self.local_hello.codecs if c in theirs)

    # -- receiving -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> Message:
        """Decode one frame body from the peer and check it is legal now; returns the message."""
        # 1) parse, 2) legal here and now (cheap, before touching the payload), 3) payload shape and
        # values, 4) only then change state, so a rejected message leaves the session as it was
        msg = _parse(data)
        kind = kind_of(msg)
        nxt = TRANSITIONS.get((self.their_state, kind))
        if nxt is None:
            raise RemoteProtocolError("state", f"{kind} is not allowed when the peer is {self.their_state.value}")
        restarted = False
        if isinstance(msg, Hello):
            if self.peer is not None and msg != self.peer:
                restarted = replace(msg, incarnation=self.peer.incarnation) == self.peer
                if not restarted:
                    raise RemoteProtocolError("state", f"a second, different hello from {self.peer.node_id!r}")
            problems = hello_mismatch(self.local_hello, msg)
            if problems:
                raise RemoteProtocolError("mismatch", f"hello from {msg.node_id!r} is incompatible: "
                                                      + "; ".join(problems))
        elif isinstance(msg, Knowledge):
            self._check_knowledge(msg, RemoteProtocolError, self.peer.node_id)
        elif isinstance(msg, Bye):
            if self.peer is not None and msg.sender != self.peer.node_id:
                raise RemoteProtocolError("state", f"bye from {msg.sender!r} on the session of {self.peer.node_id!r}")
        elif isinstance(msg, StatusReply):
            if msg.nonce not in self._we_asked:
                raise RemoteProtocolError("state", f"status reply with nonce {msg.nonce} we never asked for")
        _check_content(msg, self.expect)
        if isinstance(msg, Hello):
            self.peer = msg
            if restarted:  # it forgot us: our hello, our status nonces and its requests are gone
                self.our_state = State.NEW
                self._we_asked.clear()
                self._they_asked.clear()
        elif isinstance(msg, StatusRequest):
            self._they_asked[msg.nonce] = None
            if len(self._they_asked) > MAX_PENDING_STATUS:  # a flood of requests: forget the oldest
                del self._they_asked[next(iter(self._they_asked))]
        elif isinstance(msg, StatusReply):
            self._we_asked.discard(msg.nonce)
        self.their_state = nxt
        return msg

    # -- sending ---------------------------------------------------------------------------------

    def send(self, msg: Message) -> bytes:
        """Check that sending `msg` is legal now and return its encoding (not framed)."""
        kind = kind_of(msg)
        nxt = TRANSITIONS.get((self.our_state, kind))
        if nxt is None:
            raise LocalProtocolError("state", f"cannot send {kind} when we are {self.our_state.value}")
        if isinstance(msg, Hello) and msg != self.local_hello:
            raise LocalProtocolError("state", "send the session's own hello (local_hello), not another one")
        if isinstance(msg, Knowledge):
            if self.their_state is not State.READY:
                raise LocalProtocolError("state", f"cannot send knowledge to a peer that is "
                                                  f"{self.their_state.value}; wait for its hello")
            self._check_knowledge(msg, LocalProtocolError, self.local_hello.node_id)
            if msg.payload.codec not in self.peer.codecs:
                raise LocalProtocolError("codec", f"peer {self.peer.node_id!r} does not decode {msg.payload.codec!r}; "
                                                  f"it offers {', '.join(self.peer.codecs) or 'none'}")
        if isinstance(msg, Bye) and msg.sender != self.local_hello.node_id:
            raise LocalProtocolError("state", f"bye must come from our node id {self.local_hello.node_id!r}")
        if isinstance(msg, StatusReply):
            if msg.nonce not in self._they_asked:
                raise LocalProtocolError("state", f"no status request with nonce {msg.nonce} to answer")
        data = encode(msg)  # before any state change: an oversized message changes nothing
        if isinstance(msg, StatusRequest):
            self._we_asked.add(msg.nonce)
        elif isinstance(msg, StatusReply):
            self._they_asked.pop(msg.nonce, None)
        self.our_state = nxt
        return data

    def _check_knowledge(self, k: Knowledge, error: type[ProtocolError], sender: str) -> None:
        if k.sender != sender:
            raise error("state", f"knowledge from {k.sender!r} on the session of {sender!r}")
        allowed = KINDS_BY_MODE[self.local_hello.mode]
        if k.kind not in allowed:
            raise error("state", f"{k.kind} knowledge is not used in mode {self.local_hello.mode!r} "
                                 f"(it sends: {', '.join(sorted(allowed)) or 'nothing'})")
        if error is RemoteProtocolError and k.payload.codec not in self.local_hello.codecs:
            raise error("codec", f"payload codec {k.payload.codec!r} was not offered; we decode "
                                 f"{', '.join(self.local_hello.codecs) or 'none'}")
