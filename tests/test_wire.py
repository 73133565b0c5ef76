"""wire: every message round-trips; every way a peer can be wrong raises the right `reason`."""

import math
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl import codecs, wire
from p2pfl.wire import (
    TRANSITIONS, Bye, Expectations, FrameDecoder, Hello, Knowledge, LocalProtocolError, PeerSession,
    RemoteProtocolError, Role, State, StatusReply, StatusRequest,
)

C = 10  # classes in these tests
REF = 500  # reference rows


def hello(**kw) -> Hello:
    base = dict(node_id="alice", version=wire.PROTOCOL_VERSION, arch="mlp", mode="logits",
                num_classes=C, ref_digest="ab12" * 16, codecs=("int8", "fp16", "fp32"), param_count=0)
    return Hello(**{**base, **kw})


def logits(rows=4, classes=C, codec="fp16", start=0, seed=0) -> codecs.Encoded:
    x = np.random.default_rng(seed).standard_normal((rows, classes)).astype(np.float32)
    return codecs.encode(x, codec)


def knowledge(**kw) -> Knowledge:
    base = dict(sender="bob", round=3, time=12.5, kind="logits", ref_start=8, ref_count=4,
                payload=logits(), label_counts=tuple(range(C)), samples=450, val_acc=0.75)
    return Knowledge(**{**base, **kw})


def params(n=50, **kw) -> Knowledge:
    kw.setdefault("payload", codecs.encode(np.linspace(-1, 1, n), "fp32"))
    return knowledge(kind="params", ref_start=0, ref_count=0, **kw)


def tamper(msg, **changes) -> bytes:
    """The wire encoding of `msg` with keys replaced (or removed with ...)."""
    d = msgpack.unpackb(wire.encode(msg), raw=False)
    for k, v in changes.items():
        if v is ...:
            del d[k]
        else:
            d[k] = v
    return msgpack.packb(d, use_bin_type=True)


def tamper_payload(k: Knowledge, **changes) -> bytes:
    d = msgpack.unpackb(wire.encode(k), raw=False)
    d["p"].update(changes)
    return msgpack.packb(d, use_bin_type=True)


def rejects(data, reason, match=None, **kw) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        wire.decode(data, **kw)
    assert info.value.reason == reason, str(info.value)
    return info.value


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("msg", [
    hello(),
    hello(mode="fedavg", param_count=1234, codecs=()),
    hello(mode="adapter", param_count=640, adapter_shape=(64, 10), ref_digest=""),
    knowledge(),
    params(),
    knowledge(label_counts=()),
    Bye(sender="alice", reason="shutting down"),
    Bye(sender="alice", reason=""),
    StatusRequest(nonce=2**63 - 1),
    StatusReply(nonce=7, status={"round": 12, "acc": 0.5, "peers": ["bob", "carol"],
                                 "inbox": {"bob": {"round": 11, "stale": False}}, "note": None}),
])
def test_every_message_round_trips(msg):
    data = wire.encode(msg)
    assert isinstance(data, bytes)
    back = wire.decode(data)
    assert back == msg and type(back) is type(msg)
    assert wire.encode(back) == data  # stable encoding


@settings(max_examples=100, deadline=None)
@given(
    rows=st.integers(1, 20), classes=st.integers(1, 30), start=st.integers(0, 1000),
    codec=st.sampled_from(sorted(codecs.CODECS)), seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-3, 1e3), rnd=st.integers(0, 2**63 - 1),
    time=st.floats(allow_nan=False, allow_infinity=False), acc=st.floats(0, 1),
)
def test_knowledge_round_trips(rows, classes, start, codec, seed, scale, rnd, time, acc):
    x = (np.random.default_rng(seed).standard_normal((rows, classes)) * scale).astype(np.float32)
    k = knowledge(round=rnd, time=time, ref_start=start, ref_count=rows, payload=codecs.encode(x, codec),
                  label_counts=tuple(range(classes)), val_acc=acc)
    back = wire.decode(wire.encode(k), expect=Expectations(num_classes=classes, ref_size=start + rows))
    assert back == k
    np.testing.assert_array_equal(back.array(), codecs.decode(k.payload, max_elements=rows * classes))
    assert (np.abs(back.array() - x) <= codecs.CODECS[codec].error_bound(x)).all()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3000), codec=st.sampled_from(sorted(codecs.CODECS)))
