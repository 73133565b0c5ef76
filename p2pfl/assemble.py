"""The one recipe: a scenario -> node plans, data, reference set, learners, modes and `Node`s.

Simulations (`sim.py`), real node processes (`realnode.py`) and the tests build nodes only through
here, so node i of a scenario and seed is the same node in all three: the same data shard, model
initialisation, training settings, mode and codecs. Only the transport and the compute differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2pfl import shipped
from p2pfl.attacks import Attacker
from p2pfl.config import (GENERATED_SOURCES, AttackConfig, ConfigError, NodeProfile, Scenario, TrainConfig, build,
                          check_node_training, load_profile)
from p2pfl.data import build_reference, load_source, partition
from p2pfl.data.reference import Reference, ReferenceSpec, held_out, shaped_noise
from p2pfl.data.sources import Dataset
from p2pfl.learner import Learner
from p2pfl.mode_facts import MODE_FACTS
from p2pfl.models import MODELS, build_model
from p2pfl.models.adapter import Adapter, attach
from p2pfl.modes import Mode, make_mode
from p2pfl.node import Compute, EvalData, Node
from p2pfl.privacy import private_model
from p2pfl.topology import Topology, metropolis_hastings_weights, resolve_topology
from p2pfl.transport import Transport


def resolve_profile(name: str) -> NodeProfile:
    """A profile file path, a shipped profile by name or repository path (node/cnn1d.toml), or a bare architecture."""
    path = shipped.find("node", name)
    if path is not None:
        return load_profile(path)
    if Path(name).suffix == ".toml":
        raise ConfigError(f"node profile {name} not found; pass a path to a profile file, or a name "
                          f"({shipped.listing('node')})")
    if name in MODELS:
        return NodeProfile(name=name, arch=name)
    raise ConfigError(f"profiles: {name!r} is neither a profile in node/ nor an architecture; "
                      f"{shipped.listing('node')}; architectures: {', '.join(MODELS)}")


@dataclass(frozen=True)
class NodePlan:
    """Everything that defines one node, derived from the scenario and seed."""

    index: int
    node_id: str
    profile: NodeProfile
    train: TrainConfig
    train_idx: np.ndarray
    neighbours: dict[str, float]


def node_plan(scenario: Scenario, index: int, node_id: str, profile: NodeProfile, train_idx: np.ndarray,
              neighbours: dict[str, float]) -> NodePlan:
    """One node's plan; real nodes build theirs the same way, so a shard trains as in the simulation."""
    train = build(TrainConfig, dataclasses.asdict(scenario.train) | profile.train, f"profile {profile.name} [train]")
    check_node_training(scenario, train, f"profile {profile.name} [train] ")
    return NodePlan(index, node_id, profile, train, train_idx, neighbours)


def adapter_kind(s: Scenario) -> str | None:
    """What a parameter mode averages: fedavg the whole model, adapter/hybrid the scenario's adapter."""
    facts = MODE_FACTS[s.mode]
    if facts.auto_adapter is None or facts.adapter_fixed or s.adapter.kind == "auto":
        return facts.auto_adapter
    return s.adapter.kind


def averaging_for(s: Scenario, auto: str) -> str:
    """gossip.averaging, with "auto" meaning `auto` (simulations: metropolis; real nodes: push-sum)."""
    return auto if s.gossip.averaging == "auto" else s.gossip.averaging


# -- the pieces, in the order a run builds them ------------------------------------------------------

def data_and_reference(s: Scenario) -> tuple[Dataset, Reference | None]:
    """The training data and, for modes that send logits, the reference set (None for the others).

    A held-out reference (reference.source = "held-out", or "auto" for data without a generator) is
    set aside from the training data in every mode, so a baseline trains on the rows logits mode does."""
    full = _load(s)
    source = reference_source(s)
    r = s.reference
    spec = ReferenceSpec(source=source, seed=r.seed, size=r.size, slice_size=r.slice_size)
    data, ref = held_out(full, spec) if source == "held-out" else (full, None)
    if not MODE_FACTS[s.mode].needs_reference:
        return data, None
    ref = ref or (shaped_noise(full, spec) if source == "noise" else build_reference(spec))
    if ref.x.shape[1:] != data.input_shape:
        raise ConfigError(f"reference.source = {r.source!r} gives rows of shape {ref.x.shape[1:]}, but data.source "
                          f"= {s.data.source!r} has inputs of shape {data.input_shape}; use reference.source = "
                          f"'held-out' (rows of your own data, set aside) or an .npy of inputs shaped like yours")
    return data, ref


