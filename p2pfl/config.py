"""Settings as frozen dataclasses; TOML loading and command-line overrides with errors that name the key.

A leaf: it imports no runtime module. It owns the grammars of its own strings (selection, reliability,
averaging, adapter kinds, consensus rules); every table validates itself, so a `GossipConfig` built in
Python is checked as one read from TOML. Mode names come from `mode_facts`, codec names from `codecs`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pfl import codecs
from p2pfl.mode_facts import MODE_FACTS, MODES, PER_CLASS_KINDS  # the one table: a mode the wire does not know cannot be configured


class ConfigError(ValueError):
    """A bad setting: the message names the key, the bad value and what is allowed."""


# -- the grammars of this module's strings ------------------------------------------------------------

# consensus.teacher; BENCHMARKS.md compares them. "median" and "trimmed" are the robust per-class pools (each
# class's probability the median, or the mean without the TRIM_SHARE highest and lowest, of the nodes present):
# options, not defaults: they ignore label evidence, so a class only a few nodes know is outvoted even when nobody
# lies (BENCHMARKS.md: 0.649 / 0.682 global on a clean quickstart against class-weighted's 0.765)
CONSENSUS_RULES = ("mean", "class-weighted", "pairwise", "aligned", "median", "trimmed")
ROW_RULES = ("mean", "class-weighted", "median", "trimmed")  # the rules that pool per row, so a node may speak about some rows only
# consensus defences, combined with "+" (e.g. claims+clip):
# - claims (consensus.bound_claims): a neighbour's label counts scaled down to at most CLAIM_FACTOR times the
#   larger of our own total and the neighbourhood's lower median, so a claim of 10^15 samples cannot outweigh
#   the honest evidence;
# - reputation (consensus.self_support, reputation_factor): logits; a neighbour's weight scaled by what it says
#   where our own labelled classes let us judge (its running mean probability of our confident top class,
#   full weight from chance level up), so a liar that moves, inverts or reorders classes loses its say;
#   parameter modes (averaging.standings): a neighbour's pull scaled down as its vector points away from ours
#   (cosine below ALIGNED_FULL, none from 0) or lies beyond STANDING_NEAR lower-median distances (none from
#   STANDING_FAR); this round's verdict or its running mean, the smaller; a sign-flipper, IPM or noise sender
#   is then not averaged in at all;
# - clip (averaging.clip_around): parameter modes average each neighbour's vector clipped to a ball around
#   our own (self-centred clipping, ClippedGossip), of radius CLIP_FACTOR times the lower median distance;
#   in logits mode the same idea in probability space (consensus.clip_to_own): each neighbour's row moved
#   toward our own to within PROB_CLIP_FACTOR times the lower median total-variation gap of that row
# "auto" is the measured default: claims+reputation (claims: on quickstart and two-widths, seeds 0-2, no honest
# claim reaches 60% of the bound, so clean runs are unchanged; reputation: clean quickstart, 30 rounds, seeds 0-2,
# moved global by -0.0015 / +0.0014 / +0.0011; BENCHMARKS.md, robustness). "none": no defence.
DEFENCES = ("claims", "reputation", "clip")
AUTO_DEFENCE = ("claims", "reputation")


def parse_defence(text: str) -> frozenset[str]:
    """'auto' -> the default set; 'none' -> none; 'claims+clip' -> both. ValueError names the grammar."""
    if text == "auto":
        return frozenset(AUTO_DEFENCE)
    if text == "none":
        return frozenset()
    parts = text.split("+")
    if any(p not in DEFENCES for p in parts):
        raise ValueError(f"{text!r}: expected auto, none, or {', '.join(DEFENCES)} joined by +, e.g. claims+clip")
    return frozenset(parts)
REFERENCE_SOURCES = ("auto", "mnist1d", "synthetic", "held-out", "noise")
GENERATED_SOURCES = ("mnist1d", "synthetic")  # data sources with a generator a reference set can come from
SELECT_RULES = ("all", "confident", "uncertain", "changed")
AVERAGING = ("metropolis", "push-sum")
OUTLIER_EXPOSURE = ("pooled", "uniform", "none")  # gossip.outlier_exposure
# topology.GENERATORS builds each (and asserts it has exactly these); watts-strogatz is small-world's other name
TOPOLOGY_GENERATORS = ("ring", "line", "star", "complete", "grid", "torus", "erdos-renyi", "small-world",
                       "watts-strogatz", "barabasi-albert", "random-regular")
ADAPTER_KINDS = ("bottleneck", "residual", "head", "whole", "lora")  # p2pfl/models/adapter.py builds each


def parse_select(text: str) -> tuple[str, float]:
    """'confident:0.25' -> ("confident", 0.25); 'all' -> ("all", 1.0). ValueError names the grammar."""
    rule, _, fraction = text.partition(":")
    try:
        f = float(fraction) if fraction else 1.0
    except ValueError:
        f = -1.0
    if rule not in SELECT_RULES or not 0.0 < f <= 1.0 or (rule == "all") == bool(fraction):
        raise ValueError(f"{text!r}: expected all, confident:F, uncertain:F or changed:T with 0 < F, T <= 1, "
                         f"e.g. confident:0.25 or changed:0.05")
    return rule, f


def parse_reliability(text: str) -> float:
    """'none' -> 0; 'agreement' -> 1; 'agreement:P' -> P, the power of the agreement odds. ValueError
    names the grammar."""
    rule, _, power = text.partition(":")
    try:
        p = float(power) if power else 1.0
    except ValueError:
        p = -1.0
    if text == "none":
        return 0.0
    if rule != "agreement" or not 0.0 < p <= 8.0:
        raise ValueError(f"{text!r}: expected none, agreement or agreement:P with 0 < P <= 8 (the power of "
                         f"the agreement odds), e.g. agreement:2")
    return p


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _at_least(table: object, prefix: str, low: float, *keys: str, example: str = "") -> None:
    for key in keys:
        value = getattr(table, key)
        _check(value >= low, f"{prefix}{key} = {value}: must be at least {low}{example}")


def _positive(table: object, prefix: str, *keys: str) -> None:
    for key in keys:
        value = getattr(table, key)
        _check(value > 0, f"{prefix}{key} = {value}: must be greater than 0")


def _share(table: object, prefix: str, *keys: str) -> None:
    for key in keys:
        value = getattr(table, key)
        _check(0.0 <= value <= 1.0, f"{prefix}{key} = {value}: a probability or share, between 0 and 1")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 3e-3  # Adam; tiny models on 40-sample signals tolerate a high rate
    # cosine decay ends at lr * this; 1 = constant, the default: knowledge keeps arriving until the last round,
    # and decay to 0.05 cost 0.016 / 0.008 global on two seeds (BENCHMARKS.md)
    min_lr_ratio: float = 1.0
    batch_size: int = 100
    kd_batch_size: int = 200  # reference rows per distillation step
    warmup_steps: int = 200  # label-only steps before the first round, so round-0 knowledge is worth sending
    local_steps: int = 90  # steps per round, labels and teacher mixed; +0.02 global over 60 on two seeds (BENCHMARKS.md)
    # a node that starts late (joins a running network, or restarts after a crash) and jumps over rounds to
    # reach the network owes their steps; it trains up to this many times local_steps more per round until
    # they are made up (0: never; its rounds then take up to 1 + make_up times as long)
    make_up: float = 0.0
    # steps a node may train per round while it waits for a neighbour, with what its last round learned
    # from (0: it waits idle). They hold nobody but by a chunk (node.IDLE_CHUNK): it was waiting anyway,
    # under 20% churn ~40% of the time. Made-up and idle steps advance the learning-rate schedule like any
    # (planned over warmup_steps + rounds x local_steps): with min_lr_ratio < 1 it reaches its floor sooner
    idle_steps: int = 0
    kd_weight: float = 2.0  # measured: +1.0 / +1.5 points global over 1.0 on two seeds and alphas (BENCHMARKS.md)
    temperature: float = 1.0
    # the weight of the teacher's split among the classes a node has labels of (distill.own_split_distill_loss):
    # 1 plain distillation; 0 leaves that ranking to the node's own labels, the teacher still saying how
    # likely a row is to be one of them and which other class (measured on spoken digits: BENCHMARKS.md)
    kd_own_split: float = 1.0
    weight_decay: float = 0.0
    balanced: bool = True  # prior-corrected CE (see distill.balanced_cross_entropy)
    augment_shift: int = 4  # shift labelled signals by up to this many steps (0: off); +10 points global at 25 rounds
    # shift the reference rows distilled on by up to this many steps (0: off): a 500-row slice is seen ~36
    # times a round, and shifted copies keep the student from memorising it (+0.028 global; BENCHMARKS.md)
    augment_reference: int = 4
    # prototypes mode: the weight of the pull of each labelled embedding toward its class's pooled
    # prototype (FedProto's lambda, MSE), and of teaching the classifier every pooled prototype's class
    # (off: on quickstart it moved global accuracy by 0.001 and put 2 nodes below local; BENCHMARKS.md)
    proto_weight: float = 1.0
    proto_head_weight: float = 0.0
    # where a node's model trains: "cpu", "cuda", "cuda:N", "mps", or "auto" (the first CUDA device if torch
    # sees one, else the CPU). Models this small gain little from a GPU one by one; the default stays the CPU
    device: str = "cpu"

    def __post_init__(self):
        _check(re.fullmatch(r"cpu|auto|mps|cuda(:\d+)?", self.device) is not None,
               f"train.device = {self.device!r}: use 'cpu' (the default), 'cuda', 'cuda:N', 'mps' or 'auto' "
               f"(CUDA when torch sees a GPU, else the CPU)")
        _positive(self, "train.", "lr", "temperature")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"train.min_lr_ratio = {self.min_lr_ratio}: the cosine schedule's "
                                                f"end as a share of train.lr, between 0 and 1 (1 = constant)")
        _at_least(self, "train.", 1, "batch_size", "kd_batch_size")
        _at_least(self, "train.", 0, "warmup_steps", "local_steps", "kd_weight", "weight_decay", "proto_weight",
                  "proto_head_weight", "make_up", "idle_steps")
        _check(0.0 <= self.kd_own_split <= 1.0, f"train.kd_own_split = {self.kd_own_split}: the weight of the "
                                                f"teacher's split among a node's own classes, 0 .. 1 (1: plain distillation)")
        for key in ("augment_shift", "augment_reference"):
            _check(getattr(self, key) >= 0, f"train.{key} = {getattr(self, key)}: a shift in steps, >= 0 (0: off), e.g. 4")


@dataclass(frozen=True)
class DataConfig:
    source: str = "mnist1d"  # mnist1d | digits | fsdd | mnist5k | synthetic | path/to/data.npz
    samples: int = 10_000  # generated sources only; mnist1d keeps 80% for training
    data_seed: int = 42  # which dataset is generated (the split over nodes uses the scenario seed)
    partition: str = "dirichlet:0.5"  # iid | dirichlet:ALPHA | dirichlet-node:ALPHA | shards:K | quantity:ALPHA
    # rows of the global test set every node is evaluated on each round (0: all). The test set grows with
    # data.samples; at 1,024 nodes evaluating all of it every round cost ~300 s a round (issue 18)
    test_size: int = 0
    # the seed of the split over nodes; -1: the scenario's seed. Fixed while `seed` varies, runs differ only
    # in training randomness (models, batches): how much of a difference between runs is noise
    split_seed: int = -1

    def __post_init__(self):
        _at_least(self, "data.", 0, "test_size")
        _check(self.split_seed >= -1, f"data.split_seed = {self.split_seed}: the seed of the split over nodes, "
                                      f">= 0, or -1 for the scenario's seed")

    def split(self, seed: int) -> int:
        """The seed the split over nodes uses in a scenario of seed `seed`."""
        return seed if self.split_seed == -1 else self.split_seed


@dataclass(frozen=True)
class ReferenceConfig:
    # auto: the data's own generator with another seed (mnist1d, synthetic: unlabeled inputs for free),
    # else "held-out" (rows of the training data set aside, labels dropped; no node trains on them).
    # Or mnist1d | synthetic | held-out | noise (data-free: Gaussian rows with the training inputs'
    # per-position mean and std) | path/to/inputs.npy
    source: str = "auto"
    seed: int = 10_007
    size: int = 20_000
    # rows per round; slices rotate so every row is used every size/slice rounds. 500 with the reference
    # shifts below and top-2 logits: as accurate as 2,000 rows with top-3 and 4x fewer bytes (BENCHMARKS.md)
    slice_size: int = 500

    def __post_init__(self):
        _at_least(self, "reference.", 1, "size", "slice_size")
        _check(self.slice_size <= self.size, f"reference.slice_size = {self.slice_size} is more than reference.size = "
                                             f"{self.size}; a slice is part of the reference set")
        _check(self.source in REFERENCE_SOURCES or self.source.endswith(".npy"),
               f"reference.source = {self.source!r}; choose one of: {', '.join(REFERENCE_SOURCES)}, or a path to "
               f"an .npy of unlabeled inputs shaped like the data's")


@dataclass(frozen=True)
class TopologyConfig:
    name: str = "small-world"  # a generator name or a topology file
    nodes: int = 16
    params: dict[str, Any] = field(default_factory=lambda: {"k": 4, "p": 0.2})

    def __post_init__(self):
        _at_least(self, "topology.", 1, "nodes", example=" (e.g. --nodes 16)")


@dataclass(frozen=True)
class GossipConfig:
    consensus: str = "class-weighted"  # CONSENSUS_RULES
    floor: float = 0.02  # share of a neighbour's data that counts as evidence for classes it never saw
    # "agreement:P": scale each node's weight by the odds, to the power P, that its top class matches the
    # others' consensus (consensus.reliability_weights), so weaker models count for less; "none": label evidence only
    reliability: str = "agreement:4"  # +0.028 / +0.030 global on quickstart, two seeds (BENCHMARKS.md)
    codec: str = "auto"  # "auto": per kind, logits topk:2+int3+ans, params fp32 (gossip.DEFAULT_CODECS)
    params_codec: str = ""  # params payloads (adapter, hybrid, fedavg) if set; "" = as codec
    delta: bool = False  # send differences to the last frame, with error feedback (gossip.DeltaEncoder)
    key_every: int = 10  # delta, select = changed:T: every Nth frame of a stream is whole, to resync receivers
    # parameter modes: "metropolis" (symmetric weights from the topology), "push-sum" (any weights), or
    # "auto": metropolis in simulations, push-sum on real nodes (their uniform weights are not symmetric)
    averaging: str = "auto"
    # logits: which slice rows to send. confident:F / uncertain:F = the F share by entropy; changed:T = the rows
    # whose prediction moved by >= T (total variation) since last sent, the frame saying which earlier one holds the rest
    select: str = "all"
    # logits: adaptive bit width. 0 = off; T > 0: the codec's bits while the teacher of a slice moved by >= T
    # (mean total variation) since that slice's last visit, one step fewer below T, another below T/2 (to int3)
    adaptive_bits: float = 0.0
    # logits are sent as log-probabilities relative to each row's top class, floored at -logit_range and
    # centred (consensus.normalize_logits); 0 = raw logits. With 8, int3 is as accurate as int4 (BENCHMARKS.md)
    logit_range: float = 8.0
    teacher_memory: int = 0  # logits mode: also distill rows taught in the last N rounds (0: this round's only)
    # logits mode: outlier exposure on reference rows during warm-up. "uniform": uniform targets, which also
    # flatten the node's ranking among its own classes; "pooled": each row is to say no more than how likely it
    # is one of the node's own classes (distill.outlier_loss; spoken-digits' setting, BENCHMARKS.md); "none"
    outlier_exposure: str = "uniform"
    max_lag: int = 1  # start round r only once each live neighbour's knowledge is from round >= r-1-max_lag ...
    wait_timeout: float = 30.0  # ... or this many seconds passed (then the silent neighbour counts as down) ...
    # ... and, when > 0, a straggler (its rounds come at under 0.7 x our rate) or a neighbour gone quiet at most
    # this times our own last round's duration; then it lags (not waited for) until it is within max_lag again.
    # 0 (off) by default: on a busy machine real nodes differ in speed by more than that, and 8 real nodes on 2
    # cores lost 0.06-0.11 global with it on (BENCHMARKS.md, LAN); 0.25 kept a 0.25x straggler's neighbours at speed
    patience: float = 0.0
    # a node far behind its neighbours (the second newest more than max_lag + 1 rounds ahead: it was down,
    # joined late or is slow) jumps to their round, keeping its model, so it speaks about their slices
    catch_up: bool = True
    staleness: int = 5  # ignore knowledge more than this many rounds older than ours
    stale_decay: float = 0.0  # ... and weigh what is used by (1 + rounds old)^-stale_decay (0: full weight)
    defence: str = "auto"  # parse_defence: auto | none | claims, reputation, clip joined by +

    def __post_init__(self):
        _check(self.consensus in CONSENSUS_RULES,
               f"gossip.consensus = {self.consensus!r}; choose one of: {', '.join(CONSENSUS_RULES)}")
        try:
            rule, _ = parse_select(self.select)
        except ValueError as e:
            raise ConfigError(f"gossip.select = {e}") from None
        _check(rule == "all" or self.consensus in ROW_RULES,
               f"gossip.select = {self.select!r} needs gossip.consensus = 'class-weighted' or 'mean' "
               f"(rule {self.consensus!r} needs every node's opinion on every row)")
        try:
            parse_reliability(self.reliability)
        except ValueError as e:
            raise ConfigError(f"gossip.reliability = {e}") from None
        _check(self.outlier_exposure in OUTLIER_EXPOSURE, f"gossip.outlier_exposure = {self.outlier_exposure!r}; "
                                                          f"choose one of: {', '.join(OUTLIER_EXPOSURE)}")
        _check(self.averaging == "auto" or self.averaging in AVERAGING,
               f"gossip.averaging = {self.averaging!r}; choose one of: auto, {', '.join(AVERAGING)}")
        _check(0.0 <= self.adaptive_bits <= 1.0, f"gossip.adaptive_bits = {self.adaptive_bits}: a total-variation "
                                                 f"threshold between 0 (off) and 1, e.g. 0.1")
        _check(self.logit_range >= 0, f"gossip.logit_range = {self.logit_range}: must be >= 0 (0 sends raw logits; "
                                      f"8 floors log-probabilities at -8)")
        for key in ("codec", "params_codec"):
            value = getattr(self, key)
            if value not in ("auto", ""):
                _check_codec(f"gossip.{key}", value)
        _share(self, "gossip.", "floor")
        _at_least(self, "gossip.", 1, "key_every")
        _at_least(self, "gossip.", 0, "teacher_memory", "max_lag", "staleness", "stale_decay")
        _positive(self, "gossip.", "wait_timeout")
        _at_least(self, "gossip.", 0, "patience")
        try:
            parse_defence(self.defence)
        except ValueError as e:
            raise ConfigError(f"gossip.defence = {e}") from None


@dataclass(frozen=True)
class AdapterConfig:
    """The module `adapter` and `hybrid` modes gossip (see p2pfl/models/adapter.py)."""

    # auto | bottleneck | residual | head | whole (identical models: that is fedavg) | lora. "auto" is the
    # measured best per mode (BENCHMARKS.md): bottleneck for adapter, residual for hybrid
    kind: str = "auto"
    bottleneck: int = 16  # hidden width of the bottleneck adapter
    lora_rank: int = 4  # lora: the shared rank; a node profile's lora_rank may be smaller (HetLoRA)
    lora_alpha: float = 8.0  # lora: updates are scaled by alpha / rank
    kd_decay: float = 0.0  # hybrid: the KD weight falls linearly by this fraction of train.kd_weight by the last round

    def __post_init__(self):
        if self.kind != "auto" and self.kind not in ADAPTER_KINDS:
            raise ConfigError(f"adapter.kind = {self.kind!r}; choose one of: auto, {', '.join(ADAPTER_KINDS)}")
        if self.bottleneck < 1 or self.lora_rank < 1:
            raise ConfigError(f"adapter.bottleneck = {self.bottleneck}, adapter.lora_rank = {self.lora_rank}: "
                              f"both must be at least 1")
        if not 0.0 <= self.kd_decay <= 1.0:
            raise ConfigError(f"adapter.kd_decay = {self.kd_decay}: must be between 0 (constant) and 1 (to zero)")


@dataclass(frozen=True)
class NetworkConfig:
    """The simulated network and compute (memory transport only; real nodes have real ones)."""

    latency: float = 0.02  # seconds per message, plus jitter
    jitter: float = 0.005
    loss: float = 0.0  # probability a message is dropped
    bandwidth: float = 0.0  # bytes/s per link; 0 = unlimited
    round_time: float = 1.0  # simulated seconds of compute per round for speed 1.0
    round_jitter: float = 0.1  # relative spread of compute time per round, so nodes drift as real ones do

    def __post_init__(self):
        _at_least(self, "network.", 0, "latency", "jitter", "bandwidth")
        _share(self, "network.", "loss")
        _positive(self, "network.", "round_time")
        _check(0.0 <= self.round_jitter < 1.0, f"network.round_jitter = {self.round_jitter}: a relative spread, "
                                               f"at least 0 and below 1")


@dataclass(frozen=True)
class NodeProfile:
    """What one node is: architecture, options, speed, training overrides. Files live in node/."""

    name: str = ""
    arch: str = "cnn1d"
    arch_options: dict[str, Any] = field(default_factory=dict)
    speed: float = 1.0  # relative compute speed in simulations (0.5 = a straggler twice as slow)
    codec: str = ""  # how this node encodes its knowledge ("" = the scenario's gossip.codec)
    lora_rank: int = 0  # adapter.kind = "lora": this node's rank, at most adapter.lora_rank (0 = that)
    train: dict[str, Any] = field(default_factory=dict)  # overrides of [train] for this node

    def __post_init__(self):
        _check(self.speed > 0, f"speed = {self.speed}: a relative compute speed, greater than 0 (0.5 = twice as slow)")
        _check(self.lora_rank >= 0, f"lora_rank = {self.lora_rank}: at least 0 (0 = adapter.lora_rank)")
        if self.codec:
            _check_codec("codec", self.codec)


# What an attacking node can put in its frames (p2pfl/attacks.py does it); kinds combine with "+",
# e.g. shift+inflate: a confident wrong class on every row, claimed with 10,000 samples per class
LOGIT_ATTACKS = ("shift", "uniform", "invert", "reorder", "scale", "replay", "echo", "inflate")
PARAM_ATTACKS = ("sign-flip", "gaussian", "huge", "alie", "ipm")
ANY_ATTACKS = ("silent", "dissensus")  # silent: sends no knowledge; dissensus: away from the consensus (any mode)
ATTACKS = LOGIT_ATTACKS + PARAM_ATTACKS + ANY_ATTACKS
# which lies each knowledge kind can carry (ANY_ATTACKS: every kind). FD's per-class logits are class scores
# like the reference set's (every logits attack but echo, which repeats a reference-set teacher) and numbers
# like weights; prototypes are numbers that can also be scaled, replayed and claimed with inflated counts.
LIES_BY_KIND = {"logits": LOGIT_ATTACKS,
                "class-logits": tuple(k for k in LOGIT_ATTACKS if k != "echo") + PARAM_ATTACKS,
                "prototypes": ("scale", "replay", "inflate") + PARAM_ATTACKS,
                "params": PARAM_ATTACKS}
PLACEMENTS = ("random", "bottleneck")  # attack.place: a seeded choice, or the most central nodes first


def check_attack(mode: str, kind: str, key: str) -> None:
    """ConfigError (naming `key`) unless every lie of `kind` can be told in what `mode` sends."""
    kinds = MODE_FACTS[mode].kinds
    useless = [k for k in parse_attack(kind) if k not in ANY_ATTACKS and not any(k in LIES_BY_KIND[n] for n in kinds)]
    can = sorted({k for n in kinds for k in LIES_BY_KIND[n]} | set(ANY_ATTACKS))
    _check(not useless, f"{key} = {kind!r}: {', '.join(useless)} cannot lie in mode {mode!r} "
                        f"(it sends {', '.join(kinds) or 'nothing'}); its attacks: {', '.join(can)}")


# lies that put numbers of their own in place of the frame's (another slice's, an old frame, noise, the
# neighbours' numbers), so whatever a lie before them made is lost: in a chain they come first
REPLACING_ATTACKS = ("uniform", "replay", "echo", "dissensus", "gaussian", "alie", "ipm")


def parse_attack(text: str) -> tuple[str, ...]:
    """'shift+inflate' -> ("shift", "inflate"), the lies applied in that order; ValueError names the kinds,
    and a chain in which a lie would undo the one before it."""
    kinds = tuple(text.split("+"))
    if not text or any(k not in ATTACKS for k in kinds):
        raise ValueError(f"{text!r}: expected one or more of {', '.join(ATTACKS)} joined by +, e.g. shift+inflate")
    if "silent" in kinds and len(kinds) > 1:
        raise ValueError(f"{text!r}: silent sends nothing, so no other lie can go with it; give silent alone")
    if len(both := [k for k in kinds if k in REPLACING_ATTACKS]) > 1:
        raise ValueError(f"{text!r}: {both[0]} and {both[1]} each put numbers of their own in place of the frame's, "
                         f"so only the last would be told; a chain takes one of {', '.join(REPLACING_ATTACKS)}")
    if late := next((i for i, k in enumerate(kinds) if i and k in REPLACING_ATTACKS), None):
        first = [kinds[late], *kinds[:late], *kinds[late + 1:]]
        raise ValueError(f"{text!r}: {kinds[late]} puts numbers of its own in place of the frame's, undoing "
                         f"{'+'.join(kinds[:late])}; put it first ({'+'.join(first)})")
    return kinds


@dataclass(frozen=True)
class AttackConfig:
    """One [[attack]] table: which nodes lie, what they put in their frames, from which round."""

    kind: str = "shift"  # ATTACKS, joined by + (logits attacks in logits/hybrid mode, parameter ones in the others)
    count: int = 0  # this many nodes (a seeded choice) ...
    fraction: float = 0.0  # ... or this share of the nodes, rounded (at least one) ...
    nodes: tuple[int, ...] = ()  # ... or these node indices ...
    # ... or enough nodes that every honest node has this many attacking neighbours (a seeded greedy cover;
    # "2 of each honest node's 4 neighbours", where the graph allows it)
    neighbours: int = 0
    start: int = 0  # the first round whose knowledge is a lie (0: from the first)
    strength: float = 0.0  # the attack's parameter (scale, noise, z, claimed count); 0: its default
    # which nodes a count, share or cover takes first: "random" (seeded) or "bottleneck" (highest betweenness
    # centrality: the nodes most paths between the others cross, where a dissensus attack splits the graph)
    place: str = "random"

    def __post_init__(self):
        try:
            parse_attack(self.kind)
        except ValueError as e:
            raise ConfigError(f"attack.kind = {e}") from None
        _check(self.place in PLACEMENTS, f"attack.place = {self.place!r}; choose one of: {', '.join(PLACEMENTS)}")
        chosen = [bool(self.count), bool(self.fraction), bool(self.nodes), bool(self.neighbours)]
        _check(sum(chosen) == 1, f"attack: give exactly one of count, fraction, nodes or neighbours (got count = "
                                 f"{self.count}, fraction = {self.fraction}, nodes = {list(self.nodes)}, neighbours = "
                                 f"{self.neighbours}), e.g. count = 3")
        _check(self.neighbours >= 0, f"attack.neighbours = {self.neighbours}: attacking neighbours per honest node, "
                                     f">= 1 (0: not this way)")
        _check(self.count >= 0 and 0.0 <= self.fraction < 1.0 and all(i >= 0 for i in self.nodes),
               f"attack: count >= 0, 0 <= fraction < 1 and node indices >= 0; got {self.count}, {self.fraction}, "
               f"{list(self.nodes)}")
        _check(self.start >= 0 and self.strength >= 0, f"attack: start = {self.start} and strength = "
                                                        f"{self.strength} must be >= 0")


# What [[events]] can change in a simulation (p2pfl/events.py schedules them, sim.py applies them)
EVENT_ACTIONS = ("leave", "crash", "rejoin", "join", "cut", "partition", "heal", "slow", "link")


@dataclass(frozen=True)
class EventConfig:
    """One [[events]] table: at a round or a simulated time, one change to the network or its nodes.

    Nodes are topology indices; links are pairs of them, e.g. cut = [[0, 1]]."""

    at: int = 0  # the round: fires when the network's front (the first node) starts it (0: at the start) ...
    time: float = 0.0  # ... or at this simulated second
    leave: tuple[int, ...] = ()  # these nodes stop, saying bye (a closed laptop) ...
    crash: tuple[int, ...] = ()  # ... or stop without a word, losing what they did since their last round
    rejoin: tuple[int, ...] = ()  # nodes that left or crashed start again from their last round's checkpoint
    join: tuple[int, ...] = ()  # nodes absent until now start from scratch and catch up with the network
    cut: tuple[tuple[int, ...], ...] = ()  # these links carry nothing until healed
    partition: tuple[tuple[int, ...], ...] = ()  # groups: every link between two groups is cut (unlisted: a group)
    heal: bool = False  # every cut link and partition restored
    slow: tuple[int, ...] = ()  # these nodes compute at `speed` times their profile's speed (a straggler)
    speed: float = 0.0
    link: tuple[tuple[int, ...], ...] = ()  # these links' latency / jitter / loss / bandwidth set (< 0: unchanged)
    latency: float = -1.0
    jitter: float = -1.0
    loss: float = -1.0
    bandwidth: float = -1.0

    @property
    def action(self) -> str:
        return next(a for a in EVENT_ACTIONS if getattr(self, a))

    def __post_init__(self):
        given = [a for a in EVENT_ACTIONS if getattr(self, a)]
        _check(len(given) == 1, f"events: each table makes one change: give exactly one of "
                                f"{', '.join(EVENT_ACTIONS)} (got {', '.join(given) or 'none'}), e.g. "
                                f"{{at = 10, crash = [3]}}")
        _check(self.at >= 0 and self.time >= 0 and not (self.at and self.time),
               f"events: at = {self.at} (a round) or time = {self.time} (simulated seconds): one of them, >= 0")
        pairs = self.cut + self.link
        _check(all(len(pair) == 2 for pair in pairs), f"events: cut and link take pairs of nodes, e.g. "
                                                      f"[[0, 1], [2, 3]]; got {[list(x) for x in pairs]}")
        nodes = [i for group in (self.leave, self.crash, self.rejoin, self.join, self.slow, *self.partition,
                                 *pairs) for i in group]
        _check(all(i >= 0 for i in nodes), f"events: node indices are >= 0; got {nodes}")
        if self.partition:
            flat = [i for g in self.partition for i in g]
            _check(len(self.partition) >= 2 and len(flat) == len(set(flat)),
                   f"events.partition = {[list(g) for g in self.partition]}: two or more groups, no node in two")
        if self.slow:
            _positive(self, "events.", "speed")
        if self.link:
            _check(self.loss <= 1.0, f"events.loss = {self.loss}: a probability (<= 1; < 0: unchanged)")
            _check(any(v >= 0 for v in (self.latency, self.jitter, self.loss, self.bandwidth)),
                   "events.link: set at least one of latency, jitter, loss, bandwidth (>= 0)")


@dataclass(frozen=True)
class ChurnConfig:
    """Random downs for sweeps: each node goes down and comes back by a seeded on/off process over rounds."""

    rate: float = 0.0  # the share of rounds a node is down (0: no churn); p2pfl sim --churn 0.2
    downtime: float = 3.0  # mean rounds a down lasts (geometric)
    crash: float = 0.5  # the share of downs that are crashes (no bye, back from the checkpoint); the rest leave
    start: int = 2  # the first round a node may go down

    def __post_init__(self):
        _check(0.0 <= self.rate < 1.0, f"churn.rate = {self.rate}: the share of rounds a node is down, 0 <= rate < 1")
        _at_least(self, "churn.", 1, "downtime", "start")
        _share(self, "churn.", "crash")


def parse_attack_option(text: str) -> dict[str, Any]:
    """--attack KIND:N: N nodes (an int) or that share of them (a float below 1), e.g. shift:3, uniform:0.2."""
    kind, _, n = text.partition(":")
    try:
        amount = float(n or "1")
    except ValueError:
        amount = -1.0
    if not math.isfinite(amount) or amount <= 0 or amount >= 1 and amount != int(amount):
        raise ConfigError(f"--attack {text!r}: expected KIND:N (N attacking nodes) or KIND:F (a share, 0 < F < 1), "
                          f"e.g. --attack shift:3")
    return {"kind": kind, "count": int(amount)} if amount >= 1 else {"kind": kind, "fraction": amount}


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy of everything a node releases (p2pfl/privacy.py: DP-SGD and the accountant)."""

    epsilon: float = 0.0  # the (epsilon, delta)-DP target over the whole run, per node; 0 or inf: off
    delta: float = 1e-5
    clip: float = 1.0  # each private sample's gradient clipped to this L2 norm
    batch: int = 100  # expected private samples per step (Poisson sampling at batch / samples)
    # private steps the budget is planned over: the first this many steps (warm-up first) learn from private
    # samples, the rest distill only; 0: every step of the run. Fewer steps, less noise on each.
    steps: int = 0
    # std of the Gaussian noise on the label counts a node claims (released once); 0: auto, the least noise
    # whose release spends at most a tenth of the target (5.3 at epsilon 8, 38 at epsilon 1)
    count_noise: float = 0.0

    def __post_init__(self):
        _check(self.epsilon >= 0 and not math.isnan(self.epsilon),
               f"privacy.epsilon = {self.epsilon}: the DP target over the whole run, > 0 (0 or inf: off), e.g. 8")
        _check(0 < self.delta < 1, f"privacy.delta = {self.delta}: between 0 and 1, e.g. 1e-5")
        _positive(self, "privacy.", "clip")
        _at_least(self, "privacy.", 0, "count_noise", "steps")
        _at_least(self, "privacy.", 1, "batch")

    @property
    def on(self) -> bool:
        return 0 < self.epsilon < math.inf


