"""Gossip averaging of parameter vectors: one pure function, used by every parameter mode.

A node replaces its vector by a weighted average of its own and its neighbours' (D-PSGD, Lian et
al. 2017). With Metropolis-Hastings weights (symmetric, rows summing to one) repeated mixing on a
connected graph converges to the plain mean of all nodes' vectors.
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
