"""The reference set: unlabeled inputs every node regenerates from a shared spec, its digest, and rotating slices."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from p2pfl.data.sources import Dataset, check_inputs, mnist1d, synthetic

# Generating MNIST-1D costs ~0.13 s per 1000 rows and a row of 40 float32 is 160 B: 1M rows is ~2 min
# and 160 MB per node, past anything a knowledge exchange needs.
MAX_REFERENCE_ROWS = 1_000_000
# Part of every digest: change it if the canonical form below changes, so old and new nodes disagree loudly.
DIGEST_VERSION = "p2pfl-reference-v1"


@dataclass(frozen=True)
class ReferenceSpec:
    """What every node needs to rebuild the same reference inputs.

    source: "mnist1d" (the default task's generator), "synthetic" (tests), a path to a user .npy, or
        "held-out": rows set aside from the training data, labels dropped (`held_out`; the "public
        data" of FedMD / FedDF), for data that has no generator; or "noise": data-free, Gaussian rows
        shaped by the training inputs' per-position mean and std (`shaped_noise`).
    seed: generator seed; must differ from the training data's seed (42 by default) so the reference
        holds fresh inputs, never training or test rows. A prime far from the usual small seeds.
    size: rows in the reference set; 20k MNIST-1D rows cost ~3 s once, then come from the cache.
    slice_size: rows used per round; 5k × 10 classes of fp16 logits is ~100 kB per message.
    """

    source: str = "mnist1d"
    seed: int = 10_007
    size: int = 20_000
    slice_size: int = 5_000

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_REFERENCE_ROWS:
            raise ValueError(f"reference size must be in 1..{MAX_REFERENCE_ROWS}, got {self.size}")
        if not 1 <= self.slice_size <= self.size:
            raise ValueError(f"reference slice_size must be in 1..size={self.size}, got {self.slice_size}")
        if self.source not in ("mnist1d", "synthetic", "held-out", "noise") and not self.source.endswith(".npy"):
            raise ValueError(
                f"unknown reference source {self.source!r}; choose one of: mnist1d, synthetic, held-out, noise, or "
                f"a path ending in .npy"
            )


class ReferenceMismatchError(ValueError):
    """Two nodes hold different reference sets, so their logits are not comparable."""


def array_digest(x: np.ndarray) -> str:
    """sha256 hex over a canonical header (version, dtype, shape) and the C-contiguous little-endian bytes."""
    canon = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    h = hashlib.sha256(f"{DIGEST_VERSION}|{canon.dtype.str}|{canon.shape}\n".encode())
    h.update(canon.tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)  # arrays have no single truth value; compare digests/contents
class Reference:
    """Reference inputs x (size, L) float32, read-only because the digest vouches for them."""

    spec: ReferenceSpec
    x: np.ndarray
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        assert self.x.dtype == np.float32 and len(self.x) == self.spec.size, (
            f"reference x must be ({self.spec.size}, ...) float32, got {self.x.shape} {self.x.dtype}"
        )
        self.x.flags.writeable = False
        object.__setattr__(self, "digest", array_digest(self.x))

    @property
    def size(self) -> int:
        return len(self.x)

    def slice_bounds(self, round_idx: int) -> tuple[int, int]:
        """(start, count) of round k's slice: rows k·slice_size mod size onwards, wrapping around."""
        return (round_idx * self.spec.slice_size) % self.size, self.spec.slice_size

    def rows(self, start: int, count: int) -> np.ndarray:
        """(count,) int64 row indices start, start+1, … wrapping past the end; how a message names a slice."""
        if not (0 <= start < self.size and 1 <= count <= self.size):
            raise ValueError(f"reference slice (start={start}, count={count}) out of range for size {self.size}")
        return (start + np.arange(count, dtype=np.int64)) % self.size

    def slice_rows(self, round_idx: int) -> np.ndarray:
        """Row indices of round k's rotating slice."""
        return self.rows(*self.slice_bounds(round_idx))


def _load_npy(path: str, size: int) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such reference file: {p}")
    try:
        x = np.load(p, allow_pickle=False)  # a shared file must never be able to run code
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not a readable .npy array ({e}); save with np.save(path, x)") from e
    x = check_inputs(str(p), x)
    if len(x) < size:
        raise ValueError(f"{p}: has {len(x)} rows but the reference spec asks for size={size}; set size <= {len(x)}")
    return x[:size]


def build_reference(spec: ReferenceSpec, *, train_seed: int | None = None) -> Reference:
    """Regenerate the reference inputs for `spec` (generated sources come from the cache after the first time).

    Uses the train and the test inputs of a dataset generated with spec.seed, labels discarded.
    Pass train_seed to have a clash with the training data's seed rejected.
    """
    if train_seed is not None and spec.seed == train_seed and not spec.source.endswith(".npy"):
        raise ValueError(
            f"reference seed {spec.seed} equals the training seed; pick another so the reference holds fresh inputs"
        )
    if spec.source.endswith(".npy"):
        return Reference(spec, _load_npy(spec.source, spec.size))
    if spec.source in ("held-out", "noise"):
        raise ValueError(f"a {spec.source} reference set comes from the training data: use held_out(dataset, spec) "
                         f"or shaped_noise(dataset, spec)")
    d = _generated(spec)
    return Reference(spec, np.concatenate([d.x_train, d.x_test])[: spec.size])


# A held-out reference takes at most this share of the training rows, so a small dataset keeps most of its
# labels for the nodes (sklearn digits: 1,437 training rows -> 287 reference rows).
HELD_OUT_SHARE = 0.2


def held_out(data: Dataset, spec: ReferenceSpec) -> tuple[Dataset, Reference]:
    """Set reference rows aside from the training data: (the data without them, the reference set).

    Takes min(spec.size, HELD_OUT_SHARE of the training rows) rows, drawn with spec.seed, so every
    node that loads the same data holds the same reference (checked by digest); no node trains on
    them, and their labels are dropped. The slice is cut to the rows there are."""
    n = len(data.y_train)
    size = min(spec.size, int(HELD_OUT_SHARE * n))
    if size < 1:
        raise ValueError(f"the training data has {n} rows: too few to hold out a reference set; pass "
                         f"reference.source = a .npy of unlabeled inputs")
    rows = np.sort(np.random.default_rng(spec.seed).choice(n, size=size, replace=False))
    keep = np.setdiff1d(np.arange(n), rows)
    cut = ReferenceSpec(source="held-out", seed=spec.seed, size=size, slice_size=min(spec.slice_size, size))
    train = Dataset(data.x_train[keep], data.y_train[keep], data.x_test, data.y_test, data.num_classes, data.name)
    return train, Reference(cut, np.ascontiguousarray(data.x_train[rows]))


def shaped_noise(data: Dataset, spec: ReferenceSpec) -> Reference:
    """A data-free reference set: spec.size Gaussian rows, each input position with the mean and std
    of that position over the training inputs (statistics a dataset publishes; every node loads the
    same data, so every node draws the same rows from spec.seed). No row is anyone's data; the price
    is that the rows look like no class in particular (BENCHMARKS.md: the datasets table)."""
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    noise = np.random.default_rng(spec.seed).standard_normal((spec.size, *data.input_shape))
    return Reference(spec, (mean + std * noise).astype(np.float32))


def reference_labels(spec: ReferenceSpec) -> np.ndarray:
    """(size,) the labels of a generated reference set, for diagnostics (nodes never use them); a user's
    .npy has none."""
    if spec.source.endswith(".npy") or spec.source in ("held-out", "noise"):
        raise ValueError(f"reference source {spec.source}: this reference set has no labels to regenerate")
    d = _generated(spec)
    return np.concatenate([d.y_train, d.y_test])[: spec.size]


def _generated(spec: ReferenceSpec) -> Dataset:
    """The dataset a generated reference set (mnist1d or synthetic) is cut from: train then test rows."""
    if spec.source == "mnist1d":
        # mnist1d makes num_samples // 10 rows per class: round up so there are >= size rows.
        return mnist1d(num_samples=-(-spec.size // 10) * 10, seed=spec.seed)
    return synthetic(num_samples=max(spec.size, 2), seed=spec.seed)


def spec_digest(spec: ReferenceSpec) -> str:
    """The digest nodes compare at hello time: of the data the spec produces, so a different generator
    version or user file shows up as a mismatch even when the spec fields agree."""
    return build_reference(spec).digest


def check_digest(reference: Reference, expected: str) -> None:
    """Raise ReferenceMismatchError unless `expected` (e.g. a peer's hello) matches our reference."""
    if reference.digest != expected:
        raise ReferenceMismatchError(
            f"reference digest mismatch: ours is {reference.digest[:16]}… ({reference.spec}), the other is "
            f"{str(expected)[:16]}…; every node must use the same reference spec (source, seed, size) "
            "and the same mnist1d version"
        )
