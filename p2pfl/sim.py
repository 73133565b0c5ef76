"""Simulations: N nodes of any architectures on a MemoryNetwork, all in one trio loop on a mock clock.

    result = Simulation(load_scenario("sim/quickstart.toml")).run()

Every node runs the same `Node` code as a real process; only the transport (in-memory, counting
every encoded byte) and the compute (inline, with modelled durations) differ. Runs are
deterministic for a scenario and seed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trio
import trio.testing

from p2pfl import shipped
from p2pfl.config import ConfigError, NodeProfile, Scenario, TrainConfig, build, load_profile
from p2pfl.data import build_reference, load_source, partition
from p2pfl.data.reference import Reference, ReferenceSpec
from p2pfl.data.sources import Dataset
from p2pfl.learner import Learner
from p2pfl.files import atomic_write_text
from p2pfl.metrics import MetricsLog, summarize
from p2pfl.models import MODELS, build_model, param_count
from p2pfl.models.adapter import Adapter, attach
from p2pfl.modes import MODES, make_mode
from p2pfl.node import EvalData, FrozenTimePool, Node, SimulatedCompute
from p2pfl.topology import Topology, metropolis_hastings_weights, resolve_topology
from p2pfl.transport.memory import LinkModel, MemoryNetwork

log = logging.getLogger(__name__)

PROFILE_DIR = shipped.folder("node")  # node/ of the checkout, or the installed copy (p2pfl/shipped.py)


@dataclass
class SimulationResult:
    scenario: Scenario
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    run_dir: Path | None

    @property
    def global_mean(self) -> float:
        return self.summary["global"]["mean"]

    @property
    def personal_mean(self) -> float:
        return self.summary["personal"]["mean"]


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
    """Everything that defines one simulated node, derived from the scenario and seed."""

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
    return NodePlan(index, node_id, profile, train, train_idx, neighbours)


# adapter.kind = "auto", per mode: measured on quickstart (BENCHMARKS.md, "Adapter and hybrid modes"):
# alone, sharing the classifier helps most; beside distillation, a shared classifier costs accuracy
AUTO_ADAPTER = {"adapter": "bottleneck", "hybrid": "residual"}


def adapter_kind(s: Scenario) -> str | None:
    """What a parameter mode averages: fedavg the whole model, adapter/hybrid the scenario's adapter."""
    if s.mode == "fedavg":
        return "whole"
    if s.mode not in AUTO_ADAPTER:
        return None
    return AUTO_ADAPTER[s.mode] if s.adapter.kind == "auto" else s.adapter.kind


def averaging_for(s: Scenario, auto: str) -> str:
    """gossip.averaging, with "auto" meaning `auto` (simulations: metropolis; real nodes: push-sum)."""
    return auto if s.gossip.averaging == "auto" else s.gossip.averaging


def _check_shareable(s: Scenario, plans: list[NodePlan]) -> None:
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


def fresh_dir(root: Path, name: str) -> Path:
    """root/name, or root/name-2, -3, ... when it exists: a rerun never overwrites an earlier run."""
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 100_000):
        path = root / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()  # atomic: two runs started at once cannot pick the same folder
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{root} holds 100,000 runs named {name!r}; clean it up")