RUN_NAME_CHARS = "A-Za-z0-9._+-"  # a run's name is its folder: ASCII letters, digits and . _ + - (a regex class)


@dataclass(frozen=True)
class Scenario:
    name: str = "quickstart"
    seed: int = 0
    rounds: int = 50
    mode: str = "logits"
    embed_dim: int = 32
    profiles: tuple[str, ...] = ("mlp", "cnn1d", "gru")  # node/NAME.toml or bare architectures, round-robin
    eval_every: int = 1
    workers: int = 0  # threads computing side by side in a simulation; 0 = one per core
    ray: str = ""  # "" (this process) | auto | local | HOST:PORT: the learners train on a Ray cluster's actors
    data: DataConfig = field(default_factory=DataConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    attack: tuple[AttackConfig, ...] = ()  # [[attack]] tables: nodes that lie (simulations and drills)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    events: tuple[EventConfig, ...] = ()  # [[events]] tables: churn, partitions, stragglers (simulations)
    churn: ChurnConfig = field(default_factory=ChurnConfig)

    def __post_init__(self):
        # the run's folder under --runs: a plain name, never a path that leaves it
        _check(re.fullmatch(f"[{RUN_NAME_CHARS}]+", self.name) is not None and not self.name.startswith((".", "-")),
               f"name = {self.name!r}: a run's name is its folder under --runs; use letters, digits and . _ + - "
               f"(no / and not starting with . or -), e.g. name = \"quickstart-ring\"")
        if self.mode not in MODES:
            raise ConfigError(f"mode = {self.mode!r} is not a mode; choose one of: {', '.join(MODES)}")
        if self.rounds < 1:
            raise ConfigError(f"rounds = {self.rounds}: must be at least 1")
        if not self.profiles:
            raise ConfigError("profiles = []: name at least one profile or architecture, e.g. profiles = [\"cnn1d\"]")
        _at_least(self, "", 1, "embed_dim", "eval_every")
        _at_least(self, "", 0, "seed")
        kinds = MODE_FACTS[self.mode].kinds
        for a in self.attack:
            check_attack(self.mode, a.kind, "attack.kind")
        _check(self.workers >= 0, f"workers = {self.workers}: threads side by side, >= 0 (0 = one per core)")
        _check(self.ray in ("", "auto", "local") or ":" in self.ray,
               f"ray = {self.ray!r}: use 'auto' (a running cluster, else a new local one), 'local' (a new one on "
               f"this machine) or the head's HOST:PORT (as `ray start --head` prints it); '' trains in this process")
        check_node_training(self, self.train, "train.")
        _check(not (self.privacy.on and set(kinds) & set(PER_CLASS_KINDS)),
               f"privacy.epsilon with mode = {self.mode!r}: class means of private rows are not released under "
               f"differential privacy yet; use mode = 'logits' (or 'local') with privacy")


def check_node_training(scenario: "Scenario", train: TrainConfig, where: str) -> None:
    """What a node's training settings cannot be in this scenario: the scenario's train table is checked when it
    is built, each node's (its profile's [train] over it) where its plan is made. `where` prefixes the keys."""
    _check(not scenario.ray or train.device == "cpu",
           f"ray = {scenario.ray!r} with {where}device = {train.device!r}: the Ray shards are CPU actors so far; "
           f"set {where}device = 'cpu' or train in this process (ray = '')")
    if not scenario.privacy.on:
        return
    _check(train.device == "cpu", f"privacy.epsilon with {where}device = {train.device!r}: DP-SGD runs on the "
                                  f"CPU only so far; set {where}device = 'cpu'")
    # the private steps are planned over warm-up + rounds x local_steps, and a restart adds back one round's
    # worth: steps beyond a round's local_steps would be spent outside the plan (and twice after a crash)
    for key in ("make_up", "idle_steps"):
        _check(not getattr(train, key), f"privacy.epsilon with {where}{key} = {getattr(train, key)}: its extra steps "
                                        f"are not in the privacy plan; set {where}{key} = 0")


def _check_codec(key: str, name: str) -> None:
    if not codecs.is_codec(name):
        raise ConfigError(f"{key} = {name!r} is not a codec; choose one of: {codecs.CODEC_GRAMMAR}")


# -- loading ---------------------------------------------------------------------------------------

def load_scenario(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read a scenario TOML (None: all defaults) and apply dotted-key overrides ({"train.lr": 1e-3})."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"scenario file {where} not found; pass a path such as sim/quickstart.toml") from None
        except IsADirectoryError:
            raise ConfigError(f"{where} is a folder; pass a scenario TOML file such as sim/quickstart.toml") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{where} is not valid TOML: {e}") from None
        # a file without a name runs under its own (my-test.toml: runs/my-test), not the default's
        raw.setdefault("name", plain_name(Path(path).stem))
    overrides = overrides or {}
    if overrides:  # a bad key or value may be the command line's, not the file's
        where += " with the command line's overrides"
    if "topology.name" in overrides and not any(k.startswith("topology.params") for k in overrides):
        # parameters belong to the generator they were written for: another name starts from its defaults
        raw.get("topology", {}).pop("params", None)
        overrides = {"topology.params": {}} | overrides
    for key, value in overrides.items():
        _set_dotted(raw, key, value, Scenario)
    return build(Scenario, raw, where)


def load_profile(path: str | Path) -> NodeProfile:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    raw.setdefault("name", path.stem)
    profile = build(NodeProfile, raw, str(path))
    build(TrainConfig, dict(profile.train), f"{path} [train]")  # check the overrides' keys and types now
    return profile


def build(cls: type, raw: dict[str, Any], where: str, prefix: str = "") -> Any:
    """Construct dataclass `cls` from a TOML table, checking every key and type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a table, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(_unknown_key(where, prefix + key, key, fields))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build(hint, value, where, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, where, prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _unknown_key(where: str, dotted: str, key: str, fields: dict) -> str:
    close = difflib.get_close_matches(key, fields, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{where}: unknown key {dotted!r}; {hint}allowed here: {', '.join(fields)}"


def _coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """Check `value` against a simple type hint; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, where, key)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {key} = {value!r} has the wrong type; expected {hint}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint in (int, str, bool):
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
            if dataclasses.is_dataclass(item):  # an array of tables, such as [[attack]]
                return tuple(build(item, v, where, f"{key}[{i}].") for i, v in enumerate(value))
            return tuple(_coerce(v, item, where, f"{key}[{i}]") for i, v in enumerate(value))
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    raise ConfigError(f"{where}: {key} = {value!r} has the wrong type; expected {_type_words(hint)}")


def _type_words(hint: Any) -> str:
    """A type hint as a TOML user reads it: tuple[int, ...] is "a list, e.g. [1, 2]"."""
    if typing.get_origin(hint) is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        inner = "[0, 1]" if item is int else "[[0, 1], [2, 3]]" if typing.get_origin(item) is tuple else '["a", "b"]'
        return f"a list, e.g. {inner}" if not dataclasses.is_dataclass(item) else "an array of tables"
    if hint is dict or typing.get_origin(hint) is dict:
        return "a table"
    return {float: "a number", int: "an integer", str: "a string in quotes", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _set_dotted(raw: dict[str, Any], key: str, value: Any, cls: type) -> None:
    """raw["a"]["b"] = value for key "a.b", checking the path exists in `cls` so typos fail early."""
    *parents, last = key.split(".")
    table = raw
    for i, part in enumerate(parents):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise ConfigError(_unknown_key("command line", ".".join(parents[: i + 1]), part, fields))
        hint = typing.get_type_hints(cls)[part]
        table = table.setdefault(part, {})
        if not dataclasses.is_dataclass(hint):  # a free-form table such as topology.params
            table[".".join(parents[i + 1:] + [last])] = value
            return
        cls = hint
    table[last] = value


def parse_value(text: str) -> Any:
    """A command-line value as TOML would read it: 3 -> int, 0.1 -> float, true, [..], else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """--set KEY=VALUE items -> {dotted key: value}, values read as TOML would (a list-typed key also
    takes a comma-separated list); the one parser behind the CLI and the scripts."""
    hints = dict(flat_keys())
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.001")
        out[key.strip()] = parse_key_value(key.strip(), text, hints)
    return out


def parse_key_value(key: str, text: str, hints: dict[str, Any]) -> Any:
    """One scenario key's value from the command line (`hints`: flat_keys() as a dict)."""
    if key == "attack" and not text.startswith("["):
        return [parse_attack_option(text)]
    if typing.get_origin(hints.get(key)) is tuple and not text.startswith("["):
        return [v.strip() for v in text.split(",") if v.strip()]
    return parse_value(text)


_VALUE_ONLY = ("mode", "name", "source", "partition", "profiles")  # keys whose value alone says what differs
MAX_RUN_NAME = 80


_SAME_RESULTS = ("workers", "ray")  # where the compute runs: the records are the same, so is the name


def plain_name(text: str) -> str:
    """`text` as a run name `Scenario` accepts: RUN_NAME_CHARS, others as _, no leading . or -."""
    return re.sub(f"[^{RUN_NAME_CHARS}]", "_", text).lstrip(".-") or "run"


def _is_file_name(value: str) -> bool:
    """A path or a file's name (node/wide.toml, graph.edges), not a value with a decimal point (0.5)."""
    return "/" in value or re.search(r"\.[A-Za-z]\w*$", value) is not None


def run_name(base: str, overrides: dict[str, Any]) -> str:
    """A run's default name: the scenario's, then what the overrides change, e.g. quickstart-local-seed3
    (mode first, then seed, then the rest by key); longer than MAX_RUN_NAME: cut, with a hash of the rest."""
    order = sorted((k for k in overrides if k not in _SAME_RESULTS), key=lambda k: (k != "mode", k != "seed", k))
    tokens = []
    for key in order:
        value = overrides[key]
        last = key.rsplit(".", 1)[-1]
        if isinstance(value, dict):
            text = "+".join(f"{k}{v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):  # a list of tables ([[attack]]): their values, e.g. shift3
            text = "+".join("".join(str(x) for x in v.values() if x) if isinstance(v, dict)
                            else Path(str(v)).stem if _is_file_name(str(v)) else str(v) for v in value)
        else:  # a file's stem (sim/x.toml: x), any other value whole (dirichlet:0.5 keeps its decimals)
            text = Path(value).stem if isinstance(value, str) and _is_file_name(value) else str(value)
        tokens.append(text if last in _VALUE_ONLY else f"{last}{text}")
    name = plain_name("-".join([base, *tokens]))
    if len(name) > MAX_RUN_NAME:
        import hashlib

        name = name[: MAX_RUN_NAME - 9] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


# What a key accepts, where its type alone does not say (for `p2pfl sim --help-keys`); the grammars
# are the ones this module checks. Names owned lower down (partitions, topologies) are spelled out.
_ACCEPTS = {
    "mode": " | ".join(MODES),
    "profiles": "node profiles (node/NAME.toml, a path) or architectures, round-robin over the nodes",
    "workers": "threads computing side by side (0: one per core; with ray: twice the cluster's CPUs)",
    "ray": "'' (train in this process) | auto | local | HOST:PORT of a Ray head: learners on its actors "
           "(pip install 'p2pfl[ray]')",
    "data.source": "mnist1d | digits | fsdd | mnist5k | synthetic | path/to/data.npz (x, y[, x_test, y_test])",
    "data.partition": "iid | dirichlet:A | dirichlet-node:A | shards:K | quantity:A",
    "data.test_size": "0 (the whole test set) | N: a class-stratified N rows of it, the same for every node",
    "reference.source": " | ".join(REFERENCE_SOURCES) + " | path/to/inputs.npy",
    "topology.name": " | ".join(TOPOLOGY_GENERATORS) + " | a topology file (topologies/ring-8.toml, or its name: "
                     "ring-8; its node count is then the default of topology.nodes)",
    "topology.params": "the generator's parameters, e.g. {k = 4, p = 0.2}",
    "gossip.consensus": " | ".join(CONSENSUS_RULES),
    "gossip.reliability": "none | agreement | agreement:P (0 < P <= 8)",
    "gossip.codec": f"auto | {codecs.CODEC_GRAMMAR}",
    "gossip.params_codec": f"'' (as gossip.codec) | {codecs.CODEC_GRAMMAR}",
    "gossip.averaging": "auto | " + " | ".join(AVERAGING),
    "gossip.outlier_exposure": " | ".join(OUTLIER_EXPOSURE),
    "gossip.select": "all | confident:F | uncertain:F | changed:T (0 < F, T <= 1)",
    "gossip.adaptive_bits": "0 (off) .. 1: total-variation threshold",
    "adapter.kind": "auto | " + " | ".join(ADAPTER_KINDS),
    "network.loss": "0 .. 1",
    "gossip.floor": "0 .. 1",
    "train.min_lr_ratio": "0 .. 1 (1: constant rate)",
    "train.kd_own_split": "0 .. 1: the teacher's weight on the split among a node's own classes (1: plain distillation)",
    "attack": "KIND:N | KIND:F (N nodes or a share F), or [{kind = ..., count | fraction | nodes | neighbours = ..., "
              "start, strength, place = random | bottleneck}]; kinds: " + " | ".join(ATTACKS) + ", joined by +",
    "gossip.defence": "auto (= " + "+".join(AUTO_DEFENCE) + ") | none | " + " | ".join(DEFENCES) + ", joined by +",
    "events": "[{at = ROUND | time = SECONDS, " + " | ".join(EVENT_ACTIONS) + " = ...}], e.g. "
              "[{at = 10, partition = [[0, 1], [2, 3]]}, {at = 20, heal = true}]",
    "churn.rate": "0 <= rate < 1: the share of rounds each node is down",
}


def accepted(key: str, type_name: str) -> str:
    """What `key` accepts, in words: its grammar if it has one, else its type."""
    return _ACCEPTS.get(key, type_name)


def flat_keys(cls: type = Scenario, prefix: str = "") -> list[tuple[str, Any]]:
    """Every overridable dotted key with its type hint (for --help and --set validation)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += flat_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, hints[f.name]))
    return out
