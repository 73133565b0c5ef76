"""Gossip averaging of parameter vectors: pure functions, used by every parameter mode.

A node replaces its vector by a weighted average of its own and its neighbours' (D-PSGD, Lian et
al. 2017). With Metropolis-Hastings weights (symmetric, rows summing to one) repeated mixing on a
connected graph converges to the plain mean of all nodes' vectors.

Weights a node picks alone (real nodes: 1 / (neighbours + 1), not knowing the graph) are not
symmetric, and plain mixing then converges to a mean weighted towards some nodes. Push-sum
(Kempe et al. 2003; SGP, Assran et al. 2019) fixes that: each node also carries a mass, sends a
share of it with its vector, and its vector is the mass-weighted average of what it holds, so the
total mass, and with it the plain mean, is conserved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mix(own: np.ndarray, received: Sequence[tuple[float, np.ndarray]]) -> np.ndarray:
    """own * (1 - sum of weights) + sum of weight * vector.

    Only the neighbours heard from contribute; the weight of a silent one stays on `own`, so it is
    neither lost nor invented (the row still sums to one).
    """
    total = sum(w for w, _ in received)
    if not 0.0 <= total <= 1.0 + 1e-9 or any(w < 0 for w, _ in received):
        raise ValueError(f"mixing weights must be >= 0 and sum to at most 1; got {[w for w, _ in received]}")
    out = own.astype(np.float64) * (1.0 - total)
    for w, x in received:
        if x.shape != own.shape:
            raise ValueError(f"cannot average a vector of shape {x.shape} into one of shape {own.shape}")
        out += w * x
    return out.astype(np.float32)


def push_sum(own: np.ndarray, kept_mass: float, received: Sequence[tuple[float, np.ndarray]]) -> tuple[np.ndarray, float]:
    """One push-sum update: (vector, mass) after receiving (mass share, vector) pairs.

    `kept_mass` is the share of its own mass the node kept when it sent shares to its neighbours.
    """
    total = kept_mass + sum(m for m, _ in received)
    if kept_mass <= 0 or any(m <= 0 for m, _ in received):
        raise ValueError(f"push-sum masses must be > 0; got kept {kept_mass}, received {[m for m, _ in received]}")
    return mix(own, [(m / total, x) for m, x in received]), total


CLIP_FACTOR = 2.0  # the ball's radius in lower-median neighbour distances
# The parameter reputation defence (`standings`). Distance alone cannot tell a sign-flipper from an honest
# neighbour on non-IID data: one round of local training moves a model by about its own norm, so a sign-flipper
# lies only ~2 lower-median distances away in round 1 (scripts/diag_standing.py, quickstart fedavg). Direction can:
# honest neighbours' vectors point our way (cosine 0.52-0.67 in round 1, 0.79-0.95 by round 3), a sign-flipper's
# away from us (-0.53 to -0.61), noise nowhere (0). So a neighbour keeps its whole weight from cosine
# ALIGNED_FULL up and none from 0 down, and, for lies that point our way but reach far, none from
# STANDING_FAR lower-median distances (whole up to STANDING_NEAR; honest fedavg neighbours: within 1.95 in rounds 1-3). Nodes started from unlike initialisations (real nodes with
# different seeds) point nowhere in particular (cosine ~0) until averaging brings them together, so the
# cosine's yardstick is the upper-median neighbour's where that is below ALIGNED_FULL: full weight from
# it, none from ALIGNED_FULL below it, and a run whose honest nodes are all unaligned still averages.
ALIGNED_FULL = 0.3
# the lowest the cosine yardstick goes: below any honest crowd's upper median (unlike initialisations sit at
# ~0 +- 0.02), above a sign-flipper's (-0.5 and lower, diag_standing.py)
YARDSTICK_FLOOR = -0.1
STANDING_NEAR, STANDING_FAR = 2.5, 5.0


def spread(own: np.ndarray, received: Sequence[np.ndarray]) -> np.ndarray:
    """Each vector's distance from `own` in lower-median distances of them all (1: the median one; the
    lower median, so that with half the neighbours far the yardstick is still a near one)."""
    own64 = own.astype(np.float64)
    return relative(np.array([float(np.linalg.norm(x.astype(np.float64) - own64)) for x in received]))


def relative(dist: np.ndarray) -> np.ndarray:
    """Distances in lower-median distances of them all (see `spread`)."""
    median = float(np.percentile(dist, 50, method="lower")) if len(dist) else 0.0
    if median == 0.0:  # the nearest half says exactly what we hold: anything else is infinitely far
        return np.where(dist > 0, np.inf, 0.0)
    return dist / median


def toward(own: np.ndarray, x: np.ndarray, f: float) -> np.ndarray:
    """own + f (x - own): x's pull on an average kept to the share f of it (f = 1: x itself)."""
    if f >= 1.0:
        return x
    own64 = own.astype(np.float64)
    return (own64 + f * (x.astype(np.float64) - own64)).astype(np.float32)


