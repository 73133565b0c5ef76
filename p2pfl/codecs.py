"""Array compression codecs: float arrays <-> plain bytes that msgpack can carry, with exact sizes.

A codec turns a finite float array into an `Encoded` (codec name, shape, and a few `bytes` fields)
and back into float32. Everything that crosses the wire is plain bytes and ints, so `wire.py` can
pack it without pickle. Decoding treats its input as hostile: it checks the shape against a budget
and every byte count against what the codec needs for that shape *before* allocating anything.

Codecs now (see `CODECS`; a later change adds top-k, int4 and deltas as new entries):

    name   data                          scale                         |decoded - x| per element
    fp32   prod(shape) x <f4             -                             0
    fp16   prod(shape) x <f2             -                             2**-11 |x| + 2**-25
    int8   prod(shape) x int8            rows x <f4 (max|row| / 127)   scale_row / 2  (+ float32 slack)

int8 "rows" are the last axis of an array with ndim >= 2 (one scale per logit row or weight-matrix
row); a 1-D (or 0-d) array is cut into chunks of INT8_CHUNK values so one outlier in a long weight
vector only coarsens its own chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

INT8_CHUNK = 256  # values per int8 scale for 1-D arrays: 1.6% scale overhead, local enough for outliers
MAX_NDIM = 8  # payloads are logits (2-D) or flat parameter vectors (1-D); 8 leaves room, bounds the header

_F32 = np.dtype("<f4")  # explicit little-endian: the bytes must mean the same on every host
_F16 = np.dtype("<f2")
_I8 = np.dtype("i1")


class CodecError(ValueError):
    """An array cannot be encoded, or an `Encoded` is not a valid instance of its codec."""


class NonFiniteError(CodecError):
    """NaN or Inf in an input array or in decoded values (a separate class so wire.py can say so)."""


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


# ----------------------------------------------------------------------------------------- helpers


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(number of rows, row length) of the int8 row layout; the last row of a 1-D array may be short."""
    n = math.prod(shape)
    if n == 0:
        return 0, 0  # no values, no scales (also avoids a scale per row for shapes like (10**6, 0))
    if len(shape) >= 2:
        return n // shape[-1], shape[-1]
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
        raise CodecError(f"fp16 cannot hold {big:.4g} (largest finite fp16 is 65504); use fp32 or int8")
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
    scales = np.frombuffer(scale, dtype=_F32).astype(np.float32)
    if not np.isfinite(scales).all() or (scales < 0).any():
        bad = scales[~(np.isfinite(scales) & (scales >= 0))][0]
        raise NonFiniteError(f"int8 scales must be finite and >= 0; got {bad}")
    q = np.frombuffer(data, dtype=_I8).astype(np.float32).reshape(shape)
    with np.errstate(over="ignore"):  # a huge scale overflows to Inf: caught by the finite check in decode()
        return q * _per_element(scales, shape)


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


CODECS: dict[str, Codec] = {
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
    )
}


def parse_codec(name: str) -> Codec:
    """The registry entry for `name`; unknown names raise a CodecError that lists the choices."""
    codec = CODECS.get(name) if isinstance(name, str) else None
    if codec is None:
        raise CodecError(f"unknown codec {name!r}; choose one of: {', '.join(CODECS)}")
    return codec


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
    if len(e.data) != want_data or len(e.scale) != want_scale:
        raise CodecError(
            f"{spec.name} shape {shape} needs {want_data} data bytes and {want_scale} scale bytes; "
            f"got {len(e.data)} and {len(e.scale)}"
        )
    out = spec.decode(shape, e.data, e.scale)
    if not np.isfinite(out).all():
        bad = int(out.size - np.isfinite(out).sum())
        raise NonFiniteError(f"decoded {spec.name} array has {bad} non-finite value(s) of {out.size}")
    return out
