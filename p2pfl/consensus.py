"""Combining knowledge: own + neighbours' predictions on a reference slice -> one teacher (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from p2pfl.config import CONSENSUS_RULES, ROW_RULES, parse_reliability


@dataclass(frozen=True)
class Contribution:
    """One node's knowledge about the same reference rows."""

    logits: np.ndarray  # (R, C) prior-free ("balanced") logits, or (len(rows), C) with `rows`
    label_counts: np.ndarray  # (C,) training samples per class at that node
    weight: float = 1.0  # mixing weight from the topology (e.g. Metropolis-Hastings)
    rows: np.ndarray | None = None  # the slice rows these logits are about (None: all of them)


def normalize_logits(z: np.ndarray, log_range: float) -> np.ndarray:
    """(R, C) logits -> the same softmax, up to probabilities below e^-log_range, as values in
    [-log_range/2, log_range/2]: log-probabilities relative to the row's top class, floored at
    -log_range, then centred. Every consensus rule is invariant to a per-row shift, and a codec's
    integer levels then cover one fixed, symmetric range instead of whatever the most confident row
    of a scale group spans. log_range <= 0: unchanged."""
    if log_range <= 0 or z.size == 0:
        return z
    rel = np.maximum(z - z.max(axis=-1, keepdims=True), -log_range)
    return (rel + log_range / 2).astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(R,) half the L1 distance between the distributions in each row of p and q (R, C)."""
    return 0.5 * np.abs(p - q).sum(axis=-1)


def class_weights(contribs: list[Contribution], floor: float) -> np.ndarray:
    """(K, C) weight of node k's opinion on class c, normalized over k for each c.

    A node's probability for class c is worth as much as the evidence it trained on for c: its
    label count, plus a `floor` share of its data so second-hand knowledge (learned by
    distillation, not from labels) still travels when no neighbour has seen the class.
    """
    w = _evidence_weights(contribs, floor)  # (K, C)
    total = w.sum(axis=0, keepdims=True)
    return np.divide(w, total, out=np.full_like(w, 1.0 / len(contribs)), where=total > 0)


def _evidence_weights(contribs: list[Contribution], floor: float) -> np.ndarray:
    """(K, C) mixing weight x (label count + floor x the node's sample count), before normalizing."""
    counts = np.stack([c.label_counts.astype(np.float64) for c in contribs])  # (K, C)
    evidence = counts + floor * counts.sum(axis=1, keepdims=True)
    return np.array([c.weight for c in contribs])[:, None] * evidence


CLAIM_FACTOR = 4.0  # honest quickstart neighbours hold up to ~3x the median's data (Dirichlet sizes)


def class_means(contribs: list[Contribution]) -> tuple[np.ndarray, np.ndarray]:
    """Prototypes: per class, the mean of the contributions' (C, d) class means weighted by mixing
    weight x that class's label count (a node without the class adds nothing to it). Returns the (C, d)
    means and the (C,) mask of classes some contribution has; rows of the others are zero."""
    means = np.stack([c.logits.astype(np.float64) for c in contribs])  # (K, C, d)
    w = np.stack([c.weight * c.label_counts.astype(np.float64) for c in contribs])  # (K, C)
    total = w.sum(axis=0)
    have = total > 0
    out = np.zeros(means.shape[1:])
    out[have] = np.einsum("kc,kcd->cd", w[:, have], means[:, have]) / total[have, None]
    return out.astype(np.float32), have


def bound_claims(contribs: list[Contribution], factor: float = CLAIM_FACTOR) -> list[Contribution]:
    """The "claims" defence: each neighbour's label counts (contribs[1:]; contribs[0] is our own) scaled
    down so their total is at most `factor` x the larger of our own total and the (lower) median total
    of all contributions. Counts are what a peer says about itself; this bounds how far a lie can move the
    class weights without any label of its own (a liar's share of a class stays at most that of a node
    with `factor` times the typical data)."""
    totals = np.array([float(c.label_counts.astype(np.float64).sum()) for c in contribs])  # int64 sums wrap
    # the lower median: a liar among two contributions (or half of an even number) cannot raise it
    cap = factor * max(totals[0], float(np.percentile(totals, 50, method="lower")), 1.0)
    return [contribs[0]] + [c if t <= cap else replace(c, label_counts=c.label_counts * (cap / t))
                            for c, t in zip(contribs[1:], totals[1:])]


def _stack(contribs: list[Contribution]) -> tuple[np.ndarray, np.ndarray]:
    """(K, R, C) probabilities and (K, R) presence: 1 where node k spoke about row r (zeros elsewhere)."""
    full = [c for c in contribs if c.rows is None]
    if not full:
        raise ValueError("masked consensus needs one contribution about every row (the node's own)")
    r, c = full[0].logits.shape
    probs = np.zeros((len(contribs), r, c))
    present = np.zeros((len(contribs), r))
    for k, contrib in enumerate(contribs):
        rows = slice(None) if contrib.rows is None else contrib.rows
        probs[k, rows] = softmax(contrib.logits.astype(np.float64))
        present[k, rows] = 1.0
    return probs, present


def agreement(contribs: list[Contribution], floor: float) -> np.ndarray:
    """(K,) for each node, the share of the rows it spoke about where its top class is the top class
    of the others' class-weighted pool (NaN where no other node spoke about its rows)."""
    probs, present = _stack(contribs)
    w = _evidence_weights(contribs, floor)[:, None, :] * present[:, :, None]  # (K, R, C)
    num, den = (probs * w).sum(axis=0), w.sum(axis=0)  # (R, C)
    out = np.full(len(contribs), np.nan)
    for k in range(len(contribs)):
        others_num, others_den = num - probs[k] * w[k], den - w[k]
        rows = (present[k] > 0) & (others_den.sum(axis=1) > 0)
        if rows.any():
            others = others_num[rows] / np.maximum(others_den[rows], 1e-300)
            out[k] = float((probs[k, rows].argmax(axis=1) == others.argmax(axis=1)).mean())
    return out


def reliability_weights(contribs: list[Contribution], floor: float, power: float = 1.0) -> np.ndarray:
    """(K,) the odds a / (1 - a) of each node's agreement a with the others (clipped to [0.05, 0.95];
    0.5 where unknown), to the power `power`. Multiplied into the mixing weights, a weaker model's
    opinion counts for less than a stronger one's with the same label evidence, measured without
    labels (BENCHMARKS.md)."""
    if len(contribs) < 2:
        return np.ones(len(contribs))
    a = np.clip(np.nan_to_num(agreement(contribs, floor), nan=0.5), 0.05, 0.95)
    return (a / (1.0 - a)) ** power


def teacher(contribs: list[Contribution], *, rule: str = "class-weighted", floor: float = 0.02,
            reliability: str = "none") -> np.ndarray:
    """(R, C) teacher probabilities.

    rule "mean": weighted mean of probabilities. "class-weighted": per-class weights from
    `class_weights`, applied to probabilities, rows renormalized. "pairwise": `pairwise_coupling`.
    "aligned": `aligned_log_pool`. "median" / "trimmed": `robust_pool` (weights only say who is present:
    a node weighed down to 0 is left out). BENCHMARKS.md compares them. reliability "agreement:P" first
    scales every node's weight by `reliability_weights` with power P (`parse_reliability`).
    """
    if not contribs:
        raise ValueError("consensus needs at least one contribution (the node's own)")
    power = parse_reliability(reliability)
    if power:
        scale = reliability_weights(contribs, floor, power)
        contribs = [replace(c, weight=c.weight * m) for c, m in zip(contribs, scale)]
    if rule in ("median", "trimmed"):
        return robust_pool(contribs, TRIM_SHARE if rule == "trimmed" else 0.5)
    if any(c.rows is not None for c in contribs):
        return _masked_teacher(contribs, rule, floor)
    probs = np.stack([softmax(c.logits.astype(np.float64)) for c in contribs])  # (K, R, C)
    if rule == "mean":
        w = np.array([c.weight for c in contribs], dtype=np.float64)
        out = np.tensordot(w / w.sum(), probs, axes=1)
    elif rule == "class-weighted":
        w = class_weights(contribs, floor)[:, None, :]  # (K, 1, C)
        out = (probs * w).sum(axis=0)
        out /= out.sum(axis=-1, keepdims=True)
    elif rule == "pairwise":
        return pairwise_coupling(contribs, floor)
    elif rule == "aligned":
        return aligned_log_pool(contribs, floor)
    else:
        raise ValueError(f"unknown consensus rule {rule!r}; choose one of: {', '.join(CONSENSUS_RULES)}")
    return out.astype(np.float32)


def _masked_teacher(contribs: list[Contribution], rule: str, floor: float) -> np.ndarray:
    """`teacher` where some nodes spoke about some rows only: each row pools the nodes that spoke about it.

    Same weights as "mean" / "class-weighted", renormalized per row over the nodes present there.
    """
    if rule not in ROW_RULES:
        raise ValueError(f"consensus rule {rule!r} needs every node's opinion on every row; use 'mean' or "
                         f"'class-weighted' with row selection")
    probs, present = _stack(contribs)
    c = probs.shape[2]
    if rule == "mean":
        w = np.array([x.weight for x in contribs])[:, None, None] * np.ones((1, 1, c))  # (K, 1, C)
    else:
        w = _evidence_weights(contribs, floor)[:, None, :]  # class_weights before normalizing
    w = w * present[:, :, None]  # (K, R, C)
    total = w.sum(axis=0)
    out = np.divide((probs * w).sum(axis=0), total, out=probs.mean(axis=0), where=total > 0)
    return (out / out.sum(axis=-1, keepdims=True)).astype(np.float32)


TRIM_SHARE = 0.2  # "trimmed": the share of the present nodes dropped at each end, per row and class


def robust_pool(contribs: list[Contribution], trim: float) -> np.ndarray:
    """(R, C) per row and class, the `trimmed_mean` of the probabilities of the nodes present there
    (weight > 0; rows no such node spoke about: our own view), rows renormalized."""
    probs, present = _stack(contribs)
    present = present * (np.array([c.weight for c in contribs]) > 0)[:, None]
    present[0, ~present.any(axis=0)] = 1.0
    out = np.maximum(trimmed_mean(probs, present, trim), 1e-12)
    return (out / out.sum(axis=-1, keepdims=True)).astype(np.float32)


def trimmed_mean(values: np.ndarray, present: np.ndarray, trim: float) -> np.ndarray:
    """(R, C) from (K, R, C) values and (K, R) presence: per row and column, the mean of the present values
    without the floor(trim x n) lowest and highest (n present); trim 0.5 keeps the middle one or two (the
    median). So up to that many outliers of any size leave the result within the others' range."""
    values = np.where(present[:, :, None] > 0, values, np.nan)
    ordered = np.sort(values, axis=0)  # the absent (NaN) last
    n = present.sum(axis=0)  # (R,)
    cut = np.floor(trim * n) if trim < 0.5 else np.floor((n - 1) / 2)
    k = np.arange(len(values))[:, None]
    keep = ((k >= cut) & (k < n - cut))[:, :, None]  # (K, R, 1)
    return np.where(keep, ordered, 0.0).sum(axis=0) / np.maximum(keep.sum(axis=0), 1)


PROB_CLIP_FACTOR = 1.0  # the radius: this times the lower median gap, so at least half the neighbours are untouched


def clip_to_own(contribs: list[Contribution], factor: float = PROB_CLIP_FACTOR) -> list[Contribution]:
    """The "clip" defence in probability space (SCClip's self-centred clipping, per row): each neighbour's
    distribution on a row moved toward ours (contribs[0]) along the straight line until its total-variation
    gap is at most `factor` x the lower median gap of the neighbours that spoke about the row. A mixture of
    two distributions is one, so the result is a distribution; a neighbour within the radius is unchanged,
    one far away pulls the teacher at most as far as a typical honest neighbour does."""
    if len(contribs) < 2:
        return contribs
    probs, present = _stack(contribs)
    gap = 0.5 * np.abs(probs[1:] - probs[0]).sum(axis=-1)  # (K-1, R)
    gap = np.where(present[1:] > 0, gap, np.nan)
    spoken = (present[1:] > 0).any(axis=0)
    radius = np.zeros(gap.shape[1])
    if spoken.any():  # the lower median per row, of the neighbours present there
        ordered = np.sort(gap[:, spoken], axis=0)
        lower = (present[1:, spoken].sum(axis=0).astype(int) - 1) // 2
        radius[spoken] = factor * ordered[lower, np.arange(spoken.sum())]
    shrink = np.minimum(1.0, np.divide(radius, gap, out=np.ones_like(gap), where=gap > 0))  # (K-1, R)
    out = [contribs[0]]
    for k, c in enumerate(contribs[1:]):
        rows = slice(None) if c.rows is None else c.rows
        s = shrink[k, rows][:, None]
        if (s >= 1.0).all():
            out.append(c)
            continue
        moved = probs[0, rows] + s * (probs[k + 1, rows] - probs[0, rows])
        out.append(replace(c, logits=np.log(np.maximum(moved, 1e-12)).astype(np.float32)))
    return out


def aligned_log_pool(contribs: list[Contribution], floor: float, iters: int = 4) -> np.ndarray:
    """(R, C) teacher from log-probabilities aligned per node before pooling.

    A node trained on classes S_j knows log p(y|x) only up to a per-row offset (its softmax is
    normalized over what it believes, not over the truth). Fit z (R, C) and offsets a (K, R) to
    minimize sum_k,c w_kc (z_c - a_k - l_kc)^2 by alternating weighted means, then softmax(z).
    """
    w = class_weights(contribs, floor)  # (K, C), sums to one over k
    logp = np.stack([_log_softmax(c.logits.astype(np.float64)) for c in contribs])  # (K, R, C)
    a = np.zeros(logp.shape[:2])  # (K, R)
    for _ in range(iters):
        z = (w[:, None, :] * (logp + a[:, :, None])).sum(axis=0)  # (R, C)
        # a node with no evidence at all (no labels shared) keeps offset 0 instead of 0/0
        a = ((z[None] - logp) * w[:, None, :]).sum(axis=2) / np.maximum(w.sum(axis=1), 1e-12)[:, None]  # (K, R)
        a -= a.mean(axis=0, keepdims=True)
    z = (w[:, None, :] * (logp + a[:, :, None])).sum(axis=0)
    return softmax(z).astype(np.float32)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def pairwise_coupling(contribs: list[Contribution], floor: float, iters: int = 100) -> np.ndarray:
    """(R, C) teacher from pairwise class ratios, each pair judged by the nodes that know both classes.

    A node that trained on classes c and c' can tell them apart; one that saw only c says "c" for
    anything, so its opinion on (c, c') is worth min(evidence_c, evidence_c'). Per pair we average
    r_cc' = p(c) / (p(c) + p(c')) with those weights, then recover one distribution from all the
    pairs by the iterative coupling of Hastie & Tibshirani (1998).
    """
    counts = np.stack([c.label_counts.astype(np.float64) for c in contribs])  # (K, C)
    evidence = counts + floor * counts.sum(axis=1, keepdims=True)
    mix = np.array([c.weight for c in contribs])[:, None, None]
    pair_w = mix * np.minimum(evidence[:, :, None], evidence[:, None, :])  # (K, C, C)
    probs = np.stack([softmax(c.logits.astype(np.float64)) for c in contribs])  # (K, R, C)
    ratio = probs[:, :, :, None] / (probs[:, :, :, None] + probs[:, :, None, :] + 1e-12)  # (K, R, C, C)
    n = pair_w.sum(axis=0)  # (C, C)
    r = np.einsum("kcd,krcd->rcd", pair_w, ratio) / np.maximum(n, 1e-12)  # (R, C, C)
    np.fill_diagonal(n, 0.0)
    p = np.tensordot(mix[:, 0, 0] / mix.sum(), probs, axes=1)  # the plain mean as a start (exact for one node)
    target = (n[None] * r).sum(axis=2)  # (R, C)
    for _ in range(iters):
        mu = p[:, :, None] / (p[:, :, None] + p[:, None, :] + 1e-12)
        p = p * target / np.maximum((n[None] * mu).sum(axis=2), 1e-12)
        p /= p.sum(axis=1, keepdims=True)
    return p.astype(np.float32)


def self_support(contribs: list[Contribution], confident: float = 0.8, min_share: float = 0.05) -> np.ndarray:
    """(K,) how far each contribution supports what we (contribs[0]) know from our own labels, in [0, 1]:
    over the rows where we are confident (top probability >= `confident`) in a class we hold labels of
    (at least `min_share` of our samples), the mean of min(1, p / expected), p its probability of our
    top class and `expected` CLAIMED_SUPPORT where it claims labels of that class too (at least
    `min_share` of its own), 1/C (chance) where it does not. NaN where it spoke about no such row.
    Honest neighbours score near 1; a liar that moves, inverts or reorders classes scores low wherever
    it claims to know the class (BENCHMARKS.md, robustness)."""
    probs, present = _stack(contribs)
    own = probs[0]
    top = own.argmax(axis=1)
    claims = np.stack([c.label_counts.astype(np.float64) for c in contribs])  # (K, C)
    knows = claims >= min_share * np.maximum(claims.sum(axis=1, keepdims=True), 1.0)  # (K, C)
    judged = (own.max(axis=1) >= confident) & knows[0, top]
    rows = np.arange(len(top))
    out = np.full(len(contribs), np.nan)
    for k in range(len(contribs)):
        mine = judged & (present[k] > 0)
        if mine.any():
            expected = np.where(knows[k, top[mine]], CLAIMED_SUPPORT, 1.0 / probs.shape[2])
            out[k] = float(np.minimum(1.0, probs[k, rows[mine], top[mine]] / expected).mean())
    return out


# What a neighbour that claims labels of a class gives that class, at least, on rows we are confident of:
# honest quickstart neighbours give more on 99% of such rows (8 rounds, BENCHMARKS.md, robustness)
CLAIMED_SUPPORT = 0.25
# reputation_factor's ramp: full weight from this support up, none below SUPPORT_NONE. On quickstart (8 rounds)
# honest neighbours' per-slice self_support has its 1st percentile at 0.66, `invert` liars' sit at 0.1-0.3
SUPPORT_FULL, SUPPORT_NONE = 0.6, 0.3


def held_classes(label_counts: np.ndarray, min_share: float = 0.05) -> np.ndarray:
    """(C,) the classes a contribution claims a real share of its labels of (at least `min_share` of them,
    and at least one): a class of one stray sample is no ground to judge a neighbour on."""
    counts = label_counts.astype(np.float64)
    return counts >= max(min_share * counts.sum(), 1.0)


def class_row_support(contribs: list[Contribution], min_share: float = 0.05) -> np.ndarray:
    """(K,) self_support for per-class logits (fd): row c of a contribution is its sender's mean prediction
    over its own rows of class c, so wherever it claims labels of c (at least `min_share` of its own), row
    c should give class c at least CLAIMED_SUPPORT: a model fits its own training rows, a liar that moves,
    inverts or reorders classes gives them next to nothing. The mean of min(1, p / CLAIMED_SUPPORT) over
    those rows; NaN where it claims no class. The truth of a row is its index, not our model's opinion,
    so a node whose own model is still unsure of its classes judges as well as a confident one."""
    out = np.full(len(contribs), np.nan)
    for k, c in enumerate(contribs):
        rows = np.flatnonzero(held_classes(c.label_counts, min_share))
        if len(rows):
            p = softmax(c.logits.astype(np.float64)[rows])[np.arange(len(rows)), rows]
            out[k] = float(np.minimum(1.0, p / CLAIMED_SUPPORT).mean())
    return out


def reputation_factor(support: float) -> float:
    """A neighbour's weight factor from its (running) self_support: 1 from SUPPORT_FULL up, 0 at
    SUPPORT_NONE and below, linear between."""
    return float(np.clip((support - SUPPORT_NONE) / (SUPPORT_FULL - SUPPORT_NONE), 0.0, 1.0))