class Simulation:
    def __init__(self, scenario: Scenario, *, run_dir: str | Path | None = "runs",
                 on_record: Callable[[dict], None] | None = None):
        self.scenario = scenario
        self.run_root = Path(run_dir) if run_dir is not None else None
        self.on_record = on_record or (lambda record: None)

    # -- building ---------------------------------------------------------------------------------
    def dataset(self) -> Dataset:
        d = self.scenario.data
        if d.source in ("mnist1d", "synthetic"):
            return load_source(d.source, num_samples=d.samples, seed=d.data_seed)
        return load_source(d.source)

    def topology(self) -> Topology:
        t = self.scenario.topology
        return resolve_topology(t.name, t.nodes, self.scenario.seed, **t.params)

    def reference(self) -> Reference | None:
        if "logits" not in MODES[self.scenario.mode].kinds:  # only modes that send logits need one
            return None
        r = self.scenario.reference
        return build_reference(ReferenceSpec(source=r.source, seed=r.seed, size=r.size, slice_size=r.slice_size))

    def plan(self, dataset: Dataset, topology: Topology) -> list[NodePlan]:
        s = self.scenario
        n = topology.n
        parts = partition(dataset.y_train, n, s.data.partition, s.seed)
        weights = metropolis_hastings_weights(topology.graph)
        profiles = [resolve_profile(name) for name in s.profiles]
        plans = []
        for i in range(n):
            neighbours = {topology.names[j]: float(weights[i, j]) for j in sorted(topology.graph.neighbors(i))}
            plans.append(node_plan(s, i, topology.names[i], profiles[i % len(profiles)], parts[i], neighbours))
        _check_shareable(s, plans)
        return plans

    def learner(self, plan: NodePlan, dataset: Dataset) -> Learner:
        s = self.scenario
        kind = adapter_kind(s)
        # Whatever is averaged starts equal on every node (standard for gossip averaging): the whole
        # model for fedavg, the common backbone for LoRA, the adapter itself (attach() seeds it).
        # Everything private gets each node's own init, as independent owners would have.
        torch.manual_seed(s.seed if kind in ("whole", "lora") else s.seed * 1_000 + plan.index)
        options = {"embed_dim": s.embed_dim} | plan.profile.arch_options  # a profile may pick its own width
        model = build_model(plan.profile.arch, input_length=dataset.input_shape[-1], num_classes=dataset.num_classes,
                            **options)
        adapter: Adapter | None = None
        if kind is not None:
            a = s.adapter
            adapter = attach(model, kind, embed_dim=s.embed_dim, num_classes=dataset.num_classes, seed=s.seed,
                             bottleneck=a.bottleneck, rank=plan.profile.lora_rank or a.lora_rank,
                             shared_rank=a.lora_rank, alpha=a.lora_alpha)
        total = plan.train.warmup_steps + s.rounds * plan.train.local_steps
        return Learner(model, dataset.x_train[plan.train_idx], dataset.y_train[plan.train_idx],
                       num_classes=dataset.num_classes, config=plan.train, total_steps=total,
                       seed=s.seed * 1_000 + plan.index, adapter=adapter)

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> SimulationResult:
        s = self.scenario
        wall = time.perf_counter()
        dataset = self.dataset()
        topology = self.topology()
        reference = self.reference()
        plans = self.plan(dataset, topology)
        learners = [self.learner(p, dataset) for p in plans]
        run_dir = None
        records: list[dict] = []
        metrics = None
        if self.run_root is not None:
            run_dir = fresh_dir(self.run_root, s.name)
            metrics = MetricsLog(run_dir / "metrics.jsonl")

        def on_record(record: dict) -> None:
            records.append(record)
            if metrics is not None:
                metrics.write(record)
            self.on_record(record)

        test = EvalData(dataset.x_test, dataset.y_test)
        net = s.network
        link = LinkModel(latency=net.latency, jitter=net.jitter, loss=net.loss, bandwidth=net.bandwidth)

        clock = trio.testing.MockClock(autojump_threshold=0)
        workers = s.workers or os.cpu_count() or 1
        pool = FrozenTimePool(clock, workers) if workers > 1 else None
        torch.set_num_threads(1)  # parallelism comes from nodes computing side by side, not inside one op

        wire_bytes = [0]

        async def main() -> None:
            async with MemoryNetwork(link, seed=s.seed) as network:
                async with trio.open_nursery() as nursery:
                    for plan, learner in zip(plans, learners):
                        nursery.start_soon(run_node, network, plan, learner)
                wire_bytes[0] = sum(network.bytes_sent.values())

        async def run_node(network: MemoryNetwork, plan: NodePlan, learner: Learner) -> None:
            compute = SimulatedCompute(net.round_time / plan.train.local_steps / plan.profile.speed,
                                       jitter=net.round_jitter, seed=s.seed * 7_919 + plan.index, pool=pool)
            mode = make_mode(s.mode, s.adapter, averaging_for(s, "metropolis"))
            node = Node(node_id=plan.node_id, arch=plan.profile.arch, mode=mode, learner=learner,
                        transport=network.endpoint(plan.node_id), neighbours=plan.neighbours, reference=reference,
                        test=test, rounds=s.rounds, gossip=s.gossip, compute=compute, codec=plan.profile.codec or s.gossip.codec,
                        params_codec=s.gossip.params_codec,
                        on_record=on_record, eval_every=s.eval_every, profile=plan.profile.name)
            async with node:
                await node.run()

        try:
            trio.run(main, clock=clock)
        finally:
            if metrics is not None:
                metrics.close()
        summary = summarize(records, rounds=s.rounds, wire_bytes=wire_bytes[0])
        summary |= {
            "name": s.name, "mode": s.mode, "seed": s.seed, "wall_time_s": time.perf_counter() - wall,
            "simulated_time_s": max((r["time"] for r in records), default=0.0),
            "topology": {"name": topology.name, "nodes": topology.n, "edges": topology.graph.number_of_edges()},
            "params": {p.node_id: param_count(l.model) for p, l in zip(plans, learners)},
            "fedavg_fp32_bytes_per_node_per_round": float(np.mean([
                4 * param_count(l.model) * len(p.neighbours) for p, l in zip(plans, learners)])),
            "scenario": dataclasses.asdict(s),
        }
        if run_dir is not None:
            import json
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        return SimulationResult(s, summary, records, run_dir)