def test_params_knowledge_round_trips(n, codec):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    k = params(payload=codecs.encode(x, codec))
    back = wire.decode(wire.encode(k), expect=Expectations(param_count=n))
    assert back == k and back.array().shape == (n,)


def test_decoded_array_is_cached_and_read_only():
    k = wire.decode(wire.encode(knowledge()))
    a = k.array()
    assert a is k.array() and not a.flags.writeable


def test_local_construction_normalises_numpy_values():
    counts = np.bincount([0, 1, 1], minlength=C)  # np.int64 items, the natural thing to pass
    k = knowledge(label_counts=counts, samples=np.int64(3), round=np.int32(1), time=np.float32(2.0))
    assert k.label_counts == (1, 2) + (0,) * (C - 2) and type(k.samples) is int and type(k.time) is float
    assert wire.decode(wire.encode(k)) == k


# --------------------------------------------------------------------------- malformed frames


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x91", b"\xff" * 7, msgpack.packb(5), msgpack.packb([1, 2]),
                                  msgpack.packb("hello"), msgpack.packb({1: 2}), msgpack.packb(None),
                                  msgpack.packb(msgpack.ExtType(3, b"x"))])
def test_garbage_is_malformed(data):
    rejects(data, "malformed")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data):
    with pytest.raises(RemoteProtocolError) as info:
        wire.decode(data)
    assert info.value.reason in wire.REASONS


@pytest.mark.parametrize("msg", [hello(), knowledge(), Bye("a", "x"), StatusReply(1, {"a": [1, 2]})])
def test_every_truncation_is_rejected(msg):
    data = wire.encode(msg)
    for cut in range(len(data)):
        rejects(data[:cut], "malformed")


def test_trailing_bytes_are_malformed():
    rejects(wire.encode(hello()) + b"\x00", "malformed")


def test_a_msgpack_int_instead_of_a_map():
    rejects(msgpack.packb(1), "malformed", match="must be a msgpack map; got int")


@pytest.mark.parametrize("msg", [hello(), knowledge(), Bye("a", "b"), StatusRequest(1), StatusReply(1, {})])
def test_every_missing_field_is_named(msg):
    d = msgpack.unpackb(wire.encode(msg), raw=False)
    for key in set(d) - {"v", "k"}:
        rejects(tamper(msg, **{key: ...}), "malformed", match=f"missing keys .*'{key} ")


def test_unknown_field_is_malformed():
    rejects(tamper(hello(), extra=1), "malformed", match="unknown keys \\['extra'\\]")


def test_payload_map_needs_exactly_its_keys():
    d = msgpack.unpackb(wire.encode(knowledge()), raw=False)
    del d["p"]["sc"]
    rejects(msgpack.packb(d, use_bin_type=True), "malformed", match="payload must be a map")
    rejects(tamper(knowledge(), p=b"raw"), "malformed", match="payload must be a map")


@pytest.mark.parametrize("msg, key, value", [
    (hello(), "nc", "10"),
    (hello(), "nc", True),  # bool is not an int
    (hello(), "nc", 10.0),
    (hello(), "pv", False),
    (hello(), "id", 5),
    (hello(), "id", ""),
    (hello(), "id", "eve\nINFO forged log line"),
    (hello(), "cod", "fp16"),  # a str where a list belongs
    (hello(), "cod", [1]),
    (hello(), "ad", [3, True]),
    (hello(), "ad", [0]),
    (hello(), "np", -1),
    (knowledge(), "r", True),
    (knowledge(), "r", -1),
    (knowledge(), "r", 1.5),
    (knowledge(), "t", "now"),
    (knowledge(), "t", True),
    (knowledge(), "acc", True),
    (knowledge(), "acc", 1.5),
    (knowledge(), "lc", [1, "2"]),
    (knowledge(), "lc", [-1] * C),
    (knowledge(), "lc", {"a": 1}),
    (knowledge(), "n", None),
    (knowledge(), "rs", -3),
    (StatusRequest(1), "n", "1"),
    (StatusReply(1, {}), "st", [1, 2]),
    (StatusReply(1, {}), "st", {"x": msgpack.ExtType(1, b"")}),
    (Bye("a", "b"), "why", b"bytes"),
])
def test_wrong_field_types_are_malformed(msg, key, value):
    rejects(tamper(msg, **{key: value}), "malformed")


