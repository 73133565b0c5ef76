"""Codecs: round trips within each codec's error bound, exact sizes, and hostile `Encoded` inputs."""

import math
import tracemalloc
import zlib

import constriction
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pfl import codecs
from p2pfl.codecs import CODECS, CodecError, Encoded, NonFiniteError

NAMES = sorted(CODECS)
BIG = 10**9  # a generous budget for round trips; the adversarial tests use tight ones

arrays = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
    elements=st.floats(-1e4, 1e4, width=32),
)


def roundtrip(x, name):
    e = codecs.encode(x, name)
    return e, codecs.decode(e, max_elements=BIG)


def rejected_peak_bytes(e: Encoded, max_elements: int, match: str) -> int:
    """Decode `e`, expecting a CodecError matching `match`; the peak memory allocated meanwhile."""
    tracemalloc.start()  # numpy reports its data buffers to tracemalloc
    try:
        with pytest.raises(CodecError, match=match):
            codecs.decode(e, max_elements=max_elements)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def int8_scales(e: Encoded) -> np.ndarray:
    return np.frombuffer(e.scale, dtype="<f4")


# ---------------------------------------------------------------------------------- round trips


@settings(max_examples=150, deadline=None)
@given(x=arrays, name=st.sampled_from(NAMES))
def test_roundtrip_within_error_bound(x, name):
    e, y = roundtrip(x, name)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert e.shape == x.shape and e.codec == name
    err = np.abs(y - x)
    bound = CODECS[name].error_bound(x)
    assert (err <= bound).all(), f"{name}: max excess {(err - bound).max()}"
    data_len, scale_len = CODECS[name].sizes(x.shape)
    assert e.nbytes == len(e.data) + len(e.scale) and len(e.scale) == scale_len
    if CODECS[name].compressed:  # entropy-coded data: sizes() bounds it
        assert len(e.data) <= data_len
    else:
        assert len(e.data) == data_len


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), (3, 0, 2), ()])
def test_empty_and_scalar_shapes(name, shape):
    x = np.full(shape, 1.5, dtype=np.float32)
    e, y = roundtrip(x, name)
    assert y.shape == shape
    np.testing.assert_allclose(y, x, rtol=1e-2)
    if x.size == 0:
        assert e.nbytes == 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("x", [
    np.zeros((4, 7)),  # all-zero rows: int8 scale 0 must not divide by zero
    np.full((3, 5), -2.25),  # all-equal rows are exact in every codec (q = +-127 exactly)
    np.full((1, 9), 7.5),  # a single row
    np.zeros(0),
])
def test_exact_special_arrays(name, x):
    _, y = roundtrip(x, name)
    np.testing.assert_array_equal(y, x.astype(np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_single_row_within_bound(name):
    x = np.arange(-40.0, 60.0, 0.7, dtype=np.float32).reshape(1, -1)  # (1, n)
    _, y = roundtrip(x, name)
    assert (np.abs(y - x) <= CODECS[name].error_bound(x)).all()


def test_fp32_is_lossless_and_4_bytes_per_value():
    x = np.random.default_rng(0).standard_normal((5, 11)).astype(np.float32)
    e, y = roundtrip(x, "fp32")
    np.testing.assert_array_equal(y, x)
    assert e.nbytes == 4 * x.size


def test_fp16_relative_error_about_1e3():
    x = np.random.default_rng(1).uniform(-1000, 1000, size=(50, 40)).astype(np.float32)
    x = x[np.abs(x) > 1e-3]  # normal fp16 range: relative error <= 2**-11 ~ 4.9e-4
    e, y = roundtrip(x, "fp16")
    assert (np.abs(y - x) <= 1e-3 * np.abs(x)).all()
    assert e.nbytes == 2 * x.size


def test_int8_error_at_most_half_a_step_per_row():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((20, 300)) * rng.uniform(0.01, 100, size=(20, 1))).astype(np.float32)
    e, y = roundtrip(x, "int8")  # rows of >= INT8_CHUNK values: one scale each
    s = int8_scales(e)
    assert s.shape == (20,)
    np.testing.assert_allclose(s, np.abs(x).max(axis=1) / 127, rtol=1e-6)
    assert (np.abs(y - x) <= s[:, None] / 2 * (1 + 1e-6)).all()
    assert e.nbytes == x.size + 4 * 20


def test_short_rows_share_a_scale_per_group_of_whole_rows():
    x = np.random.default_rng(3).standard_normal((2000, 10)).astype(np.float32)  # quickstart logits
    e, y = roundtrip(x, "int8")
    s = int8_scales(e)
    per_group = codecs.INT8_CHUNK // 10  # 25 rows of 10 classes
    assert s.shape == (2000 // per_group,)
    np.testing.assert_allclose(s, np.abs(x).reshape(-1, per_group * 10).max(axis=1) / 127, rtol=1e-6)
    assert e.nbytes == x.size + 4 * len(s)  # 20,320 bytes: scales are 1.6% on top, not 40%


def test_int8_1d_uses_local_chunk_scales():
    x = np.full(1000, 0.01, dtype=np.float32)
    x[0] = 1000.0  # an outlier coarsens only its own chunk
    e, y = roundtrip(x, "int8")
    s = int8_scales(e)
    assert len(s) == math.ceil(1000 / codecs.INT8_CHUNK)
    np.testing.assert_allclose(y[codecs.INT8_CHUNK:], 0.01, rtol=1e-2)
    assert e.nbytes == 1000 + 4 * len(s)


def test_integer_and_float64_inputs_are_accepted():
    _, y = roundtrip(np.arange(6).reshape(2, 3), "fp32")
    np.testing.assert_array_equal(y, np.arange(6, dtype=np.float32).reshape(2, 3))
    _, y = roundtrip(np.linspace(0, 1, 7), "fp16")
    assert y.dtype == np.float32


def test_decoded_array_is_a_fresh_writable_float32():
    _, y = roundtrip(np.ones((2, 2)), "fp32")
    y[0, 0] = 5  # not a read-only view of the wire bytes
    assert y.flags.c_contiguous


# ------------------------------------------------------------------------------- encode errors


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_rejected(name, bad):
    x = np.ones((3, 4), dtype=np.float32)
    x[1, 2] = bad
    with pytest.raises(NonFiniteError, match="non-finite"):
        codecs.encode(x, name)
    assert issubclass(NonFiniteError, CodecError)


def test_float64_beyond_float32_range_is_rejected():
    with pytest.raises(CodecError, match="float32 range"):
        codecs.encode(np.array([1e300]), "fp32")


def test_fp16_overflow_says_what_to_use():
    with pytest.raises(CodecError, match="use fp32 or int8"):
        codecs.encode(np.array([1e5], dtype=np.float32), "fp16")


def test_unknown_codec_lists_the_choices():
    with pytest.raises(CodecError, match="unknown codec 'int5'; choose one of: fp32 | fp16 | int8 | int4 .*topk:K"):
        codecs.encode(np.ones(3), "int5")
    with pytest.raises(CodecError, match="choose one of"):
        codecs.parse_codec("FP16")
    assert codecs.parse_codec("int8").name == "int8"


def test_non_numeric_and_too_many_dims_are_rejected():
    with pytest.raises(CodecError, match="dtype"):
        codecs.encode(np.array(["a"]), "fp32")
    with pytest.raises(CodecError, match="dimensions"):
        codecs.encode(np.zeros((1,) * (codecs.MAX_NDIM + 1)), "fp32")


# --------------------------------------------------------------------------- hostile Encodeds


def good(name="int8", shape=(4, 6)):
    return codecs.encode(np.random.default_rng(3).standard_normal(shape), name)


def f32(*values) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


@pytest.mark.parametrize("e, match", [
    (Encoded("fp32", (4,), b"\0" * 15), "needs 16 data bytes"),  # truncated
    (Encoded("fp32", (4,), b"\0" * 17), "needs 16 data bytes"),  # trailing junk
    (Encoded("fp16", (2, 3), b"\0" * 24), "got 24"),  # fp32-sized data labelled fp16
    (Encoded("int8", (2, 300), b"\0" * 600, f32(1.0)), "8 scale bytes"),  # one scale for two long rows
    (Encoded("int8", (2, 3), b"\0" * 6), "4 scale bytes"),  # scales missing (short rows share one)
    (Encoded("fp32", (4,), b"\0" * 16, b"x"), "0 scale bytes"),  # scales where none belong
    (Encoded("fp32", (2, -2), b""), ">= 0"),  # negative dims
    (Encoded("fp32", (True, 2), b"\0" * 8), "tuple of ints"),  # bool is not a dim
    (Encoded("fp32", (2.0,), b"\0" * 8), "tuple of ints"),
    (Encoded("fp32", [2], b"\0" * 8), "tuple of ints"),
    (Encoded("fp32", (1,) * 9, b"\0" * 4), "at most 8 dimensions"),
    (Encoded("fp32", (4,), "abcdabcdabcdabcd"), "must be bytes"),
    (Encoded("int9", (4,), b""), "unknown codec"),
])
def test_invalid_encoded_is_rejected(e, match):
    with pytest.raises(CodecError, match=match):
        codecs.decode(e, max_elements=1000)


@pytest.mark.parametrize("shape", [(10**12,), (10**6, 10**6), (0, 10**30), (2**62, 4)])
def test_huge_shapes_are_rejected_without_allocating(shape):
    e = Encoded("fp32", shape, b"\0" * 16)
    assert rejected_peak_bytes(e, 1000, "at most 1000") < 100_000


def test_shape_that_disagrees_with_data_is_rejected_before_allocating():
    # within budget, but the bytes can't be an array of that shape: rejected by length, not by numpy
    e = Encoded("int8", (10**6, 100), b"\0" * 100, f32(*[1.0] * 10))
    assert rejected_peak_bytes(e, 10**9, "needs 100000000 data bytes") < 100_000


@pytest.mark.parametrize("scale", [f32(np.nan, 1.0), f32(1.0, np.inf), f32(-1.0, 1.0)])
def test_bad_int8_scales_are_rejected(scale):
    e = Encoded("int8", (2, 300), b"\1" * 600, scale)  # long rows: a scale each
    with pytest.raises(NonFiniteError, match="scales must be finite"):
        codecs.decode(e, max_elements=1000)


def test_int8_scale_that_overflows_on_decode_is_rejected():
    e = Encoded("int8", (1, 2), np.array([127, 1], dtype="i1").tobytes(), f32(3e38))
    with pytest.raises(NonFiniteError, match="non-finite"):
        codecs.decode(e, max_elements=100)


@pytest.mark.parametrize("name, data", [
    ("fp32", f32(1.0, np.nan)),
    ("fp32", f32(np.inf, 1.0)),
    ("fp16", np.array([1.0, np.inf], dtype="<f2").tobytes()),
    ("fp16", np.array([np.nan, 0.0], dtype="<f2").tobytes()),
])
def test_non_finite_values_in_data_are_rejected(name, data):
    with pytest.raises(NonFiniteError):
        codecs.decode(Encoded(name, (2,), data), max_elements=100)


def test_max_elements_is_inclusive():
    e = good("fp16", (3, 4))
    assert codecs.decode(e, max_elements=12).shape == (3, 4)
    with pytest.raises(CodecError, match="at most 11 expected"):
        codecs.decode(e, max_elements=11)


def test_decode_rejects_non_encoded():
    with pytest.raises(CodecError, match="expected an Encoded"):
        codecs.decode({"codec": "fp32"}, max_elements=10)


# ------------------------------------------------------------------ int4, sign, top-k, zlib, names


@pytest.mark.parametrize("name", ["topk:0", "topk:65", "topk:3+int9", "topk:3+", "topk:x+int8", "int8+z+z",
                                  "topk:2+topk:2+int8", "int4+", "+z", "z", "topk:3+int8+zz", "x" * 100])
def test_malformed_codec_names_are_refused(name):
    assert not codecs.is_codec(name)
    with pytest.raises(CodecError, match="choose one of"):
        codecs.parse_codec(name)


def test_composed_names_outside_the_sweep_work():
    x = np.random.default_rng(0).standard_normal((50, 10)).astype(np.float32)
    for name in ("topk:1+sign+z", "topk:10+fp32", "topk:64+int8", "int4sr+z"):
        e = codecs.encode(x, name)
        y = codecs.decode(e, max_elements=BIG)
        assert (np.abs(y - x) <= codecs.parse_codec(name).error_bound(x)).all(), name
    assert np.array_equal(codecs.decode(codecs.encode(x, "topk:10+fp32"), max_elements=BIG), x)  # K = row: lossless


def test_topk_keeps_the_largest_and_flattens_the_rest():
    x = np.array([[0.0, 5.0, 1.0, 9.0, 2.0]], dtype=np.float32)
    y = codecs.decode(codecs.encode(x, "topk:2+fp32"), max_elements=BIG)
    np.testing.assert_array_equal(y, [[1.0, 5.0, 1.0, 9.0, 1.0]])  # 5 and 9 kept, the rest at their mean 1


def test_int4_halves_int8_and_stochastic_rounding_is_unbiased():
    x = np.full((1000, 10), 0.3, dtype=np.float32)
    x[:, 0] = 7.0  # scale 1: 0.3 sits between levels 0 and 1
    nearest = codecs.decode(codecs.encode(x, "int4"), max_elements=BIG)
    stochastic = codecs.decode(codecs.encode(x, "int4sr"), max_elements=BIG)
    assert np.all(nearest[:, 1:] == 0.0)  # always rounded down: biased by -0.3
    assert abs(float(stochastic[:, 1:].mean()) - 0.3) < 0.02  # E[q] = x
    assert len(codecs.encode(x, "int4").data) == len(codecs.encode(x, "int8").data) // 2


def test_low_bit_codecs_pack_exactly_their_bits():
    x = np.array([[-7.0, 7.0, 0.0, 3.0]], dtype=np.float32)
    # int4 keeps its nibble layout: -7 -> 1 in the low nibble, 7 -> 15 in the high one
    assert codecs.encode(x, "int4").data == bytes([0xF1, 0xB8])
    for bits in (2, 3):
        e = codecs.encode(np.ones((1000, 10), np.float32), f"int{bits}")
        assert len(e.data) == 10_000 * bits // 8
    # int2 is ternary: -max, 0, +max
    y = codecs.decode(codecs.encode(np.array([[-2.0, -0.4, 0.2, 2.0]], np.float32), "int2"), max_elements=BIG)
    np.testing.assert_array_equal(y, [[-2.0, 0.0, 0.0, 2.0]])


@pytest.mark.parametrize("e, match", [
    (Encoded("int2", (4,), b"\x00", f32(1.0)), "unused value -2"),
    (Encoded("int3", (2,), b"\x04", f32(1.0)), "unused value -4"),  # first value 0, second code 0
    # 300-value rows: positions as two uint16 indices; 5-value rows: a bit mask is smaller
    (Encoded("topk:2+fp32", (1, 300), np.array([3, 1], "<u2").tobytes() + f32(1, 2, 3)), "increasing"),
    (Encoded("topk:2+fp32", (1, 300), np.array([1, 300], "<u2").tobytes() + f32(1, 2, 3)), "below the row length 300"),
    (Encoded("topk:2+fp32", (1, 300), np.array([1, 2], "<u2").tobytes() + f32(1, 2)), "needs 16 data bytes"),
    (Encoded("topk:2+fp32", (1, 5), np.packbits([1, 1, 1, 0, 0]).tobytes() + f32(1, 2, 3)), "exactly 2 of each"),
    (Encoded("topk:2+fp32", (1, 5), np.packbits([1, 1, 0, 0, 0, 0, 0, 1]).tobytes() + f32(1, 2, 3)), "exactly 2"),
    (Encoded("int4", (2,), b"\x08", f32(1.0)), "unused value -8"),  # nibble 0 in the high half
    (Encoded("int4", (2, 256), b"\x99" * 256, f32(1.0, -1.0)), "scales must be finite and >= 0"),
    (Encoded("sign", (3,), b"\xff", f32(0.0, -1.0)), "deviations finite and >= 0"),
    (Encoded("int8+z", (4,), b"not zlib", f32(1.0)), "not a zlib stream"),
    (Encoded("int8+z", (4,), zlib.compress(b"\1" * 5), f32(1.0)), "inflate to exactly 4 bytes"),
    (Encoded("int8+z", (4,), zlib.compress(b"\1" * 3), f32(1.0)), "inflate to exactly 4 bytes"),
    (Encoded("int8+z", (4,), zlib.compress(b"\1" * 4) + b"junk", f32(1.0)), "inflate to exactly 4 bytes"),
])
def test_crafted_payloads_of_the_new_codecs_are_rejected(e, match):
    # (a compressed payload longer than its bound is refused by length first, like every codec)
    with pytest.raises(CodecError, match=match):
        codecs.decode(e, max_elements=1000)


def test_a_zlib_bomb_inflates_no_further_than_the_shape_needs():
    bomb = zlib.compress(b"\0" * 50_000_000)  # 50 MB of zeros in ~49 KB: within the size bound below
    e = Encoded("int8+z", (60_000,), bomb, f32(*[1.0] * 235))
    assert rejected_peak_bytes(e, 100_000, "inflate to exactly 60000 bytes") < 1_000_000


# ------------------------------------------------------------------------------- ANS entropy stage


def peaked_logits(rows: int, seed: int = 0) -> np.ndarray:
    """Normalized-logit-like rows: one class at the top (4), a few near it, the rest at the floor."""
    rng = np.random.default_rng(seed)
    x = np.full((rows, 10), -4.0, dtype=np.float32)
    top = rng.integers(0, 3, rows)  # a node's classes: a skewed top-class mix
    x[:, 3:6] = rng.uniform(-4, 2, (rows, 3)).astype(np.float32)
    x[np.arange(rows), top] = 4.0
    return x


@pytest.mark.parametrize("inner", ["int3", "int8", "topk:3+int3", "topk:1+int4sr", "topk:2+int2", "topk:3+int3sr"])
def test_ans_decodes_exactly_what_its_integer_codec_decodes(inner):
    x = peaked_logits(700)
    plain = codecs.decode(codecs.encode(x, inner), max_elements=BIG)
    coded = codecs.decode(codecs.encode(x, inner + "+ans"), max_elements=BIG)
    np.testing.assert_array_equal(coded, plain)  # lossless on top of the same levels


def test_ans_is_smaller_than_zlib_on_peaked_logits():
    x = peaked_logits(2000)
    ans, z = codecs.encode(x, "topk:3+int3+ans").nbytes, codecs.encode(x, "topk:3+int3+z").nbytes
    assert ans < 0.8 * z, (ans, z)


def test_ans_ranks_position_sets_or_lists_indices_when_they_are_too_many():
    x = np.random.default_rng(1).standard_normal((40, 300)).astype(np.float32)  # C(300, 2) > MAX_COMBOS
    for name in ("topk:2+int4+ans", "topk:1+int4+ans"):  # listed indices / one rank per row (300 sets)
        y = codecs.decode(codecs.encode(x, name), max_elements=BIG)
        np.testing.assert_array_equal(y, codecs.decode(codecs.encode(x, name[:-4]), max_elements=BIG))


def test_ans_needs_an_integer_codec_underneath():
    for name in ("fp16+ans", "sign+ans", "topk:3+ans", "int4+z+ans", "int4+ans+z", "topk:3+fp32+ans"):
        assert not codecs.is_codec(name), name


def ans_payload(tables: list[list[int]], words: list[int]) -> bytes:
    return bytes(b for t in tables for b in t) + np.array(words, "<u4").tobytes()


def int3_table(*counts: int) -> list[int]:
    return list(counts) + [0] * (8 - len(counts))


@pytest.mark.parametrize("e, match", [
    (Encoded("int3+ans", (4,), b"\x01" * 7, f32(1.0)), "8 table bytes then whole 32-bit words"),
    (Encoded("int3+ans", (4,), ans_payload([int3_table(0, 0, 0, 255)], [1]) + b"\x00", f32(1.0)), "whole 32-bit"),
    (Encoded("int3+ans", (4,), ans_payload([int3_table()], [1]), f32(1.0)), "model is empty"),
    (Encoded("int3+ans", (4,), ans_payload([int3_table(9, 0, 0, 255)], [1]), f32(1.0)), "unused symbol 0"),
    (Encoded("int3+ans", (4,), ans_payload([int3_table(0, 0, 0, 255)], [0]), f32(1.0)), "not an ANS stream"),
    # a model that gives only level 0 (symbol 3) a count, and words that decode to something else
    (Encoded("int3+ans", (4,), ans_payload([int3_table(0, 0, 0, 255)], [0x12345678, 0x9abcdef0]), f32(1.0)),
     "no count|left over"),
])
def test_crafted_ans_payloads_are_rejected(e, match):
    with pytest.raises(CodecError, match=match):
        codecs.decode(e, max_elements=1000)


def test_a_position_rank_beyond_the_sets_is_rejected():
    # one value per row: one position set, its alphabet padded to two symbols; rank 1 names no set
    tables = [np.array([0, 255], np.uint8), np.array(int3_table(0, 0, 0, 255), np.uint8)]
    coder = constriction.stream.stack.AnsCoder()
    for symbol, table in reversed(list(zip([1, 3, 3], [tables[0], tables[1], tables[1]]))):
        coder.encode_reverse(np.array([symbol], np.int32), codecs._ans_model(table))
    data = tables[0].tobytes() + tables[1].tobytes() * 2 + coder.get_compressed().astype("<u4").tobytes()
    with pytest.raises(CodecError, match="beyond the 1 sets"):
        codecs.decode(Encoded("topk:1+int3+ans", (1, 1), data, f32(1.0)), max_elements=1)


def test_ans_words_beyond_the_symbols_are_rejected():
    e = codecs.encode(peaked_logits(50), "topk:3+int3+ans")
    longer = Encoded(e.codec, e.shape, e.data + np.array([7], "<u4").tobytes(), e.scale)
    with pytest.raises(CodecError, match="left over|no count"):
        codecs.decode(longer, max_elements=BIG)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from([n for n in NAMES if CODECS[n].compressed]), data=st.binary(max_size=600),
       rows=st.integers(1, 40))
def test_hostile_entropy_coded_bytes_raise_the_codec_error(name, data, rows):
    scale = codecs.encode(peaked_logits(rows), name).scale  # valid scales: the data is what is hostile
    try:
        y = codecs.decode(Encoded(name, (rows, 10), data, scale), max_elements=rows * 10)
    except CodecError:
        return
    assert y.shape == (rows, 10) and np.isfinite(y).all()  # the rare byte string that is a valid payload
