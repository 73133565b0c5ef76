"""The per-peer session: which message is legal when, and what it changes (no I/O)."""

from __future__ import annotations

import enum
from dataclasses import replace

from p2pfl import codecs
from p2pfl.mode_facts import ALWAYS_MATCH, MODE_FACTS
from p2pfl.wire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from p2pfl.wire.limits import MAX_PENDING_STATUS
from p2pfl.wire.messages import (
    PROTOCOL_VERSION, Bye, Expectations, Hello, Knowledge, Message, StatusReply, StatusRequest, _check_content,
    _parse, encode, kind_of,
)


class State(enum.Enum):
    NEW = "new"  # nothing accepted yet (status traffic may pass: `p2pfl status` never says hello)
    READY = "ready"  # a compatible hello was accepted
    CLOSED = "closed"  # bye: nothing more is legal, but a peer may come back with a hello (a new session)


class Role(enum.Enum):
    """Who sends the message the rules are applied to (h11's role): we (`send`) or the peer (`receive`)."""

    OURS = "ours"
    THEIRS = "theirs"

    @property
    def other(self) -> Role:
        return Role.THEIRS if self is Role.OURS else Role.OURS


# Rule: everything that decides what a peer may send, and where it leads, lives in these tables.
# (state, message kind) -> next state, per role: what we send moves our state, what we receive
# moves theirs. A pair that is missing is a "state" error.
_BOTH: dict[tuple[State, str], State] = {
    (State.NEW, "hello"): State.READY,  # only if compatible with ours (MUST_MATCH), else "mismatch"
    (State.NEW, "status_request"): State.NEW,
    (State.NEW, "status_reply"): State.NEW,  # only for a nonce the receiver asked for
    (State.NEW, "bye"): State.CLOSED,
    (State.READY, "hello"): State.READY,  # identical to the accepted one: a resend after reconnect;
    #                                       another incarnation of the same hello: the peer restarted,
    #                                       so a new session starts (PeerSession.epoch + 1) and we must
    #                                       greet it again
    (State.READY, "knowledge"): State.READY,  # only from the hello's id, only kinds of the mode
    (State.READY, "status_request"): State.READY,
    (State.READY, "status_reply"): State.READY,
    (State.READY, "bye"): State.CLOSED,
}
TRANSITIONS: dict[Role, dict[tuple[State, str], State]] = {
    Role.OURS: _BOTH,  # we don't come back after our bye: a node that says it is leaving
    Role.THEIRS: {
        **_BOTH,
        (State.CLOSED, "hello"): State.READY,  # the peer came back after its bye: a new session, as a
        #                                        fresh PeerSession would start it (epoch + 1)
    },
}

# Hello fields that must be equal on both sides, and the knowledge kinds legal, per mode: derived
# from the one table of modes (p2pfl/mode_facts.py), so a mode is declared once.
_ALWAYS = ALWAYS_MATCH
MUST_MATCH: dict[str, tuple[str, ...]] = {m.name: ALWAYS_MATCH + m.must_match for m in MODE_FACTS.values()}
MODES = tuple(MUST_MATCH)
# `local` shares nothing but still says hello/bye and status.
KINDS_BY_MODE: dict[str, frozenset[str]] = {m.name: frozenset(m.kinds) for m in MODE_FACTS.values()}

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


# The one rule path says the same rule from either side: only the error class and the words differ.
_ERROR: dict[Role, type[ProtocolError]] = {Role.OURS: LocalProtocolError, Role.THEIRS: RemoteProtocolError}
_NOT_NOW = {Role.OURS: "cannot send {kind} when we are {state}",  # by the sender's role
            Role.THEIRS: "{kind} is not allowed when the peer is {state}"}
_WHO = {Role.OURS: "we", Role.THEIRS: "the peer"}
_DECODES = {Role.OURS: "we decode", Role.THEIRS: "the peer decodes"}


