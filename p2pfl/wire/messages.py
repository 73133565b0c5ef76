"""Messages: the versioned msgpack schema, validation on construction, encode/decode (no I/O).

Schema, protocol version 3 (this table is the contract: changing a key, type or meaning bumps
PROTOCOL_VERSION). Every frame is one msgpack map with str keys; bytes are msgpack bin; a frame with
a missing key, an extra key or a wrongly typed value is rejected ("malformed"); bool is never an int.

    key   type      field           limit / meaning
    ---------------------------------------------------------------------------------------------
    v     int       -               PROTOCOL_VERSION, anything else -> "version"
    k     str       -               hello | knowledge | bye | status_request | status_reply

    hello
    id    str       node_id         1..MAX_ID_LEN printable characters
    pv    int       version         protocol version the node speaks (must equal ours)
    arch  str       arch            model architecture name, 1..MAX_ID_LEN
    mode  str       mode            one of MODES (must equal ours)
    nc    int       num_classes     1..MAX_CLASSES
    ref   str       ref_digest      reference-set digest, 0..MAX_ID_LEN ("" = no reference set)
    cod   [str]     codecs          <= MAX_CODECS codec names the node decodes, preferred first
    np    int       param_count     0..MAX_PARAMS: length of this node's "params" payloads
    ad    [int]     adapter_shape   <= codecs.MAX_NDIM dims, product <= MAX_PARAMS (() = no adapter)
    inc   int       incarnation     0..MAX_INT, new each time the node process starts: a hello that
                                    differs from the accepted one only here means the peer restarted

    knowledge
    s     str       sender          node id, must equal the id of the hello on this session
    r     int       round           0..MAX_INT, sender's round counter
    t     float     time            finite, sender's clock in seconds (int accepted)
    kn    str       kind            "logits" (reference-slice predictions) | "params" (flat vector) |
                                    "prototypes" (class means of embeddings) | "class-logits" (class
                                    means of logits on the sender's own rows)
    rs    int       ref_start       logits: first reference row; the other kinds: 0
    rc    int       ref_count       logits: 1.. rows, rs + rc <= MAX_REF_ROWS and <= receiver's
                                    reference size; the other kinds: 0
    p     map       payload         {"c": str codec, "sh": [int] shape, "d": bin data, "sc": bin scale}
                                    logits: shape (rc, num_classes); params: (param_count,);
                                    prototypes: (num_classes, embed_dim <= MAX_EMBED_DIM);
                                    class-logits: (num_classes, num_classes);
                                    <= MAX_PAYLOAD_ELEMENTS values, all finite once decoded
    lc    [int]     label_counts    [] (not shared) or num_classes counts in 0..MAX_COUNT
    n     int       samples         0..MAX_COUNT * MAX_CLASSES training samples behind this knowledge
    acc   float     val_acc         0..1, sender's validation accuracy
    b     int       base            -1: the payload is the value; 0..round-1: it is a difference to
                                    add to the sender's value of that earlier round, which the
                                    receiver holds if it got every frame since (gossip.DeltaEncoder)
    w     float     mass            0 < mass <= MAX_MASS: push-sum, the share of the sender's mass sent with
                                    this frame (1.0 where the mode does not use push-sum)
    rm    bin       row_mask        logits: b"" = every row of the slice; else ceil(rc / 8) bytes,
                                    bit i (numpy packbits order) set = slice row i is in the payload,
                                    padding bits clear, at least one set; the payload then has one
                                    row per set bit. params: b""
    kp    int       keeps           -1: rows outside row_mask are not sent; else an earlier round
                                    (0..round-1) whose frame about the same slice holds them: they
                                    have not changed since (gossip.select = "changed:T"). Needs a
                                    row_mask; params: -1

    bye
    s     str       sender          node id
    why   str       reason          0..MAX_STR_LEN printable characters

    status_request
    n     int       nonce           0..MAX_INT, echoed by the reply

    status_reply
    n     int       nonce           the request's nonce
    st    map       status          str keys -> None | bool | int | float (finite) | str | list | map,
                                    nesting <= MAX_STATUS_DEPTH, <= MAX_STATUS_ITEMS values in all
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Union

import msgpack
import numpy as np

from p2pfl import codecs
from p2pfl.codecs import CodecError, Encoded, NonFiniteError
from p2pfl.mode_facts import KNOWLEDGE_KINDS, PER_CLASS_KINDS
from p2pfl.wire.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.wire.limits import (
    MAX_CLASSES, MAX_CODECS, MAX_COUNT, MAX_EMBED_DIM, MAX_FRAME_BYTES, MAX_ID_LEN, MAX_INT, MAX_LIST_LEN,
    MAX_MAP_LEN, MAX_MASS, MAX_PARAMS, MAX_PAYLOAD_ELEMENTS, MAX_REF_ROWS, MAX_STATUS_DEPTH, MAX_STATUS_ITEMS,
    MAX_STR_LEN,
)

# the most a per-class payload's rows may hold, by what they are (mode_facts.PER_CLASS_KINDS)
MAX_WIDTH = {"embed_dim": MAX_EMBED_DIM, "classes": MAX_CLASSES}

# 2: knowledge gained "b" (base, delta coding), "w" (mass, push-sum), "rm" (row selection); 3: "kp" (keeps)
PROTOCOL_VERSION = 3



# ----------------------------------------------------------------------------- field validation
# One set of checks for both directions: messages validate themselves on construction (raising
# LocalProtocolError); decode() builds messages from wire values and re-raises as RemoteProtocolError.


def _tname(v: object) -> str:
    return type(v).__name__


def _int(name: str, v: object, lo: int = 0, hi: int = MAX_INT) -> int:
    # numpy ints are accepted for local convenience (np.bincount output); bool is never an int
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise LocalProtocolError("malformed", f"{name} must be an int; got {_tname(v)}")
    v = int(v)
    if v < lo:
        raise LocalProtocolError("malformed", f"{name} must be >= {lo}; got {v}")
    if v > hi:
        raise LocalProtocolError("oversized", f"{name} must be <= {hi}; got {v}")
    return v


def _float(name: str, v: object, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise LocalProtocolError("malformed", f"{name} must be a float; got {_tname(v)}")
    v = float(v)
    if not math.isfinite(v):
        raise LocalProtocolError("non-finite", f"{name} must be finite; got {v}")
    if not lo <= v <= hi:
        raise LocalProtocolError("malformed", f"{name} must be in [{lo}, {hi}]; got {v}")
    return v


def _str(name: str, v: object, max_len: int, *, min_len: int = 1) -> str:
    if not isinstance(v, str):
        raise LocalProtocolError("malformed", f"{name} must be a str; got {_tname(v)}")
    if len(v) > max_len:
        raise LocalProtocolError("oversized", f"{name} must be at most {max_len} characters; got {len(v)}")
    if len(v) < min_len:
        raise LocalProtocolError("malformed", f"{name} must not be empty")
    if not v.isprintable():  # ids and reasons end up in logs and terminals: no newlines or escapes
        raise LocalProtocolError("malformed", f"{name} must be printable (no control characters); got {v[:40]!r}")
    return v


def _seq(name: str, v: object, max_len: int) -> tuple[Any, ...]:
    # lists come from msgpack, tuples and 1-D arrays from local callers; length first, then items
    if isinstance(v, np.ndarray) and v.ndim == 1:
        v = v.tolist()
    if not isinstance(v, (list, tuple)):
        raise LocalProtocolError("malformed", f"{name} must be a list; got {_tname(v)}")
    if len(v) > max_len:
        raise LocalProtocolError("oversized", f"{name} may have at most {max_len} entries; got {len(v)}")
    return tuple(v)


def _ints(name: str, v: object, max_len: int, lo: int = 0, hi: int = MAX_INT) -> tuple[int, ...]:
    return tuple(_int(f"{name}[{i}]", x, lo, hi) for i, x in enumerate(_seq(name, v, max_len)))


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass in __post_init__


def _check_status(v: object, path: str, depth: int, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise LocalProtocolError("oversized", f"status has more than {MAX_STATUS_ITEMS} values")
    if v is None or isinstance(v, bool):
        return
    if isinstance(v, int):
        if not -(2**63) <= v < 2**64:  # what msgpack can carry
            raise LocalProtocolError("oversized", f"{path} does not fit 64 bits: {v}")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise LocalProtocolError("non-finite", f"{path} must be finite; got {v}")
        return
    if isinstance(v, str):
        _str(path, v, MAX_STR_LEN, min_len=0)
        return
    if depth >= MAX_STATUS_DEPTH and isinstance(v, (list, tuple, dict)):
        raise LocalProtocolError("oversized", f"{path} nests deeper than {MAX_STATUS_DEPTH} levels")
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(_seq(path, v, MAX_LIST_LEN)):
            _check_status(x, f"{path}[{i}]", depth + 1, budget)
        return
    if isinstance(v, dict):
        if len(v) > MAX_MAP_LEN:
            raise LocalProtocolError("oversized", f"{path} may have at most {MAX_MAP_LEN} keys; got {len(v)}")
        for k, x in v.items():
            _str(f"{path} key", k, MAX_ID_LEN)
            _check_status(x, f"{path}.{k}", depth + 1, budget)
        return
    raise LocalProtocolError("malformed", f"{path} must be None/bool/int/float/str/list/map; got {_tname(v)}")


# --------------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Hello:
    """First message on a session: who we are and what we need a peer to agree on (MUST_MATCH)."""

    node_id: str
    version: int
    arch: str
    mode: str
    num_classes: int
    ref_digest: str
    codecs: tuple[str, ...]
    param_count: int
    adapter_shape: tuple[int, ...] = ()
    incarnation: int = 0

    def __post_init__(self) -> None:
        _str("node_id", self.node_id, MAX_ID_LEN)
        _set(self, "version", _int("version", self.version, 0, MAX_INT))
        _str("arch", self.arch, MAX_ID_LEN)
        _str("mode", self.mode, MAX_ID_LEN)  # unknown modes are a "mismatch", found by PeerSession
        _set(self, "num_classes", _int("num_classes", self.num_classes, 1, MAX_CLASSES))
        _str("ref_digest", self.ref_digest, MAX_ID_LEN, min_len=0)
        names = _seq("codecs", self.codecs, MAX_CODECS)
        _set(self, "codecs", tuple(_str(f"codecs[{i}]", c, MAX_ID_LEN) for i, c in enumerate(names)))
        _set(self, "param_count", _int("param_count", self.param_count, 0, MAX_PARAMS))
        shape = _ints("adapter_shape", self.adapter_shape, codecs.MAX_NDIM, 1, MAX_PARAMS)
        if math.prod(shape) > MAX_PARAMS:
            raise LocalProtocolError("oversized", f"adapter_shape {shape} has more than {MAX_PARAMS} values")
        _set(self, "adapter_shape", shape)
        _set(self, "incarnation", _int("incarnation", self.incarnation, 0, MAX_INT))


@dataclass(frozen=True)
class Knowledge:
    """One node's knowledge for one round: logits on a reference slice, or a flat parameter vector."""

    sender: str
    round: int
    time: float
    kind: str
    ref_start: int
    ref_count: int
    payload: Encoded
    label_counts: tuple[int, ...]
    samples: int
    val_acc: float
    base: int = -1  # -1: payload is the value; else a difference to the sender's value of round `base`
    mass: float = 1.0  # push-sum mass share
    row_mask: bytes = b""  # logits: which rows of the slice the payload holds (b"": all), packbits order
    keeps: int = -1  # logits: the earlier round whose frame about this slice still holds the unsent rows
    # decoded payload, filled by decode() (which must decode it to check finiteness) or by array()
    _array: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _str("sender", self.sender, MAX_ID_LEN)
        _set(self, "round", _int("round", self.round))
        _set(self, "time", _float("time", self.time))
        if self.kind not in KNOWLEDGE_KINDS:
            raise LocalProtocolError("kind", f"unknown knowledge kind {self.kind!r}; choose one of: "
                                             f"{', '.join(KNOWLEDGE_KINDS)}")
        _set(self, "ref_start", _int("ref_start", self.ref_start, 0, MAX_REF_ROWS))
        _set(self, "ref_count", _int("ref_count", self.ref_count, 0, MAX_REF_ROWS))
        _set(self, "payload", _check_payload(self.payload))
        _set(self, "label_counts", _ints("label_counts", self.label_counts, MAX_CLASSES, hi=MAX_COUNT))
        _set(self, "samples", _int("samples", self.samples, hi=MAX_COUNT * MAX_CLASSES))
        _set(self, "val_acc", _float("val_acc", self.val_acc, 0.0, 1.0))
        _set(self, "base", _int("base", self.base, -1))
        if self.base >= self.round:
            raise LocalProtocolError("malformed", f"base {self.base} must be an earlier round than {self.round} (or -1)")
        _set(self, "mass", _float("mass", self.mass, hi=MAX_MASS))
        if self.mass <= 0:
            raise LocalProtocolError("malformed", f"mass must be > 0; got {self.mass}")
        if not isinstance(self.row_mask, bytes):
            raise LocalProtocolError("malformed", f"row_mask must be bytes; got {_tname(self.row_mask)}")
        _set(self, "keeps", _int("keeps", self.keeps, -1))
        if self.keeps >= self.round or (self.keeps >= 0 and not self.row_mask):
            raise LocalProtocolError("malformed", f"keeps {self.keeps} must be -1, or an earlier round than "
                                                  f"{self.round} with a row_mask (the rows it keeps are the others)")
        # what the payload must look like for this kind, whoever receives it
        shape = self.payload.shape
        if self.kind == "logits":
            if self.ref_count < 1:
                raise LocalProtocolError("shape", "logits knowledge needs ref_count >= 1; got 0")
            if self.ref_start >= MAX_REF_ROWS or self.ref_count > MAX_REF_ROWS:
                raise LocalProtocolError("oversized", f"reference slice {self.ref_start}+{self.ref_count} "
                                                      f"goes beyond MAX_REF_ROWS={MAX_REF_ROWS}")
            rows = _selected_rows(self.row_mask, self.ref_count)
            if len(shape) != 2 or shape[0] != rows or shape[1] < 1:
                raise LocalProtocolError("shape", f"logits payload must have shape (rows={rows}, classes) for "
                                                  f"{'its row mask' if self.row_mask else f'ref_count={self.ref_count}'}; "
                                                  f"got {shape}")
            if shape[1] > MAX_CLASSES:
                raise LocalProtocolError("oversized", f"logits payload has {shape[1]} classes; MAX_CLASSES "
                                                      f"is {MAX_CLASSES}")
        elif self.ref_start or self.ref_count or self.row_mask:
            raise LocalProtocolError("shape", f"{self.kind} knowledge has no reference slice or row mask; got "
                                              f"ref_start={self.ref_start}, ref_count={self.ref_count}")
        elif self.kind in PER_CLASS_KINDS:
            width = PER_CLASS_KINDS[self.kind]
            if len(shape) != 2 or not 1 <= shape[0] <= MAX_CLASSES or not 1 <= shape[1] <= MAX_WIDTH[width]:
                raise LocalProtocolError("shape", f"{self.kind} payload must have shape (classes <= {MAX_CLASSES}, "
                                                  f"{width} <= {MAX_WIDTH[width]}); got {shape}")
        else:
            if len(shape) != 1 or shape[0] < 1:
                raise LocalProtocolError("shape", f"params payload must have shape (n,) with n >= 1; got {shape}")
            if shape[0] > MAX_PARAMS:
                raise LocalProtocolError("oversized", f"params payload has {shape[0]} values; MAX_PARAMS "
                                                      f"is {MAX_PARAMS}")
        if math.prod(shape) > MAX_PAYLOAD_ELEMENTS:
            raise LocalProtocolError("oversized", f"payload shape {shape} has more than "
                                                  f"{MAX_PAYLOAD_ELEMENTS} values")

    def array(self) -> np.ndarray:
        """The decoded payload (float32, read-only: copy it to modify), decoded at most once."""
        if self._array is None:
            values = codecs.decode(self.payload, max_elements=math.prod(self.payload.shape))
            values.flags.writeable = False
            _set(self, "_array", values)
        return self._array