def reference_source(s: Scenario) -> str:
    """reference.source with "auto" resolved: the data's generator if it has one, else a held-out split."""
    if s.reference.source != "auto":
        return s.reference.source
    return s.data.source if s.data.source in GENERATED_SOURCES else "held-out"


@contextmanager
def _keyed(what: str):
    """A ValueError raised below (a generator's or partitioner's own words) as a ConfigError naming the
    scenario keys it came from, so the user knows what to change."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None


def _load(s: Scenario) -> Dataset:
    d = s.data
    with _keyed(f"data.source = {d.source!r}, data.samples = {d.samples}"):
        data = load_source(d.source, num_samples=d.samples, seed=d.data_seed) if d.source in GENERATED_SOURCES \
            else load_source(d.source)
    return fewer_tests(data, d.test_size, d.data_seed) if d.test_size else data


def fewer_tests(data: Dataset, size: int, seed: int) -> Dataset:
    """The dataset with `size` of its test rows, stratified (each class keeps its share, rounded), the same
    rows for a seed; all of them if it has no more."""
    if size >= len(data.y_test):
        return data
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(data.y_test, return_counts=True)
    share = counts * size / counts.sum()
    quota = np.floor(share).astype(int)
    quota[np.argsort(-(share - quota))[:size - quota.sum()]] += 1  # largest remainders
    rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(data.y_test == c))[:q]
                                   for c, q in zip(classes, quota)]))
    return dataclasses.replace(data, x_test=data.x_test[rows], y_test=data.y_test[rows])


def topology(s: Scenario) -> Topology:
    t = s.topology
    with _keyed(f"topology.name = {t.name!r}, topology.nodes = {t.nodes}, topology.params = {dict(t.params)} "
                f"(set them with --topology, --nodes, --set 'topology.params={{k = 2}}')"):
        return resolve_topology(t.name, t.nodes, s.seed, **t.params)


def plans(s: Scenario, data: Dataset, graph: Topology) -> list[NodePlan]:
    """Every node of the graph: its shard of the data, its profile (round-robin), its mixing weights."""
    with _keyed(f"data.partition = {s.data.partition!r} over {graph.n} nodes"):
        parts = partition(data.y_train, graph.n, s.data.partition, s.data.split(s.seed))
    weights = metropolis_hastings_weights(graph.graph)
    profiles = [resolve_profile(name) for name in s.profiles]
    out = []
    for i in range(graph.n):
        neighbours = {graph.names[j]: float(weights[i, j]) for j in sorted(graph.graph.neighbors(i))}
        out.append(node_plan(s, i, graph.names[i], profiles[i % len(profiles)], parts[i], neighbours))
    check_shareable(s, out)
    return out


def shard_plan(s: Scenario, data: Dataset, shard: int, shards: int, node_id: str, profile: str | None) -> NodePlan:
    """Node `shard` of `shards` as a real process sees it: the data and profile simulated node `shard`
    would have, and no neighbours yet (the transport finds them)."""
    with _keyed(f"data.partition = {s.data.partition!r} over {shards} shards"):
        parts = partition(data.y_train, shards, s.data.partition, s.data.split(s.seed))
    chosen = resolve_profile(profile or s.profiles[shard % len(s.profiles)])
    return node_plan(s, shard, node_id, chosen, parts[shard], {})


def check_shareable(s: Scenario, plans: list[NodePlan]) -> None:
    """Averaging whole models or LoRA factors needs one backbone everywhere; say so before building."""
    kind = adapter_kind(s)
    if kind not in ("whole", "lora"):
        return
    backbones = sorted({f"{p.profile.arch}{p.profile.arch_options or ''}" for p in plans})
    what = f"mode = {s.mode!r}" + (f" with adapter.kind = {kind!r}" if s.mode != "fedavg" else "")
    if len(backbones) > 1:
        fix = ("use adapter.kind = 'bottleneck' for unlike models" if s.mode != "fedavg"
               else "or use mode = 'logits' / 'adapter' for unlike models")
        raise ConfigError(f"{what} averages {'whole models' if kind == 'whole' else 'LoRA factors of one backbone'}, "
                          f"so every node needs the same architecture and options; nodes use {', '.join(backbones)}. "
                          f"Set profiles = [\"cnn1d\"] ({fix})")
    for p in plans:
        if kind == "lora" and p.profile.lora_rank > s.adapter.lora_rank:
            raise ConfigError(f"profile {p.profile.name}: lora_rank = {p.profile.lora_rank} is above the shared "
                              f"adapter.lora_rank = {s.adapter.lora_rank}; lower it or raise adapter.lora_rank")


def learner(s: Scenario, plan: NodePlan, data: Dataset) -> Learner:
    """The node's model (with its adapter, if its mode averages one) and its optimizer, seeded by node."""
    kind = adapter_kind(s)
    # Whatever is averaged starts equal on every node (standard for gossip averaging): the whole
    # model for fedavg, the common backbone for LoRA, the adapter itself (attach() seeds it).
    # Everything private gets each node's own init, as independent owners would have.
    torch.manual_seed(s.seed if kind in ("whole", "lora") else s.seed * 1_000 + plan.index)
    options = {"embed_dim": s.embed_dim} | plan.profile.arch_options  # a profile may pick its own width
    if len(data.input_shape) == 2:  # (C, L): MFCC coefficients over frames, or an image's rows
        options = {"in_channels": data.input_shape[0]} | options
    model = build_model(plan.profile.arch, input_length=data.input_shape[-1], num_classes=data.num_classes,
                        **options)
    if s.privacy.on:  # DP-SGD needs per-sample gradients of every layer (a GRU becomes opacus's DPGRU)
        model = private_model(model)
    adapter: Adapter | None = None
    if kind is not None:
        a = s.adapter
        adapter = attach(model, kind, embed_dim=s.embed_dim, num_classes=data.num_classes, seed=s.seed,
                         bottleneck=a.bottleneck, rank=plan.profile.lora_rank or a.lora_rank,
                         shared_rank=a.lora_rank, alpha=a.lora_alpha)
    total = plan.train.warmup_steps + s.rounds * plan.train.local_steps
    return Learner(model, data.x_train[plan.train_idx], data.y_train[plan.train_idx],
                   num_classes=data.num_classes, config=plan.train, total_steps=total,
                   seed=s.seed * 1_000 + plan.index, adapter=adapter, privacy=s.privacy)


