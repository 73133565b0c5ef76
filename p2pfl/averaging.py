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


def clip_around(own: np.ndarray, received: Sequence[np.ndarray], factor: float = CLIP_FACTOR) -> list[np.ndarray]:
    """Self-centred clipping (ClippedGossip; He, Karimireddy and Jaggi 2022): each vector moved to within
    `factor` x the lower median of the neighbours' distances from `own`, in the direction it lies. A
    minority of neighbours, however far they send us, then pulls us at most a bounded distance each;
    honest neighbours within that radius are unchanged."""
    if not received:
        return []
    own64 = own.astype(np.float64)
    gaps = [x.astype(np.float64) - own64 for x in received]
    dist = np.array([float(np.linalg.norm(g)) for g in gaps])
    radius = factor * float(np.percentile(dist, 50, method="lower"))
    return [x if d <= radius else (own64 + g * (radius / d)).astype(np.float32)
            for x, g, d in zip(received, gaps, dist)]
