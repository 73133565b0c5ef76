"""Local data: datasets (MNIST-1D, digits, spoken digits, MNIST-5k, synthetic, .npz), partitioners across nodes, and the shared reference set."""

from p2pfl.data.partition import (
    dirichlet,
    iid,
    label_counts,
    partition,
    quantity_skew,
    shards,
    split_train_val,
)
from p2pfl.data.reference import (
    Reference,
    ReferenceMismatchError,
    ReferenceSpec,
    array_digest,
    build_reference,
    check_digest,
    spec_digest,
)
from p2pfl.data.sources import Dataset, cache_dir, digits, from_npz, fsdd, load_source, mnist1d, mnist5k, synthetic

__all__ = [
    "Dataset",
    "Reference",
    "ReferenceMismatchError",
    "ReferenceSpec",
    "array_digest",
    "build_reference",
    "cache_dir",
    "check_digest",
    "digits",
    "dirichlet",
    "from_npz",
    "fsdd",
    "iid",
    "label_counts",
    "load_source",
    "mnist1d",
    "mnist5k",
    "partition",
    "quantity_skew",
    "shards",
    "spec_digest",
    "split_train_val",
    "synthetic",
]
