"""Array compression codecs: float arrays <-> plain bytes that msgpack can carry, with exact sizes.

A codec turns a finite float array into an `Encoded` (codec name, shape, and a few `bytes` fields)
and back into float32. Everything that crosses the wire is plain bytes and ints, so `p2pfl.wire` can
pack it without pickle. Decoding treats its input as hostile: it checks the shape against a budget
and every byte count against what the codec needs for that shape *before* allocating anything.

Codecs (names: see CODEC_GRAMMAR; `CODECS` holds the ones the tests and benchmarks sweep):

    name      data                          scale                          |decoded - x| per element
    fp32      prod(shape) x <f4             -                              0
    fp16      prod(shape) x <f2             -                              2**-11 |x| + 2**-25
    int8      prod(shape) x int8            rows x <f4 (max|row| / 127)    scale_row / 2  (+ float32 slack)
    int4      ceil(prod/2) bytes, 2 nibbles rows x <f4 (max|row| / 7)      scale_row / 2
    int3      ceil(3 prod/8) bytes          rows x <f4 (max|row| / 3)      scale_row / 2
    int2      ceil(prod/4) bytes            rows x <f4 (max|row| / 1)      scale_row / 2
    intBsr    as intB, stochastic rounding  as intB                        < scale_row
    sign      ceil(prod/8) bytes, 1 bit     rows x 2 <f4 (mean, mean dev)  |x - (mean +- dev)|
    topk:K+C  positions (rows x K indices,  C's scale                      kept: C's bound; dropped:
              or a bit mask if smaller) +                                  |x - mean of the dropped|
              C's data for (rows, K + 1)
    NAME+z    zlib(NAME's data), length     NAME's scale                   NAME's bound
              bounded, inflated exactly

Scale "rows" (int8, int4, sign) are groups of whole rows of the last axis of an array with
ndim >= 2, as many rows as fit INT8_CHUNK values (at least one: a 1000-class logit row has its own
scale, 10-class rows share one per 25); a 1-D (or 0-d) array is cut into chunks of INT8_CHUNK values
so one outlier in a long weight vector only coarsens its own chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import zlib
from dataclasses import dataclass
from typing import Callable

import constriction
import numpy as np

INT8_CHUNK = 256  # values per int8 scale for 1-D arrays: 1.6% scale overhead, local enough for outliers
MAX_NDIM = 8  # payloads are logits (2-D) or flat parameter vectors (1-D); 8 leaves room, bounds the header

_F32 = np.dtype("<f4")  # explicit little-endian: the bytes must mean the same on every host
_F16 = np.dtype("<f2")
_I8 = np.dtype("i1")


class CodecError(ValueError):
    """An array cannot be encoded, or an `Encoded` is not a valid instance of its codec."""


class RangeError(CodecError):
    """Finite values the codec cannot carry (fp16 beyond 65504): fp32 can, so a sender falls back to it."""


class NonFiniteError(CodecError):
    """NaN or Inf in an input array or in decoded values (a separate class so p2pfl.wire can say so)."""


@dataclass(frozen=True)
class Encoded:
    """One encoded array. `data` holds the values, `scale` whatever per-row side data the codec needs."""

    codec: str
    shape: tuple[int, ...]
    data: bytes
    scale: bytes = b""

    @property
    def nbytes(self) -> int:
        """Exact payload bytes (values + side data), the number that bytes-per-round metrics add up."""
        return len(self.data) + len(self.scale)


@dataclass(frozen=True)
class Codec:
    """One registry entry. `encode`/`decode` see validated input only (finite float32 / checked sizes)."""

    name: str
    encode: Callable[[np.ndarray], tuple[bytes, bytes]]  # float32 array -> (data, scale)
    decode: Callable[[tuple[int, ...], bytes, bytes], np.ndarray]  # sizes already checked
    sizes: Callable[[tuple[int, ...]], tuple[int, int]]  # shape -> exact (len(data), len(scale))
    error_bound: Callable[[np.ndarray], np.ndarray]  # x -> per-element bound on |decode(encode(x)) - x|
    description: str
    compressed: bool = False  # data is entropy-coded: sizes()[0] bounds its length instead of fixing it


# ----------------------------------------------------------------------------------------- helpers


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(number of groups, group length) of the scale layout: one scale per group, the last may be short.

    ndim >= 2: whole rows of the last axis, as many as fit INT8_CHUNK values (at least one), so
    logits with 10 classes share a scale per 25 rows (a float32 per 10-value row would cost 40% on
    top of int8); 0-D/1-D: chunks of INT8_CHUNK values.
    """
    n = math.prod(shape)
    if n == 0:
        return 0, 0  # no values, no scales (also avoids a scale per row for shapes like (10**6, 0))
    if len(shape) >= 2:
        per_group = max(1, INT8_CHUNK // shape[-1])
        return -(-(n // shape[-1]) // per_group), per_group * shape[-1]
    return -(-n // INT8_CHUNK), INT8_CHUNK


def _as_rows(x: np.ndarray) -> np.ndarray:
    """View/copy `x` as a (rows, row length) matrix, zero-padding the last chunk of a 1-D array."""
    nrows, rowlen = _rows(x.shape)
    flat = x.reshape(-1)
    pad = nrows * rowlen - flat.size
    if pad:
        flat = np.concatenate([flat, np.zeros(pad, dtype=flat.dtype)])
    return flat.reshape(nrows, rowlen)  # (rows, rowlen)


def _int8_scales(x: np.ndarray) -> np.ndarray:
    """Per-row scale max|row| / 127 as float32, one per row of the int8 layout."""
    if x.size == 0:
        return np.zeros(0, dtype=np.float32)
    return (np.abs(_as_rows(x)).max(axis=1) / np.float32(127)).astype(np.float32)  # (rows,)


def _per_element(scales: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast per-row scales back to one value per element of `shape`."""
    nrows, rowlen = _rows(shape)
    if nrows == 0:
        return np.zeros(shape, dtype=np.float32)
    return np.repeat(scales, rowlen)[: math.prod(shape)].reshape(shape)


# ------------------------------------------------------------------------------------------ codecs


def _fp32_encode(x: np.ndarray) -> tuple[bytes, bytes]:
    return x.astype(_F32, copy=False).tobytes(), b""


def _fp32_decode(shape: tuple[int, ...], data: bytes, scale: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=_F32).astype(np.float32).reshape(shape)


def _fp16_encode(x: np.ndarray) -> tuple[bytes, bytes]:
    with np.errstate(over="ignore"):  # overflow is reported below with a useful message
        h = x.astype(_F16)
    if not np.isfinite(h).all():
        big = float(np.abs(x).max())
        raise RangeError(f"fp16 cannot hold {big:.4g} (largest finite fp16 is 65504); use fp32 or int8")
    return h.tobytes(), b""


def _fp16_decode(shape: tuple[int, ...], data: bytes, scale: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=_F16).astype(np.float32).reshape(shape)


def _int8_encode(x: np.ndarray) -> tuple[bytes, bytes]:
    scales = _int8_scales(x)  # (rows,)
    if x.size == 0:
        return b"", b""
    rows = _as_rows(x)  # (rows, rowlen)
    safe = np.where(scales > 0, scales, np.float32(1))[:, None]  # all-zero rows: q = 0 whatever the divisor
    q = np.clip(np.rint(rows / safe), -127, 127).astype(_I8)  # nearest rounding; -128 unused (symmetric)
    return q.reshape(-1)[: x.size].tobytes(), scales.astype(_F32).tobytes()


def _int8_decode(shape: tuple[int, ...], data: bytes, scale: bytes) -> np.ndarray:
    return _dequantize(np.frombuffer(data, dtype=_I8).reshape(shape), scale, "int8")


def _dense_sizes(itemsize: int) -> Callable[[tuple[int, ...]], tuple[int, int]]:
    return lambda shape: (math.prod(shape) * itemsize, 0)


def _int8_sizes(shape: tuple[int, ...]) -> tuple[int, int]:
    return math.prod(shape), _rows(shape)[0] * _F32.itemsize


_EPS32 = float(np.finfo(np.float32).eps)
# A row whose max is below 127 subnormal steps gets a scale that underflows to 0 and decodes as
# zeros: the error is then the row's own size, at most this.
_FLUSH32 = 127 * float(np.finfo(np.float32).smallest_subnormal)


def _int8_bound(x: np.ndarray) -> np.ndarray:
    # half a quantization step, plus a few float32 roundings of x / s and q * s
    x = np.asarray(x, dtype=np.float32)
    return _per_element(_int8_scales(x), x.shape) * 0.5 * (1 + 4 * _EPS32) + 4 * _EPS32 * np.abs(x) + _FLUSH32


def _checked_scales(scale: bytes, name: str) -> np.ndarray:
    scales = np.frombuffer(scale, dtype=_F32).astype(np.float32)
    if not np.isfinite(scales).all() or (scales < 0).any():
        bad = scales[~(np.isfinite(scales) & (scales >= 0))][0]
        raise NonFiniteError(f"{name} scales must be finite and >= 0; got {bad}")
    return scales


# intB (B = 2, 3, 4): int8's row layout with a scale max|row| / L, L = 2**(B-1) - 1 levels each side;
# values -L..L stored as q + 2**(B-1) in B bits, packed little-endian (int4: low nibble first).
# Code 0 is never written, so every level is symmetric and a crafted 0 is caught.

LOW_BITS = (2, 3, 4)


def _levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1  # int2: -1..1, int3: -3..3, int4: -7..7


def _intb_scales(x: np.ndarray, bits: int) -> np.ndarray:
    if x.size == 0:
        return np.zeros(0, dtype=np.float32)
    return (np.abs(_as_rows(x)).max(axis=1) / np.float32(_levels(bits))).astype(np.float32)


def _intb_quantize(x: np.ndarray, bits: int, stochastic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Levels -L..L (int8, x's shape) and the per-row scales they multiply (x non-empty)."""
    levels, scales = _levels(bits), _intb_scales(x, bits)
    y = _as_rows(x) / np.where(scales > 0, scales, np.float32(1))[:, None]
    if stochastic:
        # unbiased rounding (E[q] = x / s), seeded by the data so encoding stays deterministic
        u = np.random.default_rng(zlib.crc32(x.tobytes())).random(y.shape, dtype=np.float32)
        q = np.floor(y + u)
    else:
        q = np.rint(y)
    return np.clip(q, -levels, levels).astype(np.int8).reshape(-1)[: x.size].reshape(x.shape), scales


def _intb_encoder(bits: int, stochastic: bool) -> Callable[[np.ndarray], tuple[bytes, bytes]]:
    def encode_intb(x: np.ndarray) -> tuple[bytes, bytes]:
        if x.size == 0:
            return b"", b""
        q, scales = _intb_quantize(x, bits, stochastic)
        return _pack_bits(q.reshape(-1), bits), scales.astype(_F32).tobytes()
    return encode_intb


def _pack_bits(q: np.ndarray, bits: int) -> bytes:
    """Values -L..L -> `bits` bits each, stored + 2**(bits-1), least significant bit first."""
    u = (q.astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)
    planes = (u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (n, bits)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def _unpack_bits(data: bytes, n: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    u = (planes << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.int16)
    if (u == 0).any():  # code 0 (-2**(bits-1)) is never written: a crafted payload
        raise CodecError(f"int{bits} data holds the unused value {-(2 ** (bits - 1))}")
    return (u - 2 ** (bits - 1)).astype(np.int8)


def _intb_decoder(bits: int) -> Callable[[tuple[int, ...], bytes, bytes], np.ndarray]:
    def decode_intb(shape: tuple[int, ...], data: bytes, scale: bytes) -> np.ndarray:
        return _dequantize(_unpack_bits(data, math.prod(shape), bits).reshape(shape), scale, f"int{bits}")
    return decode_intb


def _dequantize(q: np.ndarray, scale: bytes, name: str) -> np.ndarray:
    """Levels (any int dtype, the array's shape) times their checked per-row scales, as float32."""
    scales = _checked_scales(scale, name)
    with np.errstate(over="ignore"):  # a huge scale overflows to Inf: caught by the finite check in decode()
        return q.astype(np.float32) * _per_element(scales, q.shape)


def _intb_sizes(bits: int) -> Callable[[tuple[int, ...]], tuple[int, int]]:
    return lambda shape: (-(-math.prod(shape) * bits // 8), _rows(shape)[0] * _F32.itemsize)


def _intb_bound(bits: int, stochastic: bool) -> Callable[[np.ndarray], np.ndarray]:
    steps = 1.0 if stochastic else 0.5  # stochastic rounding may land on either neighbouring level

    def bound(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        scales = _per_element(_intb_scales(x, bits), x.shape)
        return scales * steps * (1 + 4 * _EPS32) + 4 * _EPS32 * np.abs(x) + _FLUSH32
    return bound


def _intb_codecs(bits: int) -> tuple[Codec, Codec]:
    """intB (nearest rounding) and intBsr (stochastic, unbiased)."""
    levels, per_value = _levels(bits), f"~{bits / 8:g} byte per value"
    return (
        Codec(f"int{bits}", _intb_encoder(bits, False), _intb_decoder(bits), _intb_sizes(bits),
              _intb_bound(bits, False),
              f"int{bits} (-{levels}..{levels}), int8's rows and scales (max|row| / {levels}), nearest rounding, "
              f"|error| <= scale/2; {per_value}"),
        Codec(f"int{bits}sr", _intb_encoder(bits, True), _intb_decoder(bits), _intb_sizes(bits),
              _intb_bound(bits, True),
              f"int{bits} with stochastic (unbiased) rounding, |error| < scale; {per_value}"),
    )


# sign: one bit per value, each row sent as mean +- mean absolute deviation

def _sign_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nrows, rowlen = _rows(x.shape)
    valid = (np.arange(nrows * rowlen) < x.size).reshape(nrows, rowlen)  # the padding of a 1-D tail is not data
    count = valid.sum(axis=1)
    rows = _as_rows(x)
    m = (rows.sum(axis=1, dtype=np.float64) / count).astype(np.float32)
    a = ((np.abs(rows - m[:, None]) * valid).sum(axis=1, dtype=np.float64) / count).astype(np.float32)
    return m, a


def _sign_encode(x: np.ndarray) -> tuple[bytes, bytes]:
    if x.size == 0:
        return b"", b""
    m, a = _sign_stats(x)
    bits = x.reshape(-1) >= _per_element(m, x.shape).reshape(-1)
    return np.packbits(bits).tobytes(), np.stack([m, a], axis=1).astype(_F32).tobytes()


def _sign_decode(shape: tuple[int, ...], data: bytes, scale: bytes) -> np.ndarray:
    ma = np.frombuffer(scale, dtype=_F32).astype(np.float32).reshape(-1, 2)
    if not np.isfinite(ma).all() or (ma[:, 1] < 0).any():
        raise NonFiniteError("sign: row means must be finite, deviations finite and >= 0")
    signs = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: math.prod(shape)].astype(np.float32) * 2 - 1
    with np.errstate(over="ignore"):
        return _per_element(ma[:, 0], shape) + signs.reshape(shape) * _per_element(ma[:, 1], shape)


def _sign_sizes(shape: tuple[int, ...]) -> tuple[int, int]:
    return -(-math.prod(shape) // 8), _rows(shape)[0] * 2 * _F32.itemsize


def _sign_bound(x: np.ndarray) -> np.ndarray:
    """Exactly the error of m +- a (it depends on the data), plus float32 slack."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return np.zeros(x.shape, dtype=np.float32)
    m, a = (_per_element(v, x.shape) for v in _sign_stats(x))
    y = np.where(x >= m, m + a, m - a)
    return np.abs(y - x) * (1 + 8 * _EPS32) + 8 * _EPS32 * (np.abs(x) + np.abs(m) + a) + _FLUSH32


BASE_CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec("fp32", _fp32_encode, _fp32_decode, _dense_sizes(4),
              lambda x: np.zeros(np.shape(x), dtype=np.float32),
              "float32, lossless for float32 input; 4 bytes per value"),
        Codec("fp16", _fp16_encode, _fp16_decode, _dense_sizes(2),
              lambda x: (2.0**-11 * np.abs(np.asarray(x, dtype=np.float32)) + 2.0**-25).astype(np.float32),
              "float16, relative error <= 2**-11 (|x| <= 65504); 2 bytes per value"),
        Codec("int8", _int8_encode, _int8_decode, _int8_sizes, _int8_bound,
              f"int8 with a float32 scale per row (last axis; 1-D: chunks of {INT8_CHUNK}), "
              "nearest rounding, |error| <= scale/2; ~1 byte per value"),
        *(c for bits in reversed(LOW_BITS) for c in _intb_codecs(bits)),
        Codec("sign", _sign_encode, _sign_decode, _sign_sizes, _sign_bound,
              "1 bit per value: the row's mean +- its mean absolute deviation; ~0.125 byte per value"),
    )
}


# ------------------------------------------------------------------- top-k, entropy coding, names

MAX_TOPK = 64


def _topk_layout(shape: tuple[int, ...], k: int) -> tuple[int, int, int, np.dtype]:
    """(rows, row length, values kept per row, index dtype): rows are the last axis; 0-D/1-D is one row."""
    n = math.prod(shape)
    if n == 0:
        return 0, 0, 0, np.dtype("u1")
    rowlen = shape[-1] if len(shape) >= 2 else n
    index = np.dtype("u1") if rowlen <= 2**8 else np.dtype("<u2") if rowlen <= 2**16 else np.dtype("<u4")
    return n // rowlen, rowlen, min(k, rowlen), index


def _topk_split(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rows, kk), increasing, of each row's kk largest values; values (rows, kk + 1): those,
    then the mean of the rest of the row (0 when nothing is left)."""
    rows, rowlen, kk, _ = _topk_layout(x.shape, k)
    m = x.reshape(rows, rowlen)
    if kk < rowlen:
        idx = np.sort(np.argpartition(-m, kk - 1, axis=1)[:, :kk], axis=1)
    else:
        idx = np.broadcast_to(np.arange(rowlen), (rows, rowlen))
    kept = np.take_along_axis(m, idx, axis=1)
    rest = (m.sum(axis=1, dtype=np.float64) - kept.sum(axis=1, dtype=np.float64)) / max(rowlen - kk, 1)
    return idx, np.concatenate([kept, rest.astype(np.float32)[:, None]], axis=1)


def _topk_join(shape: tuple[int, ...], idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The dense array: the rest's mean everywhere, then the kept values at their indices."""
    rowlen = shape[-1] if len(shape) >= 2 else math.prod(shape)
    out = np.repeat(values[:, -1:], rowlen, axis=1)
    np.put_along_axis(out, idx.astype(np.int64), values[:, :-1], axis=1)
    return out.reshape(shape)


def _topk_positions_bytes(rows: int, rowlen: int, kk: int, index: np.dtype) -> tuple[bool, int]:
    """(as a bit mask?, bytes): positions travel as a rows x rowlen bit mask when that is smaller
    than kk indices per row (10 classes, k = 3: 10 bits instead of 3 bytes)."""
    listed, mask = rows * kk * index.itemsize, -(-rows * rowlen // 8)
    return (True, mask) if mask < listed else (False, listed)


def _topk_codec(k: int, inner: Codec) -> Codec:
    def sizes(shape):
        rows, rowlen, kk, index = _topk_layout(shape, k)
        if rows == 0:
            return 0, 0
        d, sc = inner.sizes((rows, kk + 1))
        return _topk_positions_bytes(rows, rowlen, kk, index)[1] + d, sc

    def encode_topk(x):
        if x.size == 0:
            return b"", b""
        rows, rowlen, kk, index = _topk_layout(x.shape, k)
        idx, values = _topk_split(x, k)
        if _topk_positions_bytes(rows, rowlen, kk, index)[0]:
            marked = np.zeros((rows, rowlen), dtype=bool)
            np.put_along_axis(marked, idx, True, axis=1)
            positions = np.packbits(marked.reshape(-1)).tobytes()
        else:
            positions = idx.astype(index).tobytes()
        d, sc = inner.encode(values)
        return positions + d, sc

    def decode_topk(shape, data, scale):
        rows, rowlen, kk, index = _topk_layout(shape, k)
        if rows == 0:
            return np.zeros(shape, dtype=np.float32)
        as_mask, cut = _topk_positions_bytes(rows, rowlen, kk, index)
        if as_mask:
            bits = np.unpackbits(np.frombuffer(data[:cut], dtype=np.uint8))
            marked = bits[: rows * rowlen].reshape(rows, rowlen)
            if bits[rows * rowlen:].any() or (marked.sum(axis=1) != kk).any():
                raise CodecError(f"top-{k} position mask must mark exactly {kk} of each row's {rowlen} values")
            idx = (np.flatnonzero(marked) % rowlen).reshape(rows, kk)
        else:
            idx = np.frombuffer(data[:cut], dtype=index).reshape(rows, kk).astype(np.int64)
            if (idx >= rowlen).any() or (np.diff(idx, axis=1) <= 0).any():
                raise CodecError(f"top-{k} indices must be increasing and below the row length {rowlen}")
        return _topk_join(shape, idx, inner.decode((rows, kk + 1), data[cut:], scale))

    def bound(x):
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            return np.zeros(x.shape, dtype=np.float32)
        idx, values = _topk_split(x, k)
        dropped = np.abs(_topk_join(x.shape, idx, values) - x)  # 0 where kept, |x - rest mean| elsewhere
        inner_err = _topk_join(x.shape, idx, inner.error_bound(values))
        return dropped * (1 + 8 * _EPS32) + inner_err + 8 * _EPS32 * np.abs(x) + _FLUSH32

    return Codec(f"topk:{k}+{inner.name}", encode_topk, decode_topk, sizes, bound,
                 f"per row (last axis; 1-D: the whole vector) the {k} largest values in {inner.name} with "
                 "their positions, the rest as their mean: for logits, the classes that matter")


_Z_SLACK = 64  # zlib's worst case is ~0.03% + a few bytes above the input


def _z_codec(inner: Codec) -> Codec:
    def encode_z(x):
        d, sc = inner.encode(x)
        return (zlib.compress(d, 6) if d else b""), sc  # nothing stays nothing

    def decode_z(shape, data, scale):
        want, _ = inner.sizes(shape)
        if want == 0:
            return inner.decode(shape, data, scale)  # sizes() allowed exactly 0 bytes here
        z = zlib.decompressobj()
        try:
            raw = z.decompress(data, want + 1)  # capped: a zip bomb stops one byte past the exact size
        except zlib.error as e:
            raise CodecError(f"{inner.name}+z: data is not a zlib stream ({e})") from None
        if len(raw) != want or not z.eof or z.unused_data:
            raise CodecError(f"{inner.name}+z: data must inflate to exactly {want} bytes")
        return inner.decode(shape, raw, scale)

    def sizes(shape):
        d, sc = inner.sizes(shape)
        return (d + d // 1000 + _Z_SLACK if d else 0), sc

    return Codec(f"{inner.name}+z", encode_z, decode_z, sizes, inner.error_bound,
                 inner.description + "; data bytes zlib-compressed", compressed=True)


# ANS: the integer levels (and top-k positions) as symbols, each stream under its own static model.
# zlib finds repeats but codes each byte with one Huffman table: bit-packed 3-bit levels of different
# kinds interleave in every byte, and a level that is almost always the same still costs a bit or
# more. Here every column of levels (one class of a logit row; the top value, the rest's mean) gets
# its own frequency table and rANS codes each symbol in about -log2 p bits (constriction's coder).
# Data = the tables (one byte per alphabet symbol, counts scaled so the largest is 255) + the coder's
# 32-bit words; scales as the integer codec's.

ANS_MAX_COLUMNS = 64  # arrays with at most this many columns (ndim >= 2) get one model per column
MAX_COMBOS = 1024  # top-k position sets travel as one symbol (their rank) when there are at most this many
_ANS_PRECISION = 24  # constriction's Categorical: no symbol costs more than 24 bits


def _ans_columns(shape: tuple[int, ...]) -> int:
    """How many interleaved columns an array's levels are modelled as (1: one stream)."""
    return shape[-1] if len(shape) >= 2 and 1 <= shape[-1] <= ANS_MAX_COLUMNS else 1


@functools.lru_cache(maxsize=64)
def _binomials(rowlen: int, kk: int) -> np.ndarray:
    """(rowlen, kk + 1) table of C(n, j)."""
    return np.array([[math.comb(n, j) for j in range(kk + 1)] for n in range(rowlen)], dtype=np.int64)


def _colex_rank(idx: np.ndarray, rowlen: int) -> np.ndarray:
    """(rows,) the colex rank of each row's increasing indices (rows, kk): sum_j C(idx_j, j + 1)."""
    kk = idx.shape[1]
    return _binomials(rowlen, kk)[idx, np.arange(1, kk + 1)].sum(axis=1)


@functools.lru_cache(maxsize=64)
def _combos(rowlen: int, kk: int) -> np.ndarray:
    """All increasing kk-subsets of range(rowlen), row r the subset of colex rank r."""
    table = np.array(list(itertools.combinations(range(rowlen), kk)), dtype=np.int64).reshape(-1, kk)
    table[_colex_rank(table, rowlen)] = table.copy()
    return table


def _ans_streams(shape: tuple[int, ...], bits: int, k: int | None) -> tuple[list[tuple[int, int]], ...]:
    """(symbols, alphabet size) of each stream of a non-empty `shape`, in coding order: the top-k
    positions' streams (none without top-k), then the levels' streams."""
    if k is None:
        cols = _ans_columns(shape)
        return [], [(math.prod(shape) // cols, 2 ** bits)] * cols
    rows, rowlen, kk, _ = _topk_layout(shape, k)
    if math.comb(rowlen, kk) <= MAX_COMBOS:  # at least 2 symbols: the coder's smallest alphabet
        return [(rows, max(2, math.comb(rowlen, kk)))], [(rows, 2 ** bits)] * (kk + 1)
    return [(rows, rowlen)] * kk, [(rows, 2 ** bits)] * (kk + 1)  # each increasing index on its own


def _ans_model(table: np.ndarray):
    return constriction.stream.model.Categorical(table.astype(np.float64) / table.sum(), perfect=False)


def _ans_codec(inner: Codec, bits: int, k: int | None, stochastic: bool) -> Codec:
    """`inner` (intB or topk:K+intB) with its levels entropy-coded by rANS; the same values decoded."""
    offset = 2 ** (bits - 1)  # level q travels as symbol q + offset; symbol 0 is never written

    def sizes(shape):
        if math.prod(shape) == 0:
            return 0, 0
        positions, levels = _ans_streams(shape, bits, k)
        words = -(-sum(n for n, _ in positions + levels) * _ANS_PRECISION // 32) + 2
        quantized = shape if k is None else (levels[0][0], len(levels))  # top-k: (rows, kk + 1)
        return sum(a for _, a in positions + levels) + 4 * words, _rows(quantized)[0] * _F32.itemsize

    def encode_ans(x):
        if x.size == 0:
            return b"", b""
        positions, levels = _ans_streams(x.shape, bits, k)
        streams: list[np.ndarray] = []
        if k is not None:
            rowlen = _topk_layout(x.shape, k)[1]
            idx, x = _topk_split(x, k)  # x: the kept values, then the rest's mean
            if len(positions) == 1:  # the position set's colex rank
                streams.append(_colex_rank(idx, rowlen))
            else:
                streams.extend(idx.T)
        q, scales = _intb_quantize(x, bits, stochastic)
        streams.extend(q.reshape(-1, len(levels)).T.astype(np.int64) + offset)
        tables = []
        for stream, (_, alphabet) in zip(streams, positions + levels):
            counts = np.bincount(stream, minlength=alphabet)
            tables.append(np.ceil(counts * 255 / counts.max()).astype(np.uint8))
        coder = constriction.stream.stack.AnsCoder()
        for stream, table in zip(reversed(streams), reversed(tables)):
            coder.encode_reverse(stream.astype(np.int32), _ans_model(table))
        words = coder.get_compressed().astype("<u4")
        return b"".join(t.tobytes() for t in tables) + words.tobytes(), scales.astype(_F32).tobytes()

    def decode_ans(shape, data, scale):
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype=np.float32)  # sizes() allowed exactly 0 bytes here
        positions, levels = _ans_streams(shape, bits, k)
        streams = positions + levels
        cut = sum(a for _, a in streams)
        if len(data) < cut or (len(data) - cut) % 4:
            raise CodecError(f"{name}: data must be {cut} table bytes then whole 32-bit words; got {len(data)} bytes")
        try:
            coder = constriction.stream.stack.AnsCoder(np.frombuffer(data[cut:], dtype="<u4").astype(np.uint32))
        except ValueError as e:
            raise CodecError(f"{name}: not an ANS stream ({e})") from None
        out, at = [], 0
        for i, (n, alphabet) in enumerate(streams):
            table = np.frombuffer(data[at:at + alphabet], dtype=np.uint8)
            at += alphabet
            if not table.any() or (i >= len(positions) and table[0]):
                raise CodecError(f"{name}: stream {i}'s model is empty or gives the unused symbol 0 a count")
            symbols = coder.decode(_ans_model(table), n).astype(np.int64)
            if (table[symbols] == 0).any():
                raise CodecError(f"{name}: stream {i} decodes to a symbol its model gives no count")
            out.append(symbols)
        if not coder.is_empty():
            raise CodecError(f"{name}: words left over after the last symbol")
        q = np.stack(out[len(positions):], axis=1) - offset
        if k is None:
            return _dequantize(q.reshape(shape), scale, name)
        _, rowlen, kk, _ = _topk_layout(shape, k)
        if len(positions) == 1:
            combos = _combos(rowlen, kk)
            if (out[0] >= len(combos)).any():  # a 1-set alphabet is padded to 2 symbols
                raise CodecError(f"{name}: a top-{k} position rank is beyond the {len(combos)} sets")
            idx = combos[out[0]]
        else:
            idx = np.stack(out[:kk], axis=1)
            if (np.diff(idx, axis=1) <= 0).any():
                raise CodecError(f"{name}: top-{k} indices must be increasing")
        return _topk_join(shape, idx, _dequantize(q, scale, name))

    name = f"{inner.name}+ans"
    return Codec(name, encode_ans, decode_ans, sizes, inner.error_bound,
                 inner.description + "; levels rANS-coded, one static model per column", compressed=True)


def _int_width(part: str) -> int | None:
    """The bits of one '+'-separated part of a codec name if it is an integer codec (int4sr -> 4)."""
    base = part.removesuffix("sr")
    return int(base[3:]) if base.startswith("int") and base[3:].isdigit() else None


@functools.lru_cache(maxsize=256)
def _build(name: str) -> Codec | None:
    """`BASE`, `topk:K+BASE` (`topk:K` = `topk:K+fp16`), either followed by `+z`; or `intB+ans`,
    `topk:K+intB+ans` (B = 2, 3, 4, 8; intBsr too); None if malformed."""
    if name.endswith("+ans"):
        inner = _build(name[:-4])
        bits = _int_width(inner.name.split("+")[-1]) if inner is not None and not inner.compressed else None
        if bits is None:
            return None
        k = int(name[len("topk:"):].partition("+")[0]) if name.startswith("topk:") else None
        return _ans_codec(inner, bits, k, stochastic=inner.name.endswith("sr"))
    body, zipped = (name[:-2], True) if name.endswith("+z") else (name, False)
    if body.startswith("topk:"):
        k_text, plus, inner_name = body[len("topk:"):].partition("+")
        inner = BASE_CODECS.get(inner_name) if plus else BASE_CODECS["fp16"]
        if not (k_text.isdigit() and 1 <= int(k_text) <= MAX_TOPK) or inner is None:
            return None
        codec = _topk_codec(int(k_text), inner)
        if not plus:
            codec = dataclasses.replace(codec, name=body)
    else:
        codec = BASE_CODECS.get(body)
    if codec is None:
        return None
    return _z_codec(codec) if zipped else codec


# The names the tests and benchmarks sweep; every name `parse_codec` accepts is valid on the wire.
CODECS: dict[str, Codec] = {
    name: _build(name)
    for name in (*BASE_CODECS, "int8+z", "int4+z", "topk:3", "topk:2+int8", "topk:3+int4", "topk:3+int4+z",
                 "int3+ans", "int8+ans", "topk:3+int3+ans", "topk:1+int4sr+ans")
}
CODEC_GRAMMAR = (f"{' | '.join(BASE_CODECS)}, optionally as topk:K+NAME (K = 1..{MAX_TOPK}), optionally "
                 f"followed by +z (zlib) or, where NAME ends in an integer codec, +ans (rANS); e.g. int8, "
                 f"topk:3+int4+z, topk:3+int3+ans")


# The integer widths adaptive bit width steps through, most first. Not int2: as logits (three levels)
# it costs 0.12 global accuracy on quickstart even with normalized logits (BENCHMARKS.md).
BIT_LADDER = (8, 4, 3)


def codec_bits(name: str) -> int | None:
    """Bits per value of the integer codec inside `name` (topk:3+int4+z -> 4); None if it has none."""
    return next((b for b in map(_int_width, name.split("+")) if b is not None), None)


def with_bits(name: str, bits: int) -> str:
    """`name` with its integer codec at `bits` (topk:3+int4+z, 2 -> topk:3+int2+z); unchanged if it has none.
    int8 has no stochastic twin, so intBsr becomes int8 there."""
    stochastic = "sr" if bits != 8 else ""
    return "+".join(part if _int_width(part) is None else f"int{bits}" + (stochastic if part.endswith("sr") else "")
                    for part in name.split("+"))


def is_codec(name: object) -> bool:
    return isinstance(name, str) and len(name) <= 64 and _build(name) is not None


def parse_codec(name: str) -> Codec:
    """The codec for `name` (see CODEC_GRAMMAR); anything else raises a CodecError that shows the grammar."""
    if not is_codec(name):
        raise CodecError(f"unknown codec {name!r}; choose one of: {CODEC_GRAMMAR}")
    return _build(name)


# ----------------------------------------------------------------------------------- public entry


def encode(x: np.ndarray, codec: str) -> Encoded:
    """Encode a finite real array (any float/int dtype; computed as float32) with the named codec."""
    spec = parse_codec(codec)
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise CodecError(f"can only encode real numeric arrays; got dtype {x.dtype}")
    if x.ndim > MAX_NDIM:
        raise CodecError(f"at most {MAX_NDIM} dimensions; got shape {x.shape}")
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes Inf, reported just below
        x32 = x.astype(np.float32, copy=False)
    if not np.isfinite(x32).all():
        bad = int(np.size(x32) - np.isfinite(x32).sum())
        raise NonFiniteError(
            f"input has {bad} non-finite value(s) (NaN/Inf, or beyond float32 range) of {x32.size}; "
            "only finite values can be encoded"
        )
    data, scale = spec.encode(x32)
    return Encoded(codec=spec.name, shape=tuple(int(d) for d in x.shape), data=data, scale=scale)


def decode(e: Encoded, *, max_elements: int) -> np.ndarray:
    """Decode to a new float32 array, checking everything about `e` before allocating.

    `max_elements` is the caller's budget (e.g. ref rows x classes): shapes beyond it are rejected,
    so a few header bytes can never make us allocate gigabytes.
    """
    if not isinstance(e, Encoded):
        raise CodecError(f"expected an Encoded; got {type(e).__name__}")
    spec = parse_codec(e.codec)
    shape = e.shape
    if not isinstance(shape, tuple) or not all(type(d) is int for d in shape):
        raise CodecError(f"shape must be a tuple of ints; got {shape!r}")
    if len(shape) > MAX_NDIM:
        raise CodecError(f"shape may have at most {MAX_NDIM} dimensions; got {len(shape)}")
    if any(d < 0 for d in shape):
        raise CodecError(f"shape dimensions must be >= 0; got {shape}")
    # each dim on its own too: (0, 10**30) has no elements but is no sane array (and overflows numpy)
    if any(d > max_elements for d in shape) or math.prod(shape) > max_elements:
        raise CodecError(f"shape {shape} has {math.prod(shape)} elements; at most {max_elements} expected")
    if not isinstance(e.data, bytes) or not isinstance(e.scale, bytes):
        raise CodecError(f"data and scale must be bytes; got {type(e.data).__name__}, {type(e.scale).__name__}")
    want_data, want_scale = spec.sizes(shape)
    if spec.compressed and len(e.data) <= want_data and len(e.scale) == want_scale:
        pass  # entropy-coded: at most the bound here, exactly the inner size once inflated
    elif len(e.data) != want_data or len(e.scale) != want_scale:
        raise CodecError(
            f"{spec.name} shape {shape} needs {want_data} data bytes and {want_scale} scale bytes; "
            f"got {len(e.data)} and {len(e.scale)}"
        )
    out = spec.decode(shape, e.data, e.scale)
    if not np.isfinite(out).all():
        bad = int(out.size - np.isfinite(out).sum())
        raise NonFiniteError(f"decoded {spec.name} array has {bad} non-finite value(s) of {out.size}")
    return out
