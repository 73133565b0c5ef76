"""What a mode hands to the gossip streams and gets back: whole arrays, torch-free (gossip never loads torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Outgoing:
    """Knowledge ready to send: a whole payload array and, for logits, the reference slice it is about."""

    kind: str  # "logits" | "params"
    array: np.ndarray
    ref_start: int = 0
    ref_count: int = 0
    mass: float | None = None  # push-sum: the node's mass, of which each neighbour gets its weight's share
    label_counts: np.ndarray | None = None  # what the frame claims of the sender's data (None: the truth)
    # the round the frame is about when not the round being shared: a late answer about an earlier round's
    # slice (attacks.py's echo and dissensus answer after hearing what the neighbours said about it)
    round: int | None = None


@dataclass(frozen=True)
class Received:
    """A neighbour's knowledge as a mode reads it: whole rows, plus what consensus needs."""

    sender: str
    round: int
    kind: str
    array: np.ndarray
    ref_start: int
    ref_count: int
    label_counts: np.ndarray
    weight: float  # this node's mixing weight for the sender
    mass: float = 1.0  # push-sum: the share of the sender's mass that came with it
    rows: np.ndarray | None = None  # logits: the slice rows `array` holds (None: all of them)