@pytest.mark.parametrize("key, value", [("c", 5), ("sh", "4,10"), ("sh", [4, True]), ("d", "text"), ("sc", None)])
def test_wrong_payload_field_types_are_malformed(key, value):
    rejects(tamper_payload(knowledge(), **{key: value}), "malformed")


def test_unknown_kind():
    rejects(tamper(hello(), k="gossip"), "kind", match="unknown message kind 'gossip'; known: hello")
    rejects(tamper(knowledge(), kn="gradients"), "kind", match="unknown knowledge kind 'gradients'")


@pytest.mark.parametrize("v", [0, 1, 2, 4, 99])  # 1: before knowledge had a base; 2: before it had keeps
def test_unknown_version(v):
    rejects(tamper(hello(), v=v), "version", match=f"protocol version {v}; we speak 3")


@pytest.mark.parametrize("v", [..., "1", True, 1.0])
def test_missing_or_mistyped_version_is_malformed(v):
    rejects(tamper(hello(), v=v), "malformed")


# ------------------------------------------------------------------------------------ limits


def test_oversized_frame_is_rejected_before_parsing():
    rejects(b"\x00" * (wire.MAX_FRAME_BYTES + 1), "oversized", match="MAX_FRAME_BYTES")


@pytest.mark.parametrize("msg, key, value", [
    (hello(), "id", "x" * (wire.MAX_ID_LEN + 1)),
    (hello(), "id", "x" * (wire.MAX_STR_LEN + 1)),  # caught by msgpack's own cap
    (hello(), "nc", wire.MAX_CLASSES + 1),
    (hello(), "np", wire.MAX_PARAMS + 1),
    (hello(), "cod", ["fp16"] * (wire.MAX_CODECS + 1)),
    (hello(), "ad", [10**4, 10**4]),
    (knowledge(), "r", 2**64 - 1),
    (knowledge(), "lc", [1] * (wire.MAX_CLASSES + 1)),
    (knowledge(), "lc", [1] * (wire.MAX_LIST_LEN + 1)),  # caught by msgpack's own cap
    (knowledge(), "rs", wire.MAX_REF_ROWS),  # slice ends beyond MAX_REF_ROWS
    (Bye("a", "b"), "why", "x" * (wire.MAX_STR_LEN + 1)),
    (StatusReply(1, {}), "st", {str(i): i for i in range(wire.MAX_MAP_LEN + 1)}),
    (StatusReply(1, {}), "st", {"a": {"b": {"c": {"d": {"e": 1}}}}}),
])
def test_beyond_hard_limits_is_oversized(msg, key, value):
    rejects(tamper(msg, **{key: value}), "oversized")


def test_huge_payload_shape_is_oversized_not_allocated():
    rejects(tamper_payload(knowledge(), sh=[4, 10**9]), "oversized")
    rejects(tamper_payload(knowledge(), sh=[4, wire.MAX_CLASSES + 1]), "oversized")
    k = params()
    rejects(tamper_payload(k, sh=[wire.MAX_PARAMS + 1]), "oversized")
    rejects(tamper_payload(k, sh=[10**12]), "oversized")


def test_encoding_an_oversized_message_is_a_local_error():
    big = params(payload=codecs.encode(np.zeros(5_000_000, dtype=np.float32), "fp32"))  # 20 MB
    with pytest.raises(LocalProtocolError) as info:
        wire.encode(big)
    assert info.value.reason == "oversized"


# ----------------------------------------------------------------------- payload values/shapes


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_payload(bad):
    x = np.ones((4, C), dtype="<f4")
    x[2, 3] = bad
    rejects(tamper_payload(knowledge(), c="fp32", d=x.tobytes(), sc=b""), "non-finite")
    h = x.astype("<f2")
    rejects(tamper_payload(knowledge(), c="fp16", d=h.tobytes(), sc=b""), "non-finite")