class PeerSession:
    """Protocol state with one remote peer (no I/O): `receive(bytes) -> Message`, `send(msg) -> bytes`.

    Both go through one rule path, `_process(role, msg)` (h11's `process_event`): the same table
    and checks decide what we may send and what the peer may. A rejected message raises and leaves
    the session unchanged; whether to drop the peer is the caller's policy (the node counts reasons
    and closes the stream).

    `epoch` counts the sessions with this peer: 0 for the first, + 1 each time the peer starts a new
    one (a hello after its bye, or from a restarted process). Whatever it built up before (our
    greeting, status requests, its delta streams) is gone then; a caller compares epochs to notice.
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
        self.peer: Hello | None = None  # their accepted hello
        self.epoch = 0
        self._state = {Role.OURS: State.NEW, Role.THEIRS: State.NEW}
        # per role, the nonces of its status requests the other has not answered, oldest first (ordered sets)
        self._asked: dict[Role, dict[int, None]] = {Role.OURS: {}, Role.THEIRS: {}}

    @property
    def our_state(self) -> State:
        return self._state[Role.OURS]

    @property
    def their_state(self) -> State:
        return self._state[Role.THEIRS]

    @property
    def common_codecs(self) -> tuple[str, ...]:
        """Codecs we may send to this peer, our preference order first (empty before their hello)."""
        theirs = set(self.peer.codecs) if self.peer else set()
        return tuple(c for c in self.local_hello.codecs if c in theirs)

    def receive(self, data: bytes) -> Message:
        """Decode one frame body from the peer and check it is legal now; returns the message."""
        msg = _parse(data)
        self._process(Role.THEIRS, msg)
        return msg

    def send(self, msg: Message) -> bytes:
        """Check that sending `msg` is legal now and return its encoding (not framed)."""
        return self._process(Role.OURS, msg)

    # -- the rules -------------------------------------------------------------------------------

    def _process(self, role: Role, msg: Message) -> bytes | None:
        """Apply `msg`, sent by `role`, if it is legal now, else raise the role's error (Local for our
        messages, Remote for theirs). Returns our messages' encoding."""
        # 1) legal in the sender's state, 2) the per-kind checks (cheap, before touching the payload),
        # 3) the costly last check: the peer's payload values, or our encoding's size, 4) only then
        # change state, so a rejected message leaves the session as it was
        kind, state = kind_of(msg), self._state[role]
        nxt = TRANSITIONS[role].get((state, kind))
        if nxt is None:
            raise _ERROR[role]("state", _NOT_NOW[role].format(kind=kind, state=state.value))
        new_session = False
        if isinstance(msg, Hello):
            new_session = self._check_hello(role, msg)
        elif isinstance(msg, Knowledge):
            self._check_knowledge(role, msg)
        elif isinstance(msg, Bye):
            self._check_sender(role, msg)
        elif isinstance(msg, StatusReply) and msg.nonce not in self._asked[role.other]:
            raise _ERROR[role]("state", f"status reply with nonce {msg.nonce} {_WHO[role.other]} never asked for")
        data = encode(msg) if role is Role.OURS else _check_content(msg, self.expect)
        if new_session:
            self._start_over()
        if isinstance(msg, Hello) and role is Role.THEIRS:
            self.peer = msg
        elif isinstance(msg, StatusRequest):
            asked = self._asked[role]
            asked[msg.nonce] = None
            if len(asked) > MAX_PENDING_STATUS:  # a flood of requests: forget the oldest
                del asked[next(iter(asked))]
        elif isinstance(msg, StatusReply):
            self._asked[role.other].pop(msg.nonce, None)
        self._state[role] = nxt
        return data

    def _hello_of(self, role: Role) -> Hello | None:
        """The hello `role` speaks under now: ours always; the peer's while it is READY."""
        if role is Role.OURS:
            return self.local_hello
        return self.peer if self.their_state is State.READY else None

    def _check_hello(self, role: Role, msg: Hello) -> bool:
        """Whether the hello starts a new session: the peer is back after its bye, or restarted."""
        known = self._hello_of(role)
        new_session = self._state[role] is State.CLOSED
        if known is not None and msg != known:
            # the same hello from another incarnation: the peer restarted (ours never changes)
            new_session = role is Role.THEIRS and replace(msg, incarnation=known.incarnation) == known
            if not new_session:
                raise _ERROR[role]("state", f"a second, different hello from {known.node_id!r}")
        problems = hello_mismatch(self.local_hello, msg) if role is Role.THEIRS else []  # ours: checked in __init__
        if problems:
            raise _ERROR[role]("mismatch", f"hello from {msg.node_id!r} is incompatible: " + "; ".join(problems))
        return new_session

    def _start_over(self) -> None:
        """A new session with the peer: it forgot our hello, our status requests and its own."""
        self._state[Role.OURS] = State.NEW
        for asked in self._asked.values():
            asked.clear()
        self.epoch += 1

    def _check_sender(self, role: Role, msg: Knowledge | Bye) -> None:
        known = self._hello_of(role)  # None only for a bye before the peer's hello
        if known is not None and msg.sender != known.node_id:
            raise _ERROR[role]("state", f"{kind_of(msg)} from {msg.sender!r} on the session of {known.node_id!r}")

    def _check_knowledge(self, role: Role, k: Knowledge) -> None:
        error, receiver = _ERROR[role], self._hello_of(role.other)
        if receiver is None:  # only when we send: what the peer decodes is known from its hello
            raise error("state", f"cannot send knowledge to a peer that is {self.their_state.value}; "
                                 "wait for its hello")
        self._check_sender(role, k)
        allowed = KINDS_BY_MODE[self.local_hello.mode]
        if k.kind not in allowed:
            raise error("state", f"{k.kind} knowledge is not used in mode {self.local_hello.mode!r} "
                                 f"(it sends: {', '.join(sorted(allowed)) or 'nothing'})")
        if k.payload.codec not in receiver.codecs:
            raise error("codec", f"payload codec {k.payload.codec!r} was not offered; {_DECODES[role.other]} "
                                 f"{', '.join(receiver.codecs) or 'none'}")
