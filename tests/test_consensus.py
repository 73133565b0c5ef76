"""Tests for p2pfl.consensus: per-class weights and the teacher rules (pure numpy, fast)."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pfl import consensus
from p2pfl.consensus import (Contribution, agreement, class_weights, normalize_logits, reliability_weights, softmax,
                             teacher)

RULES = ("mean", "class-weighted", "pairwise", "aligned", "median", "trimmed")


def _contribs(rng: np.random.Generator, k: int, rows: int, classes: int, counts: np.ndarray | None = None):
    counts = rng.integers(0, 50, size=(k, classes)) if counts is None else counts
    return [Contribution(rng.normal(scale=3.0, size=(rows, classes)).astype(np.float32), counts[i],
                         float(rng.uniform(0.1, 1.0))) for i in range(k)]


# ------------------------------------------------------------------------------------ class_weights

@settings(max_examples=60, deadline=None)
@given(
    counts=st.integers(1, 5).flatmap(lambda k: st.integers(2, 6).flatmap(
        lambda c: hnp.arrays(np.int64, (k, c), elements=st.sampled_from([0, 0, 1, 7, 1000])))),
    floor=st.sampled_from([0.0, 0.02, 0.5]),
    weights=st.lists(st.floats(0.05, 1.0), min_size=5, max_size=5),
)
def test_class_weights_columns_sum_to_one(counts, floor, weights):
    # the strategy's many zeros give all-zero rows (a node with no data), all-zero columns (a class
    # nobody saw) and the all-zero matrix
    contribs = [Contribution(np.zeros((1, counts.shape[1])), counts[i], weights[i]) for i in range(len(counts))]
    w = class_weights(contribs, floor)
    assert w.shape == counts.shape
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-9)


def test_class_weights_follow_evidence():
    a = Contribution(np.zeros((1, 3)), np.array([100, 0, 10]))
    b = Contribution(np.zeros((1, 3)), np.array([0, 100, 10]))
    w = class_weights([a, b], floor=0.02)
    assert w[0, 0] > 0.9 and w[1, 1] > 0.9  # each node speaks for the class it trained on
    np.testing.assert_allclose(w[:, 2], [0.5, 0.5])  # equal evidence, equal say


# -------------------------------------------------------------------------------------------- teacher

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("seed", range(4))
def test_teacher_rows_are_distributions(rule, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, size=(4, 5))
    counts[:, 3] = 0  # a class nobody saw
    counts[2, :2] = 0  # a node that saw only some classes
    p = teacher(_contribs(rng, 4, 30, 5, counts), rule=rule, floor=0.02)
    assert p.shape == (30, 5)
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("rule", ["mean", "class-weighted", "pairwise", "aligned"])
def test_teacher_with_a_neighbour_that_reports_no_labels(rule):
    rng = np.random.default_rng(5)
    counts = rng.integers(1, 50, size=(3, 4))
    counts[1] = 0  # e.g. a node that trains on unlabeled data only
    p = teacher(_contribs(rng, 3, 10, 4, counts), rule=rule, floor=0.02)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def _own():
    rng = np.random.default_rng(1)
    return Contribution(rng.normal(scale=2.0, size=(20, 4)).astype(np.float32), np.array([30, 10, 0, 5]), 0.4)


@pytest.mark.parametrize("rule", ["mean", "class-weighted", "aligned"])
def test_teacher_with_only_own_contribution_is_own_softmax(rule):
    # an empty inbox: the node's own knowledge is the whole consensus
    own = _own()
    p = teacher([own], rule=rule)
    assert p.shape == (20, 4)
    np.testing.assert_allclose(p, softmax(own.logits.astype(np.float64)), atol=1e-6)


def test_pairwise_with_only_own_contribution_is_a_distribution_close_to_own():
    own = _own()
    p = teacher([own], rule="pairwise")
    assert p.shape == (20, 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p, softmax(own.logits.astype(np.float64)), atol=0.1)


def test_pairwise_with_only_own_contribution_is_own_softmax():
    own = _own()
    np.testing.assert_allclose(teacher([own], rule="pairwise"), softmax(own.logits.astype(np.float64)), atol=1e-3)


def test_class_weighted_follows_the_expert():
    # expert0 trained only on class 0, expert1 only on class 1. On the same rows expert0 is sure it
    # is class 0 while expert1 (extrapolating to inputs it never saw) leans to class 1 less surely.
    rng = np.random.default_rng(0)
    rows = 50
    a = rng.uniform(0.85, 0.99, size=rows)  # expert0's p(class 0)
    b = rng.uniform(0.3, 0.7, size=rows)  # expert1's p(class 1)
    p0 = np.column_stack([a, *[(1 - a) / 3] * 3])
    p1 = np.column_stack([(1 - b) / 3, b, (1 - b) / 3, (1 - b) / 3])
    expert0 = Contribution(np.log(p0), np.array([100, 0, 0, 0]), 0.5)
    expert1 = Contribution(np.log(p1), np.array([0, 100, 0, 0]), 0.5)
    cw = teacher([expert0, expert1], rule="class-weighted", floor=0.02)
    mean = teacher([expert0, expert1], rule="mean")
    assert np.all(cw[:, 0] > mean[:, 0]), (cw[:, 0] - mean[:, 0]).min()
    assert np.all(cw.argmax(1) == 0)


def test_unknown_rule_names_the_choices():
    own = Contribution(np.zeros((2, 3)), np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="mode") as e:
        teacher([own], rule="mode")
    for rule in RULES:
        assert rule in str(e.value)


def test_no_contribution_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        teacher([], rule="mean")


@settings(max_examples=50, deadline=None)
@given(z=hnp.arrays(np.float32, st.tuples(st.integers(0, 20), st.integers(2, 12)),
                    elements=st.floats(-30, 30, width=32)))
def test_normalized_logits_keep_the_softmax_in_a_fixed_range(z):
    y = normalize_logits(z, 8.0)
    assert y.shape == z.shape
    if z.size == 0:
        return
    assert (y >= -4.0).all() and (y <= 4.0).all() and np.allclose(y.max(axis=1), 4.0)
    # the same distribution, except that probabilities below e^-8 (relative to the top) are raised to it
    p, q = softmax(z.astype(np.float64)), softmax(y.astype(np.float64))
    assert np.abs(p - q).max() <= z.shape[1] * np.exp(-8.0) + 1e-6
    assert normalize_logits(z, 0.0) is z  # 0: off


# ------------------------------------------------------------------ reliability: agreement odds

def _onehot(labels, c=4, sure=6.0):
    z = np.zeros((len(labels), c))
    z[np.arange(len(labels)), labels] = sure
    return z


def test_agreement_is_the_share_of_rows_where_a_node_names_the_others_top_class():
    truth = np.arange(20) % 4
    wrong = truth.copy()
    wrong[:5] = (wrong[:5] + 1) % 4  # a quarter of its rows differ
    counts = np.full(4, 10)
    contribs = [Contribution(_onehot(truth), counts) for _ in range(3)] + [Contribution(_onehot(wrong), counts)]
    a = agreement(contribs, floor=0.02)
    np.testing.assert_allclose(a, [1.0, 1.0, 1.0, 0.75])  # two of the three others always outvote the fourth
    np.testing.assert_allclose(reliability_weights(contribs, 0.02), [19.0, 19.0, 19.0, 3.0])  # odds, clipped at 0.95
    np.testing.assert_allclose(reliability_weights(contribs, 0.02, power=2), [361.0, 361.0, 361.0, 9.0])
    assert np.isnan(agreement([contribs[0]], 0.02)[0])  # nobody to agree with
    np.testing.assert_array_equal(reliability_weights([contribs[0]], 0.02), [1.0])


def test_agreement_only_counts_rows_a_node_spoke_about():
    truth = np.arange(8) % 4
    own = Contribution(_onehot(truth), np.full(4, 10))
    rows = np.array([0, 1, 2])
    part = Contribution(_onehot((truth[rows] + 1) % 4), np.full(4, 10), rows=rows)  # wrong on all it sent
    np.testing.assert_allclose(agreement([own, part], 0.02), [0.0, 0.0])
    assert teacher([own, part], reliability="agreement").shape == (8, 4)


def test_reliability_moves_the_teacher_toward_the_consistent_nodes():
    # (with only three nodes the one with the most evidence would dominate every leave-one-out pool, and
    # every node would agree with the others equally often: agreement needs a neighbourhood to vote)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 200)
    noisy = np.where(rng.random(200) < 0.6, rng.integers(0, 4, 200), truth)
    contribs = [Contribution(_onehot(truth, sure=2.0), np.full(4, 10)) for _ in range(4)]
    contribs.append(Contribution(_onehot(noisy, sure=2.0), np.full(4, 25)))  # more evidence than any, erratic
    plain = teacher(contribs)
    weighted = teacher(contribs, reliability="agreement")
    on_truth = [t[np.arange(200), truth].mean() for t in (plain, weighted)]
    assert on_truth[1] > on_truth[0] + 0.05, on_truth
    np.testing.assert_allclose(agreement(contribs, 0.02)[:4], 1.0)  # the others outvote it on every row
    np.testing.assert_allclose(weighted.sum(axis=1), 1.0, atol=1e-5)
    sharper = teacher(contribs, reliability="agreement:2")
    assert sharper[np.arange(200), truth].mean() > on_truth[1]
    for bad in ("votes", "agreement:0", "agreement:x", "none:1"):
        with pytest.raises(ValueError, match="expected none, agreement or agreement:P"):
            teacher(contribs, reliability=bad)


# ------------------------------------------------------------------------- robust pooling and clipping

@settings(max_examples=80, deadline=None)
@given(honest=st.integers(1, 7), seed=st.integers(0, 10_000), trim=st.sampled_from([0.2, 0.34, 0.5]),
       size=st.sampled_from([1.0, 1e6, -1e6]))
def test_a_trimmed_mean_keeps_each_class_within_the_honest_range(honest, seed, trim, size):
    rng = np.random.default_rng(seed)
    # the most liars a trim of the honest and liars together drops at each end
    liars = max(m for m in range(honest) if m <= (np.floor(trim * (honest + m)) if trim < 0.5
                                                  else (honest + m - 1) // 2))
    values = np.concatenate([rng.uniform(size=(honest, 4, 3)), np.full((liars, 4, 3), size)])
    present = np.ones(values.shape[:2])
    out = consensus.trimmed_mean(values, present, trim)
    h = values[:honest]
    assert (out >= h.min(axis=0) - 1e-12).all() and (out <= h.max(axis=0) + 1e-12).all()


def test_median_and_trimmed_pools_ignore_a_liar_and_a_distrusted_node_and_read_rows():
    honest = [Contribution(np.log(np.array([[0.8, 0.1, 0.1]] * 3)).astype(np.float32), np.array([5, 5, 5]), 1.0)
              for _ in range(4)]
    liar = Contribution(np.log(np.array([[1e-6, 1e-6, 1.0]] * 3)).astype(np.float32), np.array([10**6] * 3), 1.0)
    for rule in ("median", "trimmed"):
        out = teacher(honest + [liar], rule=rule)
        assert np.allclose(out, [[0.8, 0.1, 0.1]] * 3, atol=1e-5), rule
    # weighed down to 0 (reputation's verdict): left out even when the liars are many
    out = teacher(honest[:2] + [replace(liar, weight=0.0)] * 3, rule="median")
    assert np.allclose(out, [[0.8, 0.1, 0.1]] * 3, atol=1e-5)
    # a neighbour about row 1 only: the other rows are pooled without it
    partial = Contribution(np.log(np.array([[0.1, 0.8, 0.1]])).astype(np.float32), np.array([5, 5, 5]), 1.0,
                           rows=np.array([1]))
    out = teacher([honest[0], partial], rule="median")
    assert np.allclose(out[0], [0.8, 0.1, 0.1], atol=1e-5) and np.allclose(out[1], [0.45, 0.45, 0.1], atol=1e-5)


def test_probability_clipping_leaves_the_typical_neighbour_and_pulls_a_far_one_in():
    own = Contribution(np.log(np.array([[0.6, 0.2, 0.2]] * 2)).astype(np.float32), np.array([5, 5, 5]))
    near = [Contribution(np.log(np.array([[0.5, 0.3, 0.2]] * 2)).astype(np.float32), np.array([5, 5, 5]))
            for _ in range(2)]
    far = Contribution(np.log(np.array([[0.0001, 0.0001, 0.9998]] * 2)).astype(np.float32), np.array([5, 5, 5]))
    out = consensus.clip_to_own([own, *near, far])
    assert all(o is c for o, c in zip(out[:3], [own, *near]))  # within the radius: the same objects
    p = softmax(out[3].logits.astype(np.float64))
    gap = 0.5 * np.abs(p - softmax(own.logits.astype(np.float64))).sum(axis=-1)
    assert np.allclose(gap, 0.1, atol=1e-4)  # the lower median gap of (0.1, 0.1, ~0.8)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 6), seed=st.integers(0, 10_000), factor=st.sampled_from([0.5, 1.0, 2.0]))
def test_clipped_distributions_stay_distributions_within_the_radius(k, seed, factor):
    rng = np.random.default_rng(seed)
    contribs = _contribs(rng, k + 1, 5, 4)
    out = consensus.clip_to_own(contribs, factor)
    probs = np.stack([softmax(c.logits.astype(np.float64)) for c in contribs])
    gaps = 0.5 * np.abs(probs[1:] - probs[0]).sum(axis=-1)  # (k, R)
    radius = factor * np.sort(gaps, axis=0)[(k - 1) // 2]
    for c in out[1:]:
        p = softmax(c.logits.astype(np.float64))
        assert np.allclose(p.sum(axis=-1), 1.0)
        assert (0.5 * np.abs(p - probs[0]).sum(axis=-1) <= radius + 1e-4).all()


@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 6), c=st.integers(2, 8), d=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_class_means_pool_each_class_over_the_nodes_that_have_it(k, c, d, seed):
    from p2pfl.consensus import class_means

    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, size=(k, c)) * rng.integers(0, 2, size=(k, c))  # many classes absent
    contribs = [Contribution(rng.standard_normal((c, d)).astype(np.float32), counts[i], float(rng.uniform(0.1, 1)))
                for i in range(k)]
    means, have = class_means(contribs)
    assert means.shape == (c, d) and have.tolist() == (counts.sum(axis=0) > 0).tolist()
    assert (means[~have] == 0).all()
    for cls in np.flatnonzero(have):  # a weighted mean of the class's contributions: inside their range
        rows = np.stack([x.logits[cls] for x, n in zip(contribs, counts[:, cls]) if n > 0])
        assert (means[cls] >= rows.min(axis=0) - 1e-5).all() and (means[cls] <= rows.max(axis=0) + 1e-5).all()
    alone = [Contribution(contribs[0].logits, np.ones(c, np.int64), 1.0)]
    np.testing.assert_allclose(class_means(alone)[0], contribs[0].logits, atol=1e-6)