def mode(s: Scenario, averaging: str) -> Mode:
    """The scenario's mode; `averaging` is what gossip.averaging = "auto" means where the node runs."""
    return make_mode(s.mode, s.adapter, averaging_for(s, averaging))


def make_node(s: Scenario, plan: NodePlan, *, learner: Learner, mode: Mode, transport: Transport,
              reference: Reference | None, test: EvalData, compute: Compute,
              on_record: Callable[[dict], None] = lambda record: None, attack: AttackConfig | None = None,
              **runtime: Any) -> Node:
    """The one place a `Node` is built. `attack`: this node lies (it learns as `mode` does and its
    records say which lie). `runtime`: what only the runtime knows (start_round, incarnation,
    accept_new_peers, min_peers, start_timeout, say, status_extra); everything else comes from the
    scenario and the plan."""
    if attack is not None:
        mode = Attacker(mode, attack, seed=s.seed * 7_919 + plan.index)
        runtime["record_extra"] = {"attacker": attack.kind}
    return Node(node_id=plan.node_id, arch=plan.profile.arch, mode=mode, learner=learner, transport=transport,
                neighbours=plan.neighbours, reference=reference, test=test, rounds=s.rounds, gossip=s.gossip,
                compute=compute, codec=plan.profile.codec or s.gossip.codec, params_codec=s.gossip.params_codec,
                on_record=on_record, eval_every=s.eval_every, profile=plan.profile.name, **runtime)