def clip_around(own: np.ndarray, received: Sequence[np.ndarray], factor: float = CLIP_FACTOR) -> list[np.ndarray]:
    """Self-centred clipping (ClippedGossip; He, Karimireddy and Jaggi 2022): each vector moved to within
    `factor` x the lower median of the neighbours' distances from `own`, in the direction it lies. A
    minority of neighbours, however far they send us, then pulls us at most a bounded distance each;
    honest neighbours within that radius are unchanged."""
    return [toward(own, x, factor / s if s > factor else 1.0) for x, s in zip(received, spread(own, received))]


def alignment(own: np.ndarray, received: Sequence[np.ndarray]) -> np.ndarray:
    """The cosine between `own` and each vector: 0 for a vector of zeros (it points nowhere), 1 for every
    vector when `own` is all zeros (no direction of ours to point away from: distance alone judges)."""
    own64 = own.astype(np.float64)
    norm = float(np.linalg.norm(own64))
    if norm == 0.0:
        return np.ones(len(received))
    out = []
    for x in received:
        x64 = x.astype(np.float64)
        both = norm * float(np.linalg.norm(x64))
        out.append(float(np.dot(own64, x64)) / both if both > 0 else 0.0)
    return np.clip(np.array(out), -1.0, 1.0)


def standings(own: np.ndarray, received: Sequence[np.ndarray]) -> list[float]:
    """Each neighbour's weight factor from how far (`spread`) and which way (`alignment`) its vector lies:
    the smaller of 1 up to STANDING_NEAR, 0 from STANDING_FAR (linear between), and 1 from the yardstick
    y = min(ALIGNED_FULL, the upper-median cosine), 0 from y - ALIGNED_FULL (linear between; the upper
    median, so that with half the neighbours pointing away the yardstick is still an aligned one). The
    yardstick is never below YARDSTICK_FLOOR: a neighbourhood that mostly points away from us (a lone
    neighbour that sign-flips, liars in the majority) is no measure of what is aligned, while unlike
    initialisations (cosines ~0 for everyone) still average whole.
    Clipping bounds a far neighbour's pull to the ball's edge, every round, in its direction, so a
    sign-flipper still pulls twice as hard as an honest neighbour; standing takes the pull away instead."""
    if not received:
        return []
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite vector gets NaN here, and 0 below
        return verdicts(alignment(own, received), spread(own, received))


def verdicts(aligned: np.ndarray, spreads: np.ndarray) -> list[float]:
    """`standings` from each neighbour's cosine with us and its `spread`."""
    with np.errstate(invalid="ignore", over="ignore"):
        # nanpercentile: one unjudgeable vector (NaN cosine) must not unmake the yardstick of the others
        yardstick = float(np.clip(np.nanpercentile(aligned, 50, method="higher"), YARDSTICK_FLOOR, ALIGNED_FULL))
        near = (STANDING_FAR - spreads) / (STANDING_FAR - STANDING_NEAR)
        way = (aligned - (yardstick - ALIGNED_FULL)) / ALIGNED_FULL
    # a vector no finite arithmetic can judge (the wire and `modes.plausible` refuse those first) gets nothing
    return [float(f) for f in np.nan_to_num(np.clip(np.minimum(near, way), 0.0, 1.0), nan=0.0)]


def row_standings(own: np.ndarray, own_has: np.ndarray, received: Sequence[np.ndarray],
                  has: Sequence[np.ndarray]) -> np.ndarray:
    """`standings` of per-class vectors ((C, d) prototypes), judged only on the rows of the classes both we
    (`own_has`) and the neighbour (its `has`) hold labels of: its cosine with ours over those rows and its
    root-mean-square row distance from ours, relative to the other judged neighbours'. Other rows say
    nothing about a liar: ours are not evidence there. NaN for a neighbour with no such row."""
    out = np.full(len(received), np.nan)
    judged = [k for k, h in enumerate(has) if (own_has & h).any()]
    if not judged:
        return out
    aligned, dist = [], []
    with np.errstate(invalid="ignore", over="ignore"):
        for k in judged:
            rows = own_has & has[k]
            x, o = received[k][rows].astype(np.float64), own[rows].astype(np.float64)
            aligned.append(alignment(o.ravel(), [x.ravel()])[0])
            dist.append(float(np.linalg.norm(x - o)) / np.sqrt(rows.sum()))
    out[judged] = verdicts(np.array(aligned), relative(np.array(dist)))
    return out


def clip_rows(own: np.ndarray, own_has: np.ndarray, received: Sequence[np.ndarray], has: Sequence[np.ndarray],
              factor: float = CLIP_FACTOR) -> list[np.ndarray]:
    """`clip_around` per class row of (C, d) vectors, on the classes we hold labels of, among the neighbours
    that claim the class too: each class's prototype pulls ours a bounded distance. Rows of classes we do not
    hold have no centre of ours and are left as sent."""
    out = [x.astype(np.float32, copy=True) for x in received]
    for c in np.flatnonzero(own_has):
        some = [k for k, h in enumerate(has) if h[c]]
        for k, row in zip(some, clip_around(own[c], [received[k][c] for k in some], factor)):
            out[k][c] = row
    return out
