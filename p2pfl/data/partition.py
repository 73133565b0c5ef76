"""Splitting a training set across nodes (IID, Dirichlet label skew, k-class shards, quantity skew); train/val."""

from __future__ import annotations

import numpy as np

# Dirichlet draws are cheap; if 100 fresh draws all leave some node under min_size, the settings are
# (nearly) infeasible and retrying longer would only hide that.
DIRICHLET_MAX_TRIES = 100

SPEC_FORMS = (
    "'iid', 'dirichlet:<alpha>' (e.g. dirichlet:0.5), 'dirichlet-node:<alpha>' (e.g. dirichlet-node:0.1), "
    "'shards:<classes per node>' (e.g. shards:2), 'quantity:<alpha>' (e.g. quantity:1.0)"
)


def _check(y: np.ndarray, n_nodes: int) -> np.ndarray:
    y = np.asarray(y)
    assert y.ndim == 1 and y.dtype.kind in "iu", f"labels must be a 1-D integer array, got {y.shape} {y.dtype}"
    assert len(y) == 0 or y.min() >= 0, f"labels must be >= 0, found {y.min()}"
    if not 1 <= n_nodes <= len(y):
        raise ValueError(f"n_nodes must be in 1..{len(y)} (the number of samples), got {n_nodes}")
    return y


def _check_skew(y: np.ndarray, n_nodes: int, what: str, alpha: float, min_size: int) -> np.ndarray:
    """The checks shared by the Dirichlet-based partitioners."""
    y = _check(y, n_nodes)
    if not (alpha > 0 and np.isfinite(alpha)):
        raise ValueError(f"{what} alpha must be a positive number, got {alpha}")
    if n_nodes * min_size > len(y):
        raise ValueError(
            f"cannot give {n_nodes} nodes >= {min_size} samples each from {len(y)}; lower min_size or n_nodes"
        )
    return y


def _as_parts(chunks: list[np.ndarray]) -> list[np.ndarray]:
    """Sorted int64 index arrays: a canonical form, so equal partitions compare equal."""
    return [np.sort(np.asarray(c, dtype=np.int64)) for c in chunks]


def iid(y: np.ndarray, n_nodes: int, seed: int) -> list[np.ndarray]:
    """Uniformly random, equal-size (±1) parts; every sample used."""
    y = _check(y, n_nodes)
    perm = np.random.default_rng(seed).permutation(len(y))
    return _as_parts(np.array_split(perm, n_nodes))


def dirichlet(y: np.ndarray, n_nodes: int, alpha: float, seed: int, min_size: int = 10) -> list[np.ndarray]:
    """Label skew: each class is split over nodes with proportions ~ Dirichlet(alpha · 1).

    Small alpha → each node sees few classes; large alpha → close to IID. Redraws until every node has
    >= min_size samples (at most DIRICHLET_MAX_TRIES times). As in NIID-Bench (Li et al. 2022), a node
    that already holds more than N / n_nodes samples gets no more of the next classes, which keeps
    sizes from collapsing onto a few nodes when alpha is small.
    """
    y = _check_skew(y, n_nodes, "dirichlet", alpha, min_size)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    cap = len(y) / n_nodes
    smallest = 0
    for _ in range(DIRICHLET_MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_nodes)]
        sizes = np.zeros(n_nodes, dtype=np.int64)
        for c in classes:
            idx_c = rng.permutation(np.flatnonzero(y == c))
            open_ = sizes < cap  # full nodes take no more; never all full, since sizes sum to < N
            p = rng.dirichlet(np.full(n_nodes, alpha)) * open_
            # tiny alpha can underflow every open node's share to 0: then split evenly among them
            p = p / p.sum() if p.sum() > 0 else open_ / open_.sum()
            cuts = (np.cumsum(p)[:-1] * len(idx_c)).astype(np.int64)
            for node, chunk in enumerate(np.split(idx_c, cuts)):
                parts[node].append(chunk)
                sizes[node] += len(chunk)
        smallest = int(sizes.min())
        if smallest >= min_size:
            return _as_parts([np.concatenate(p) for p in parts])
    raise ValueError(
        f"dirichlet(alpha={alpha}) left a node with {smallest} < min_size={min_size} samples in each of "
        f"{DIRICHLET_MAX_TRIES} draws; raise alpha, use fewer nodes, or use 'dirichlet-node:{alpha}' (each node "
        f"draws its own label mix: works for any number of nodes)"
    )


