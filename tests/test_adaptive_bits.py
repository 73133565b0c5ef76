"""Adaptive bit width: the policy (pure) and the codec names it produces."""

import pytest

from p2pfl import codecs
from p2pfl.gossip import adaptive_bits


@pytest.mark.parametrize("drift, bits", [
    (None, 4),  # no teacher yet: full width
    (0.30, 4), (0.10, 4),  # at or above the threshold
    (0.09, 3), (0.05, 3),  # below T
    (0.049, 3), (0.0, 3),  # the ladder ends at int3
])
def test_fewer_bits_as_the_consensus_settles(drift, bits):
    assert adaptive_bits(4, drift, 0.1) == bits


def test_the_ladder_starts_at_the_codecs_width_and_off_means_full_width():
    assert [adaptive_bits(8, d, 0.1) for d in (0.2, 0.07, 0.03, 0.01)] == [8, 4, 3, 3]
    assert adaptive_bits(8, 0.0, 0.0) == 8  # threshold 0: off
    assert adaptive_bits(2, 0.0, 0.5) == 2  # below the ladder: kept


@pytest.mark.parametrize("name, bits, narrower", [
    ("topk:3+int4+z", 4, "topk:3+int2+z"),
    ("int8", 8, "int2"),
    ("int4sr+z", 4, "int2sr+z"),
    ("topk:2+int8+z", 8, "topk:2+int2+z"),
    ("fp16", None, "fp16"),  # no integer codec: nothing to narrow
    ("topk:3", None, "topk:3"),
])
def test_codec_names_at_another_width(name, bits, narrower):
    assert codecs.codec_bits(name) == bits
    assert codecs.with_bits(name, 2) == narrower
    assert codecs.is_codec(narrower)
    assert codecs.with_bits("int4sr", 8) == "int8"  # int8 has no stochastic twin