def _selected_rows(mask: bytes, ref_count: int) -> int:
    """How many slice rows a row mask (bytes, checked by the caller) selects (ref_count for b""),
    checking its length and padding."""
    if not mask:
        return ref_count
    if len(mask) != -(-ref_count // 8):
        raise LocalProtocolError("shape", f"row_mask has {len(mask)} bytes; a slice of {ref_count} rows needs "
                                          f"{-(-ref_count // 8)}")
    bits = np.unpackbits(np.frombuffer(mask, dtype=np.uint8))
    if bits[ref_count:].any():
        raise LocalProtocolError("malformed", "row_mask sets bits beyond the slice's last row")
    rows = int(bits.sum())
    if rows == 0:
        raise LocalProtocolError("shape", "row_mask selects no rows; send nothing instead")
    return rows


def row_indices(k: Knowledge) -> np.ndarray | None:
    """Indices within the slice of the payload's rows, or None for every row."""
    if not k.row_mask:
        return None
    return np.flatnonzero(np.unpackbits(np.frombuffer(k.row_mask, dtype=np.uint8))[:k.ref_count])


def row_mask(rows: np.ndarray, ref_count: int) -> bytes:
    """The row_mask selecting slice rows `rows` (b"" when that is every row)."""
    bits = np.zeros(ref_count, dtype=bool)
    bits[rows] = True
    return b"" if bits.all() else np.packbits(bits).tobytes()


def _check_payload(p: object) -> Encoded:
    if not isinstance(p, Encoded):
        raise LocalProtocolError("malformed", f"payload must be a codecs.Encoded; got {_tname(p)}")
    _str("payload codec", p.codec, MAX_ID_LEN)
    if not codecs.is_codec(p.codec):
        raise LocalProtocolError("codec", f"unknown payload codec {p.codec!r}; known: {codecs.CODEC_GRAMMAR}")
    shape = _ints("payload shape", p.shape, codecs.MAX_NDIM, 0, MAX_PAYLOAD_ELEMENTS)
    if not isinstance(p.data, bytes) or not isinstance(p.scale, bytes):
        raise LocalProtocolError("malformed", f"payload data and scale must be bytes; got "
                                              f"{_tname(p.data)}, {_tname(p.scale)}")
    return p if shape == p.shape else replace(p, shape=shape)


@dataclass(frozen=True)
class Bye:
    """Last message on a session; the peer's state becomes CLOSED."""

    sender: str
    reason: str

    def __post_init__(self) -> None:
        _str("sender", self.sender, MAX_ID_LEN)
        _str("reason", self.reason, MAX_STR_LEN, min_len=0)


@dataclass(frozen=True)
class StatusRequest:
    nonce: int

    def __post_init__(self) -> None:
        _set(self, "nonce", _int("nonce", self.nonce))


@dataclass(frozen=True)
class StatusReply:
    nonce: int
    status: dict = field(hash=False)  # dicts aren't hashable; nonce is enough to tell replies apart

    def __post_init__(self) -> None:
        _set(self, "nonce", _int("nonce", self.nonce))
        if not isinstance(self.status, dict):
            raise LocalProtocolError("malformed", f"status must be a map; got {_tname(self.status)}")
        _check_status(self.status, "status", 0, [MAX_STATUS_ITEMS])


Message = Union[Hello, Knowledge, Bye, StatusRequest, StatusReply]

# kind name -> (class, ((wire key, field name), ...)); the schema table above, as code
_SCHEMA: dict[str, tuple[type, tuple[tuple[str, str], ...]]] = {
    "hello": (Hello, (("id", "node_id"), ("pv", "version"), ("arch", "arch"), ("mode", "mode"),
                      ("nc", "num_classes"), ("ref", "ref_digest"), ("cod", "codecs"),
                      ("np", "param_count"), ("ad", "adapter_shape"),
                      ("inc", "incarnation"))),
    "knowledge": (Knowledge, (("s", "sender"), ("r", "round"), ("t", "time"), ("kn", "kind"),
                              ("rs", "ref_start"), ("rc", "ref_count"), ("p", "payload"),
                              ("lc", "label_counts"), ("n", "samples"), ("acc", "val_acc"), ("b", "base"),
                              ("w", "mass"), ("rm", "row_mask"), ("kp", "keeps"))),
    "bye": (Bye, (("s", "sender"), ("why", "reason"))),
    "status_request": (StatusRequest, (("n", "nonce"),)),
    "status_reply": (StatusReply, (("n", "nonce"), ("st", "status"))),
}
_KIND_OF: dict[type, str] = {cls: kind for kind, (cls, _) in _SCHEMA.items()}
_PAYLOAD_KEYS = ("c", "sh", "d", "sc")  # codec, shape, data, scale


def kind_of(msg: Message) -> str:
    """The wire kind name of a message ("hello", "knowledge", ...)."""
    try:
        return _KIND_OF[type(msg)]
    except KeyError:
        raise LocalProtocolError("kind", f"not a wire message: {_tname(msg)}") from None


# ---------------------------------------------------------------------------------- encode/decode


def encode(msg: Message) -> bytes:
    """One message -> one msgpack frame body (not length-prefixed; see `frame`)."""
    kind = kind_of(msg)
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "k": kind}
    for key, name in _SCHEMA[kind][1]:
        value = getattr(msg, name)
        if isinstance(value, Encoded):
            value = {"c": value.codec, "sh": list(value.shape), "d": value.data, "sc": value.scale}
        out[key] = value
    data = msgpack.packb(out, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise LocalProtocolError("oversized", f"{kind} encodes to {len(data)} bytes; MAX_FRAME_BYTES is "
                                              f"{MAX_FRAME_BYTES} (use a smaller slice or a smaller codec)")
    return data


@dataclass(frozen=True)
class Expectations:
    """What this node expects from peers' knowledge; None leaves that check out.

    num_classes: logits payloads are (ref_count, num_classes), label_counts [] or num_classes long.
    param_count: params payloads are (param_count,).
    ref_size: a logits slice starts inside [0, ref_size) and has at most ref_size rows (it may wrap
    around the end, as Reference.rows does).
    """

    num_classes: int | None = None
    param_count: int | None = None
    ref_size: int | None = None

    def __post_init__(self) -> None:
        if self.num_classes is not None:
            _int("num_classes", self.num_classes, 1, MAX_CLASSES)
        if self.param_count is not None:
            _int("param_count", self.param_count, 0, MAX_PARAMS)
        if self.ref_size is not None:
            _int("ref_size", self.ref_size, 1, MAX_REF_ROWS)

    @classmethod
    def for_hello(cls, hello: Hello, *, ref_size: int | None = None) -> Expectations:
        """The expectations that follow from our own hello (peers must match it anyway)."""
        return cls(num_classes=hello.num_classes, param_count=hello.param_count, ref_size=ref_size)


def decode(data: bytes, *, expect: Expectations | None = None) -> Message:
    """One frame body -> one validated message; anything invalid raises RemoteProtocolError.

    Knowledge payloads are decoded here (the only way to know they are finite); `Knowledge.array()`
    then returns the cached values.
    """
    msg = _parse(data)
    _check_content(msg, expect)
    return msg


def _parse(data: bytes) -> Message:
    """Steps 1-5 of decoding: everything but the knowledge payload's shape and values."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LocalProtocolError("malformed", f"decode() takes bytes; got {_tname(data)}")
    # 1) size before parsing: never spend work on a frame we would reject anyway
    if len(data) > MAX_FRAME_BYTES:
        raise RemoteProtocolError("oversized", f"frame of {len(data)} bytes; MAX_FRAME_BYTES is {MAX_FRAME_BYTES}")
    # 2) parse with msgpack's own caps, so no single string/array/map can blow up
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_bin_len=MAX_FRAME_BYTES, max_str_len=MAX_STR_LEN,
            max_array_len=MAX_LIST_LEN, max_map_len=MAX_MAP_LEN, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, UnicodeDecodeError...
        over = "exceeds max_" in str(exc) and "max_ext_len" not in str(exc)
        raise RemoteProtocolError("oversized" if over else "malformed",
                                  f"not a valid msgpack frame: {type(exc).__name__}: {exc}"[:300]) from None
    # 3) envelope: a map with a known version and kind
    if not isinstance(obj, dict):
        raise RemoteProtocolError("malformed", f"frame must be a msgpack map; got {_tname(obj)}")
    version = obj.get("v")
    if type(version) is not int:
        raise RemoteProtocolError("malformed", f"frame needs an int 'v' (protocol version); got {_tname(version)}")
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError("version", f"peer speaks protocol version {version}; we speak {PROTOCOL_VERSION}")
    kind = obj.get("k")
    if not isinstance(kind, str):
        raise RemoteProtocolError("malformed", f"frame needs a str 'k' (message kind); got {_tname(kind)}")
    if kind not in _SCHEMA:
        raise RemoteProtocolError("kind", f"unknown message kind {kind[:40]!r}; known: {', '.join(_SCHEMA)}")
    cls, fields = _SCHEMA[kind]
    # 4) exactly the schema's keys: the schema is the versioned contract, additions bump the version
    want = {"v", "k", *(key for key, _ in fields)}
    missing = [f"{key} ({name})" for key, name in fields if key not in obj]
    extra = sorted(str(k)[:20] for k in obj.keys() - want)
    if missing or extra:
        raise RemoteProtocolError("malformed", f"{kind}: missing keys {missing or 'none'}, "
                                               f"unknown keys {extra or 'none'}")
    kwargs = {name: obj[key] for key, name in fields}
    if kind == "knowledge":
        kwargs["payload"] = _payload_from_wire(kwargs["payload"])
    # 5) field types and limits: the constructors' own checks, blamed on the peer
    try:
        return cls(**kwargs)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(exc.reason, f"{kind}: {exc}") from None


def _check_content(msg: Message, expect: Expectations | None) -> None:
    """Step 6 of decoding: knowledge shapes against what we expect, then the values themselves."""
    if isinstance(msg, Knowledge):
        _check_expected(msg, expect)
        try:
            msg.array()
        except NonFiniteError as exc:
            raise RemoteProtocolError("non-finite", f"knowledge payload: {exc}") from None
        except CodecError as exc:
            raise RemoteProtocolError("codec", f"knowledge payload: {exc}") from None


def _payload_from_wire(p: object) -> Encoded:
    if not isinstance(p, dict) or set(p) != set(_PAYLOAD_KEYS):
        got = sorted(map(str, p)) if isinstance(p, dict) else _tname(p)
        raise RemoteProtocolError("malformed", f"knowledge payload must be a map with keys "
                                               f"{list(_PAYLOAD_KEYS)}; got {got}")
    # types are checked by Knowledge.__post_init__; a list shape becomes a tuple there
    return Encoded(codec=p["c"], shape=p["sh"], data=p["d"], scale=p["sc"])


def _check_expected(k: Knowledge, expect: Expectations | None) -> None:
    if expect is None:
        return
    shape = k.payload.shape
    if k.kind == "logits":
        if expect.num_classes is not None and shape[1] != expect.num_classes:
            raise RemoteProtocolError("shape", f"logits payload has {shape[1]} classes; expected "
                                               f"{expect.num_classes} (shape {shape})")
        if expect.ref_size is not None and (k.ref_start >= expect.ref_size or k.ref_count > expect.ref_size):
            raise RemoteProtocolError("shape", f"reference slice (start {k.ref_start}, {k.ref_count} rows) does not "
                                               f"fit our reference set of {expect.ref_size} rows")
    elif k.kind in PER_CLASS_KINDS:
        wide = PER_CLASS_KINDS[k.kind] == "classes"
        want = (expect.num_classes, expect.num_classes if wide else shape[1])
        if expect.num_classes is not None and shape != want:
            raise RemoteProtocolError("shape", f"{k.kind} payload has shape {shape}; expected {want}")
    elif expect.param_count is not None and shape != (expect.param_count,):
        raise RemoteProtocolError("shape", f"params payload has shape {shape}; expected ({expect.param_count},)")
    if k.label_counts and expect.num_classes is not None and len(k.label_counts) != expect.num_classes:
        raise RemoteProtocolError("shape", f"label_counts has {len(k.label_counts)} entries; expected "
                                           f"{expect.num_classes} (or none)")