def dirichlet_node(y: np.ndarray, n_nodes: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Label skew per node (Hsu et al. 2019): node i's label mix q_i ~ Dirichlet(alpha · 1); equal sizes.

    Unlike `dirichlet` (each class split over nodes), this works for any number of nodes: with many
    nodes and small alpha, many nodes share a class instead of most getting nothing. Nodes draw in
    turn without replacement; once a class runs out, a node's mix is renormalized over the classes
    left, so the last nodes may hold a broader mix than their draw. Every sample is used once.
    """
    y = _check_skew(y, n_nodes, "dirichlet-node", alpha, 1)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    left = np.array([len(p) for p in pools])
    used = np.zeros(len(classes), dtype=np.int64)
    parts = []
    for size in (len(a) for a in np.array_split(np.arange(len(y)), n_nodes)):
        q = rng.dirichlet(np.full(len(classes), alpha))
        take = np.zeros(len(classes), dtype=np.int64)
        while take.sum() < size:
            avail = left - take > 0
            p = q * avail
            p = p / p.sum() if p.sum() > 0 else avail / avail.sum()
            take += np.minimum(rng.multinomial(size - take.sum(), p), left - take)
        parts.append(np.concatenate([pool[u:u + t] for pool, u, t in zip(pools, used, take)]))
        used += take
        left -= take
    return _as_parts(parts)


def shards(y: np.ndarray, n_nodes: int, classes_per_node: int, seed: int) -> list[np.ndarray]:
    """Pathological label skew: each node holds exactly `classes_per_node` classes.

    Like McMahan et al.'s sort-and-shard split, but a shard never straddles two classes: each node
    picks k distinct classes (least-used first, ties broken at random, so classes are spread evenly),
    then each class's samples are cut into one shard per node that picked it. If n_nodes · k is less
    than the number of classes, the classes nobody picked are left unused.
    """
    y = _check(y, n_nodes)
    classes = np.unique(y)
    k = classes_per_node
    if not 1 <= k <= len(classes):
        raise ValueError(f"classes_per_node must be in 1..{len(classes)} (classes present), got {k}")
    rng = np.random.default_rng(seed)
    # 1) assign classes to nodes, keeping per-class use balanced
    uses = np.zeros(len(classes), dtype=np.int64)
    picks = []
    for _ in range(n_nodes):
        order = np.lexsort((rng.random(len(classes)), uses))  # by uses, then random tie-break
        chosen = order[:k]
        uses[chosen] += 1
        picks.append(chosen)
    # 2) cut each class into one shard per node that picked it
    shards_of: dict[int, list[np.ndarray]] = {}
    for ci, c in enumerate(classes):
        idx_c = rng.permutation(np.flatnonzero(y == c))
        if len(idx_c) < uses[ci]:
            raise ValueError(
                f"class {c} has {len(idx_c)} samples but {uses[ci]} nodes need a shard of it; "
                "use fewer nodes or fewer classes_per_node"
            )
        shards_of[ci] = list(np.array_split(idx_c, uses[ci])) if uses[ci] else []
    # 3) deal the shards
    return _as_parts([np.concatenate([shards_of[ci].pop() for ci in chosen]) for chosen in picks])


def quantity_skew(y: np.ndarray, n_nodes: int, alpha: float, seed: int, min_size: int = 10) -> list[np.ndarray]:
    """Size skew: node sizes ~ min_size + Multinomial(rest, Dirichlet(alpha)); labels IID within a node."""
    y = _check_skew(y, n_nodes, "quantity", alpha, min_size)
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(n_nodes, alpha))
    # Giving min_size to everyone up front guarantees the floor without redraws.
    sizes = min_size + rng.multinomial(len(y) - n_nodes * min_size, p)
    perm = rng.permutation(len(y))
    return _as_parts(np.split(perm, np.cumsum(sizes)[:-1]))


def partition(y: np.ndarray, n_nodes: int, spec: str, seed: int, min_size: int = 10) -> list[np.ndarray]:
    """Dispatch on a spec string: 'iid', 'dirichlet:0.5', 'shards:2', 'quantity:1.0'."""
    name, _, arg = spec.strip().partition(":")
    if name == "iid" and not arg:
        return iid(y, n_nodes, seed)
    kinds = {"dirichlet": float, "dirichlet-node": float, "shards": int, "quantity": float}
    if name not in kinds or not arg:
        raise ValueError(f"bad partition spec {spec!r}; accepted forms: {SPEC_FORMS}")
    try:
        value = kinds[name](arg)
    except ValueError:
        msg = f"bad partition spec {spec!r}: {arg!r} is not a valid number; accepted forms: {SPEC_FORMS}"
        raise ValueError(msg) from None
    if name == "dirichlet":
        return dirichlet(y, n_nodes, value, seed, min_size=min_size)
    if name == "dirichlet-node":
        return dirichlet_node(y, n_nodes, value, seed)
    if name == "shards":
        return shards(y, n_nodes, value, seed)
    return quantity_skew(y, n_nodes, value, seed, min_size=min_size)


def label_counts(y: np.ndarray, idx: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) int64 count of each label among y[idx]."""
    labels = np.asarray(y)[idx]
    assert labels.size == 0 or labels.max() < num_classes, f"label {labels.max()} >= num_classes={num_classes}"
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def split_train_val(idx: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split one node's indices into (train, val); val gets round(fraction · n) but train keeps >= 1.

    Use a different seed per node (e.g. seed + node index) so nodes don't split in lockstep.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    idx = np.asarray(idx, dtype=np.int64)
    n_val = min(int(round(val_fraction * len(idx))), max(len(idx) - 1, 0))
    perm = np.random.default_rng(seed).permutation(idx)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