def test_non_finite_int8_scale():
    k = knowledge(payload=logits(codec="int8"))  # 4 rows of 10 classes: one scale for the group
    scales = np.full(1, np.nan, dtype="<f4")
    rejects(tamper_payload(k, sc=scales.tobytes()), "non-finite")


@pytest.mark.parametrize("key", ["t", "acc"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_float_fields(key, bad):
    rejects(tamper(knowledge(), **{key: bad}), "non-finite")


def test_non_finite_status_value():
    rejects(tamper(StatusReply(1, {}), st={"acc": math.nan}), "non-finite")


def test_payload_bytes_that_do_not_fit_the_codec():
    k = knowledge()
    rejects(tamper_payload(k, d=k.payload.data[:-1]), "codec", match="needs 80 data bytes")
    rejects(tamper_payload(k, c="int8"), "codec", match="scale bytes")
    rejects(tamper_payload(k, c="zstd"), "codec", match="unknown payload codec 'zstd'")


@pytest.mark.parametrize("sh", [[5, C], [4], [4, C, 1], [4, 0], [0, C]])
def test_logits_payload_must_be_ref_count_by_classes(sh):
    rejects(tamper_payload(knowledge(), sh=sh), "shape")


def test_params_payload_must_be_flat_without_a_slice():
    k = params()
    rejects(tamper_payload(k, sh=[5, 10]), "shape")
    rejects(tamper(k, rc=4), "shape")
    rejects(tamper(knowledge(), rc=0), "shape")


def prototypes(d=8, kind="prototypes", **kw) -> Knowledge:
    kw.setdefault("payload", codecs.encode(np.random.default_rng(0).standard_normal((C, d)), "fp16"))
    return knowledge(kind=kind, ref_start=0, ref_count=0, **kw)


def test_prototypes_are_classes_by_embedding_without_a_slice():
    k = prototypes()
    back = wire.decode(wire.encode(k), expect=Expectations(num_classes=C))
    assert back == k and back.array().shape == (C, 8)
    for sh in ([C * 8], [C, 8, 1], [C, 0], [C, 5000]):
        rejects(tamper_payload(k, sh=sh), "shape")
    rejects(tamper(k, rc=4), "shape")
    with pytest.raises(RemoteProtocolError, match=r"prototypes payload has shape \(3, 8\); expected"):
        wire.decode(wire.encode(prototypes(payload=codecs.encode(np.zeros((3, 8)), "fp16"), label_counts=(1, 2, 3))),
                    expect=Expectations(num_classes=C))


def test_class_logits_are_classes_by_classes():
    k = prototypes(d=C, kind="class-logits")
    assert wire.decode(wire.encode(k), expect=Expectations(num_classes=C)) == k
    assert wire.decode(wire.encode(k), expect=Expectations(param_count=50)) == k  # not judged as params
    rejects(tamper_payload(k, sh=[C, 2000]), "shape")  # rows of classes: at most MAX_CLASSES wide
    with pytest.raises(RemoteProtocolError, match=r"class-logits payload has shape \(10, 8\)"):
        wire.decode(wire.encode(prototypes(d=8, kind="class-logits")), expect=Expectations(num_classes=C))


def test_a_delta_frame_names_an_earlier_round_as_its_base():
    k = params(round=7, base=4)
    assert wire.decode(wire.encode(k)) == k and wire.decode(wire.encode(params())).base == -1
    for bad in (7, 9):  # not earlier than the frame's own round
        rejects(tamper(k, b=bad), "malformed", match=f"base {bad} must be an earlier round than 7")
    rejects(tamper(k, b=-2), "malformed", match="base must be >= -1")
    rejects(tamper(k, b=...), "malformed", match=r"missing keys \['b \(base\)'\]")


def test_shapes_checked_against_expectations():
    expect = Expectations(num_classes=C, param_count=50, ref_size=REF)
    wire.decode(wire.encode(knowledge()), expect=expect)
    wire.decode(wire.encode(params()), expect=expect)
    rejects(wire.encode(knowledge(payload=logits(classes=7), label_counts=())), "shape",
            match="7 classes; expected 10", expect=expect)
    wire.decode(wire.encode(knowledge(ref_start=REF - 2)), expect=expect)  # wraps around the end: legal
    rejects(wire.encode(knowledge(ref_start=REF)), "shape", match="does not fit our reference set", expect=expect)
    rejects(wire.encode(params(n=49)), "shape", match=r"expected \(50,\)", expect=expect)
    rejects(wire.encode(knowledge(label_counts=(1, 2))), "shape", match="label_counts has 2", expect=expect)


# -------------------------------------------------------------------------------------- framing


def test_frame_and_decoder_round_trip_any_split():
    bodies = [wire.encode(hello()), wire.encode(knowledge()), b"", wire.encode(Bye("a", "b"))]
    stream = b"".join(wire.frame(b) for b in bodies)
    for step in (1, 3, 7, len(stream)):
        dec = FrameDecoder()
        got = []
        for i in range(0, len(stream), step):
            dec.feed(stream[i:i + step])
            while (f := dec.next_frame()) is not None:
                got.append(f)
        dec.feed_eof()
        assert got == bodies


@settings(max_examples=50, deadline=None)
@given(bodies=st.lists(st.binary(max_size=300), max_size=5), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_framing_is_split_agnostic(bodies, cuts):
    stream = b"".join(wire.frame(b) for b in bodies)
    dec, got, prev = FrameDecoder(), [], 0
    for c in sorted(set(cuts)) + [len(stream)]:
        dec.feed(stream[prev:c])
        prev = max(prev, c)
        while (f := dec.next_frame()) is not None:
            got.append(f)
    assert got == bodies


def test_a_100mb_length_prefix_is_refused_before_buffering():
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        dec.feed(struct.pack(">I", 100 * 1024 * 1024))  # the header alone: refused at once
    assert info.value.reason == "oversized" and "104857600-byte frame" in str(info.value)
    with pytest.raises(RemoteProtocolError):  # the stream stays dead: its framing can't be trusted
        dec.feed(b"\x00" * 1000)


def test_oversized_header_after_a_good_frame_keeps_the_good_frame():
    good = wire.frame(b"ok")
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        dec.feed(good + struct.pack(">I", 2**32 - 1) + b"\x00" * 64)
    assert dec.next_frame() == b"ok" and dec.next_frame() is None
    assert len(dec._body or b"") == 0  # nothing of the oversized body was kept


def test_truncated_stream_is_malformed_at_eof():
    data = wire.frame(wire.encode(hello()))
    for cut in (2, 4, len(data) - 1):
        dec = FrameDecoder()
        dec.feed(data[:cut])
        assert dec.next_frame() is None
        with pytest.raises(RemoteProtocolError) as info:
            dec.feed_eof()
        assert info.value.reason == "malformed" and "stream ended inside a frame" in str(info.value)


def test_frame_refuses_oversized_bodies_locally():
    with pytest.raises(LocalProtocolError):
        wire.frame(b"\x00" * (wire.MAX_FRAME_BYTES + 1))


# ---------------------------------------------------------------------------------- peer session


def session(**kw) -> PeerSession:
    return PeerSession(hello(**kw), Expectations.for_hello(hello(**kw), ref_size=REF))


def ready(**kw) -> PeerSession:
    s = session(**kw)
    s.receive(wire.encode(hello(**{**kw, "node_id": "bob", "arch": kw.get("arch", "cnn1d")})))
    assert s.their_state is State.READY
    return s


def refused(s: PeerSession, msg_or_bytes, reason, match=None) -> RemoteProtocolError:
    data = msg_or_bytes if isinstance(msg_or_bytes, bytes) else wire.encode(msg_or_bytes)
    before = (s.their_state, s.peer)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        s.receive(data)
    assert info.value.reason == reason, str(info.value)
    assert (s.their_state, s.peer) == before  # a rejected message changes nothing
    return info.value


def test_hello_knowledge_bye():
    s = session()
    assert s.their_state is State.NEW
    assert s.receive(wire.encode(hello(node_id="bob", arch="gru"))).arch == "gru"  # archs may differ
    assert s.their_state is State.READY and s.peer.node_id == "bob"
    k = s.receive(wire.encode(knowledge()))
    assert k.array().shape == (4, C)
    s.receive(wire.encode(Bye("bob", "done")))
    assert s.their_state is State.CLOSED
    refused(s, knowledge(), "state", match="not allowed when the peer is closed")
    # a hello now starts a new session: test_a_peer_back_after_bye_starts_a_new_session


def test_a_restarted_peer_starts_a_new_session():
    s = session()
    s.send(s.local_hello)
    first = hello(node_id="bob", incarnation=1)
    s.receive(wire.encode(first))
    s.receive(wire.encode(first))  # a resend (reconnect): nothing changes
    assert s.our_state is State.READY
    s.receive(wire.encode(hello(node_id="bob", incarnation=2)))  # same node, new process
    assert s.their_state is State.READY and s.peer.incarnation == 2
    assert s.our_state is State.NEW  # it forgot our hello: we must greet it again before sharing
    with pytest.raises(LocalProtocolError, match="cannot send knowledge when we are new"):
        s.send(knowledge(sender="alice"))
    refused(s, hello(node_id="bob", arch="gru", incarnation=3), "state", match="second, different hello")


def test_a_restart_starts_a_new_epoch():
    s = ready()
    assert s.epoch == 0
    s.receive(wire.encode(hello(node_id="bob", arch="cnn1d", incarnation=2)))
    assert s.epoch == 1
    s.receive(wire.encode(hello(node_id="bob", arch="cnn1d", incarnation=2)))  # a resend: same session
    assert s.epoch == 1
    s.receive(wire.encode(hello(node_id="bob", arch="cnn1d", incarnation=3)))
    assert s.epoch == 2


def test_a_peer_back_after_bye_starts_a_new_session():
    s = session()
    s.send(s.local_hello)
    s.receive(wire.encode(hello(node_id="bob", incarnation=1)))
    s.send(StatusRequest(7))
    s.receive(wire.encode(StatusRequest(3)))
    s.receive(wire.encode(Bye("bob", "done")))
    assert (s.their_state, s.our_state, s.epoch) == (State.CLOSED, State.READY, 0)
    refused(s, knowledge(), "state", match="knowledge is not allowed when the peer is closed")
    refused(s, hello(node_id="bob", num_classes=100), "mismatch", match="number of classes differs")
    assert s.epoch == 0
    # whatever a fresh session accepts: the same incarnation, even another architecture
    back = hello(node_id="bob", arch="gru", incarnation=1)
    assert s.receive(wire.encode(back)) == back
    assert (s.their_state, s.our_state, s.epoch, s.peer) == (State.READY, State.NEW, 1, back)
    refused(s, StatusReply(7, {}), "state", match="nonce 7 we never asked for")  # its old requests are gone
    local_error(lambda: s.send(StatusReply(3, {})), "state")  # and so are its requests
    with pytest.raises(LocalProtocolError, match="cannot send knowledge when we are new"):
        s.send(knowledge(sender="alice"))
    s.send(s.local_hello)  # greet it again, then share
    s.send(knowledge(sender="alice"))


def test_a_peer_back_after_bye_before_its_hello():
    s = session()
    s.receive(wire.encode(Bye("bob", "")))
    s.receive(wire.encode(hello(node_id="bob")))
    assert (s.their_state, s.our_state, s.epoch) == (State.READY, State.NEW, 1)


def test_knowledge_before_hello():
    refused(session(), knowledge(), "state", match="knowledge is not allowed when the peer is new")


def test_status_and_bye_are_legal_before_hello():
    s = session()
    assert s.receive(wire.encode(StatusRequest(5))) == StatusRequest(5)
    assert s.their_state is State.NEW
    s.receive(wire.encode(Bye("whoever", "")))
    assert s.their_state is State.CLOSED


def test_identical_hello_again_is_fine_a_different_one_is_not():
    s = ready()
    s.receive(wire.encode(hello(node_id="bob", arch="cnn1d")))
    refused(s, hello(node_id="bob", arch="gru"), "state", match="second, different hello")


def test_knowledge_from_another_sender_on_this_session():
    refused(ready(), knowledge(sender="mallory"), "state", match="'mallory' on the session of 'bob'")
    refused(ready(), Bye("mallory", ""), "state")


def test_knowledge_kind_must_be_used_by_the_mode():
    refused(ready(), params(n=1), "state", match="params knowledge is not used in mode 'logits'")
    s = ready(mode="fedavg", arch="mlp", param_count=50)
    assert s.receive(wire.encode(params())).kind == "params"
    refused(s, knowledge(), "state")


def test_payload_codec_must_be_one_we_offered():
    s = ready(codecs=("int8",))
    refused(s, knowledge(payload=logits(codec="fp16")), "codec", match="'fp16' was not offered; we decode int8")


def test_session_checks_expectations():
    refused(ready(), knowledge(ref_start=REF), "shape", match="does not fit our reference set")


@pytest.mark.parametrize("change, words", [
    (dict(ref_digest="cd34" * 16), "reference digest differs: ours ab12ab12ab12.., theirs cd34cd34cd34..; "
                                   "both nodes must use the same [reference] spec"),
    (dict(num_classes=100), "number of classes differs: ours 10, theirs 100"),
    (dict(mode="fedavg"), "mode differs: ours logits, theirs fedavg"),
    (dict(version=4), "protocol version differs: ours 3, theirs 4"),
    (dict(node_id="alice"), "peer uses our own node id 'alice'"),
])
def test_hello_mismatch_names_the_field(change, words):
    s = session()
    err = refused(s, hello(**{"node_id": "bob", **change}), "mismatch")
    assert words in str(err)
    assert s.their_state is State.NEW and s.peer is None


def test_fedavg_needs_same_arch_and_param_count():
    s = session(mode="fedavg", param_count=50)
    err = refused(s, hello(node_id="bob", mode="fedavg", arch="cnn1d", param_count=60), "mismatch")
    assert "architecture differs: ours mlp, theirs cnn1d" in str(err)
    assert "parameter count differs: ours 50, theirs 60" in str(err)  # every difference, in one message
    s.receive(wire.encode(hello(node_id="bob", mode="fedavg", param_count=50)))


def test_adapter_mode_needs_same_adapter_but_not_same_arch():
    s = session(mode="adapter", param_count=640, adapter_shape=(64, 10))
    refused(s, hello(node_id="bob", mode="adapter", param_count=640, adapter_shape=(32, 20)), "mismatch",
            match="adapter shape differs")
    s.receive(wire.encode(hello(node_id="bob", arch="gru", mode="adapter", param_count=640, adapter_shape=(64, 10))))


def test_status_reply_only_for_our_nonce():
    s = session()
    refused(s, StatusReply(9, {}), "state", match="nonce 9 we never asked for")
    s.send(StatusRequest(9))
    assert s.receive(wire.encode(StatusReply(9, {"ok": True}))).status == {"ok": True}
    refused(s, StatusReply(9, {}), "state")  # answered once


def test_decode_errors_pass_through_the_session():
    refused(session(), b"\xc1", "malformed")
    refused(ready(), tamper_payload(knowledge(), sh=[4, 7]), "shape")


# ------------------------------------------------------------------------------ local misuse


def local_error(fn, reason):
    with pytest.raises(LocalProtocolError) as info:
        fn()
    assert info.value.reason == reason, str(info.value)


def test_sending_follows_the_same_table():
    s = session()
    local_error(lambda: s.send(knowledge(sender="alice")), "state")  # we haven't said hello
    assert wire.decode(s.send(s.local_hello)) == s.local_hello
    local_error(lambda: s.send(hello(arch="other")), "state")
    local_error(lambda: s.send(knowledge(sender="alice")), "state")  # they haven't said hello
    s.receive(wire.encode(hello(node_id="bob", codecs=("fp32",))))
    assert s.common_codecs == ("fp32",)
    local_error(lambda: s.send(knowledge(sender="alice")), "codec")  # fp16: bob doesn't decode it
    local_error(lambda: s.send(knowledge(sender="bob", payload=logits(codec="fp32"))), "state")
    s.send(knowledge(sender="alice", payload=logits(codec="fp32")))
    local_error(lambda: s.send(StatusReply(1, {})), "state")  # nobody asked
    s.send(Bye("alice", "bye"))
    assert s.our_state is State.CLOSED
    local_error(lambda: s.send(StatusRequest(1)), "state")


def _in_state(role: Role, state: State) -> PeerSession:
    s = session()
    if state is not State.NEW:
        s.send(s.local_hello) if role is Role.OURS else s.receive(wire.encode(hello(node_id="bob")))
    if state is State.CLOSED:
        s.send(Bye("alice", "")) if role is Role.OURS else s.receive(wire.encode(Bye("bob", "")))
    assert (s.our_state if role is Role.OURS else s.their_state) is state
    return s


def _one_of_each(role: Role, s: PeerSession) -> dict:
    me = "alice" if role is Role.OURS else "bob"
    return {"hello": s.local_hello if role is Role.OURS else hello(node_id="bob"),
            "knowledge": knowledge(sender=me), "bye": Bye(me, ""),
            "status_request": StatusRequest(1), "status_reply": StatusReply(1, {})}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("state", list(State))
def test_one_rule_path_refuses_what_the_table_lacks_on_both_sides(role, state):
    refusals = []
    for kind in _one_of_each(role, session()):
        if (state, kind) in TRANSITIONS[role]:
            continue
        s = _in_state(role, state)
        msg = _one_of_each(role, s)[kind]
        before = (s.our_state, s.their_state, s.peer, s.epoch)
        if role is Role.OURS:
            with pytest.raises(LocalProtocolError, match=f"cannot send {kind} when we are {state.value}") as info:
                s.send(msg)
        else:
            with pytest.raises(RemoteProtocolError, match=f"{kind} is not allowed when the peer is {state.value}") \
                    as info:
                s.receive(wire.encode(msg))
        assert info.value.reason == "state"
        assert (s.our_state, s.their_state, s.peer, s.epoch) == before
        refusals.append(kind)
    # NEW: knowledge; READY: nothing; CLOSED: everything, but the peer may come back with a hello
    assert len(refusals) == {State.NEW: 1, State.READY: 0, State.CLOSED: 5 if role is Role.OURS else 4}[state]


def test_the_tables_differ_only_in_the_peer_coming_back():
    ours, theirs = TRANSITIONS[Role.OURS], TRANSITIONS[Role.THEIRS]
    assert set(theirs.items()) - set(ours.items()) == {((State.CLOSED, "hello"), State.READY)}
    assert set(ours) <= set(theirs)
    assert not any(state is State.CLOSED and kind != "hello" for state, kind in theirs)  # knowledge after bye: never


def test_invalid_local_messages():
    local_error(lambda: knowledge(round=True), "malformed")
    local_error(lambda: knowledge(time=math.nan), "non-finite")
    local_error(lambda: knowledge(kind="grads"), "kind")
    local_error(lambda: knowledge(payload=logits(rows=5)), "shape")
    local_error(lambda: hello(num_classes=0), "malformed")
    local_error(lambda: hello(node_id="x" * 200), "oversized")
    local_error(lambda: StatusReply(1, {"x": object()}), "malformed")
    local_error(lambda: PeerSession(hello(mode="logit")), "mismatch")
    local_error(lambda: PeerSession(hello(codecs=("int5",))), "codec")
    local_error(lambda: wire.encode("hello"), "kind")


def test_reasons_are_a_fixed_set():
    with pytest.raises(ValueError, match="choose one of"):
        RemoteProtocolError("bad vibes", "x")


def test_answering_status_requests():
    s = session()
    s.receive(wire.encode(StatusRequest(4)))
    reply = s.send(StatusReply(4, {"round": 1}))
    assert wire.decode(reply) == StatusReply(4, {"round": 1})
    local_error(lambda: s.send(StatusReply(4, {})), "state")  # answered already
    for nonce in range(100):  # a flood: only the newest few are remembered
        s.receive(wire.encode(StatusRequest(nonce)))
    local_error(lambda: s.send(StatusReply(0, {})), "state")
    s.send(StatusReply(99, {}))
