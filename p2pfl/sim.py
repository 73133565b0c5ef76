"""Simulations: N nodes of any architectures on a MemoryNetwork, all in one trio loop on a mock clock.

    result = Simulation(load_scenario("sim/quickstart.toml")).run()

Every node runs the same `Node` code as a real process; only the transport (in-memory, counting
every encoded byte) and the compute (inline, with modelled durations) differ. Runs are
deterministic for a scenario and seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import outcome
import torch
import trio
import trio.testing

from p2pfl import assemble, checkpoint, events
from p2pfl.assemble import NodePlan
from p2pfl.attacks import attackers
from p2pfl.config import AttackConfig, Scenario
from p2pfl.data.reference import Reference
from p2pfl.data.sources import Dataset
from p2pfl.files import atomic_write_text, fresh_dir
from p2pfl.learner import Learner
from p2pfl.metrics import MetricsLog, churn_summary, summarize
from p2pfl.models import param_count
from p2pfl.modes import Mode
from p2pfl.node import EvalData, Node
from p2pfl.ray_learners import RayCluster, RemoteLearner, ShardLost, on_learner
from p2pfl.topology import Topology
from p2pfl.transport.memory import LinkModel, MemoryNetwork

log = logging.getLogger(__name__)


# -- how compute is run in simulated time -------------------------------------------------------------

class FrozenTimePool:
    """Worker threads for simulations that keep simulated time independent of real time.

    Work that a node starts at simulated instant t runs in a thread and its result is handed
    back at t + its modelled duration. Meanwhile the mock clock runs on, so nodes whose work
    overlaps in simulated time really compute side by side on the cores; the clock stops only
    while some node has reached its finishing instant before its thread has. A run is therefore
    the same for a seed however the threads are scheduled. (Stopping the clock for every busy
    thread, the first version, left one core idle: with jittered durations two nodes rarely
    start at the same instant.)
    """

    def __init__(self, clock: trio.testing.MockClock, workers: int):
        self.clock = clock
        self.limiter = trio.CapacityLimiter(workers)
        self._waiting = 0  # nodes at their finishing instant whose thread is still running

    async def run(self, fn: Callable[..., Any], *args: Any, duration: float) -> Any:
        done = trio.Event()
        result: list[outcome.Outcome] = []

        async def work() -> None:
            result.append(await outcome.acapture(trio.to_thread.run_sync, fn, *args, limiter=self.limiter))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(work)
            try:
                await trio.sleep(duration)
            finally:  # also when cancelled (a crashed node): the thread runs on, and time waits for it
                if not done.is_set():
                    with trio.CancelScope(shield=True):
                        await self._frozen_until(done)
        return result[0].unwrap()

    async def _frozen_until(self, done: trio.Event) -> None:
        self._waiting += 1
        self.clock.autojump_threshold = math.inf
        try:
            await done.wait()
        finally:
            self._waiting -= 1
            if self._waiting == 0:
                self.clock.autojump_threshold = 0


class SimulatedCompute:
    """Simulations: the work's result arrives after its modelled duration of simulated time.

    The modelled duration (seconds per step / speed, with per-call jitter) is what makes nodes
    drift apart as real ones do. Without a pool the work runs inline, then the node sleeps.
    """

    def __init__(self, seconds_per_step: float, *, jitter: float = 0.1, seed: int = 0,
                 pool: FrozenTimePool | None = None):
        self.seconds_per_step = seconds_per_step
        self.jitter = jitter
        self.pool = pool
        self.speed = 1.0  # a `slow` event's factor on top of the profile's speed
        self._rng = random.Random(seed)

    async def __call__(self, fn: Callable[..., Any], *args: Any, steps: int = 0) -> Any:
        duration = steps * self.seconds_per_step * (1 + self._rng.uniform(-self.jitter, self.jitter)) / self.speed
        if self.pool:
            return await self.pool.run(fn, *args, duration=duration)
        out = fn(*args)
        await trio.sleep(duration)
        return out


@dataclass
class Built:
    """What a simulation is made of, before it runs (kept: the result exposes it)."""

    dataset: Dataset
    topology: Topology
    reference: Reference | None
    plans: list[NodePlan]
    learners: list[Learner]
    attackers: dict[int, AttackConfig] = field(default_factory=dict)  # node index -> the lie it tells


@dataclass
class SimulationResult:
    scenario: Scenario
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    run_dir: Path | None
    built: Built | None = None  # data, graph, reference, plans and trained learners
    modes: list[Mode] = field(default_factory=list)  # in node order, as they ended the run
    nodes: list[Node] = field(default_factory=list)

    @property
    def learners(self) -> list[Learner]:
        return self.built.learners if self.built else []

    @property
    def global_mean(self) -> float:
        return self.summary["global"]["mean"]

    @property
    def personal_mean(self) -> float:
        return self.summary["personal"]["mean"]


class Simulation:
    """`Simulation(scenario).run()`; `make_mode(plan)` may build each node's mode (a `Mode` subclass of
    one's own, say); by default the scenario's."""

    def __init__(self, scenario: Scenario, *, run_dir: str | Path | None = "runs",
                 on_record: Callable[[dict], None] | None = None,
                 make_mode: Callable[[NodePlan], Mode] | None = None):
        self.scenario = scenario
        self.run_root = Path(run_dir) if run_dir is not None else None
        self.on_record = on_record or (lambda record: None)
        self.make_mode = make_mode

    def build(self, cluster: RayCluster | None = None) -> Built:
        """cluster: the learners are built on its shards (`ray`), the driver keeps `RemoteLearner`s."""
        s = self.scenario
        graph = assemble.topology(s)
        liars = attackers(s, graph.graph)  # before data and learners: a bad attack plan fails in a second
        data, reference = assemble.data_and_reference(s)
        plans = assemble.plans(s, data, graph)
        learners = (cluster.learners(s, data, plans, shared=(data.x_test, data.y_test)) if cluster
                    else [assemble.learner(s, p, data) for p in plans])
        return Built(data, graph, reference, plans, learners, liars)

    def run(self) -> SimulationResult:
        s = self.scenario
        wall, rid = time.perf_counter(), run_id()
        cluster = RayCluster(s.ray) if s.ray else None
        try:
            return self._run(s, wall, rid, cluster)
        finally:
            if cluster is not None:
                cluster.close()

    def _run(self, s: Scenario, wall: float, rid: str, cluster: RayCluster | None) -> SimulationResult:
        built = self.build(cluster)
        plans, learners = built.plans, built.learners
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
            runner.recorded(record)

        test = EvalData(built.dataset.x_test, built.dataset.y_test)
        net = s.network
        link = LinkModel(latency=net.latency, jitter=net.jitter, loss=net.loss, bandwidth=net.bandwidth)

        clock = trio.testing.MockClock(autojump_threshold=0)
        # with Ray, threads that wait on shards: twice as many as the shards keep each one busy
        workers = s.workers or (2 * len(cluster.shards) if cluster else os.cpu_count()) or 1
        pool = FrozenTimePool(clock, workers) if workers > 1 or cluster else None
        torch.set_num_threads(1)  # parallelism comes from nodes computing side by side, not inside one op

        network = MemoryNetwork(link, seed=s.seed)
        scheduled = events.schedule(s, built.topology.n)
        restartable = {i for item in scheduled for i in item.event.leave + item.event.crash}
        late = events.late_joiners(s)

        def make(plan: NodePlan, learner: Learner, compute: SimulatedCompute, endpoint, record, **runtime) -> Node:
            mode = self.make_mode(plan) if self.make_mode else assemble.mode(s, "metropolis")
            return assemble.make_node(s, plan, learner=learner, mode=mode, transport=endpoint,
                                      reference=built.reference, test=test, compute=compute, on_record=record,
                                      attack=built.attackers.get(plan.index), **runtime)

        def compute(plan: NodePlan) -> SimulatedCompute:
            return SimulatedCompute(net.round_time / plan.train.local_steps / plan.profile.speed,
                                    jitter=net.round_jitter, seed=s.seed * 7_919 + plan.index, pool=pool)

        hosts = [NodeHost(plan, learner, network, make, on_record, checkpoints=plan.index in restartable,
                          compute=compute(plan)) for plan, learner in zip(plans, learners)]
        runner = EventRunner(scheduled, hosts, network, built.topology.graph)
        for i, e in enumerate(s.events):  # a shortened run (--rounds) of an events scenario: say what it drops
            if e.at > s.rounds:
                log.warning("events[%d] (%s at round %d) comes after the last round (%d): it will not happen",
                            i, e.action, e.at, s.rounds)
        for i, a in enumerate(s.attack):
            if a.start > s.rounds:
                log.warning("attack[%d] (%s from round %d) starts after the last round (%d): its nodes never lie, "
                            "and are still reported apart as attackers", i, a.kind, a.start, s.rounds)

        async def main() -> None:
            async with network:
                async with trio.open_nursery() as nursery:
                    runner.begin(nursery, absent=late)

        interrupted = False
        try:
            trio.run(main, clock=clock)
        except KeyboardInterrupt:  # Ctrl-C: what ran is kept, and said to be partial
            interrupted = True
        except BaseExceptionGroup as group:  # ... raised inside a node's nursery
            if group.split(KeyboardInterrupt)[1] is not None:
                raise
            interrupted = True
        finally:
            if metrics is not None:
                metrics.close()
        if cluster is not None:  # the trained learners, back from the shards, where the result holds them
            try:
                taken = cluster.take()
            except ShardLost as e:  # the records and the summary stand without the models
                log.warning("%s; the result holds no trained learners", e)
            else:
                learners[:] = [taken[p.index] for p in plans]
                for h in hosts:
                    h.learner = taken[h.plan.index]
                    if h.node is not None:
                        h.node.learner = h.node.ctx.learner = h.learner
        reached = max((r["round"] for r in records), default=0)
        summary = summarize(records, rounds=reached if interrupted else s.rounds,
                            wire_bytes=sum(network.bytes_sent.values()))
        if runner.log:  # what happened to the network, and how the nodes came through it
            summary |= {"events": runner.log, "up_by_round": runner.up_by_round,
                        "churn": churn_summary(records, runner.log, runner.up_by_round, [p.node_id for p in plans])}
        summary |= {
            "name": s.name, "run_id": rid, "mode": s.mode, "seed": s.seed,
            "wall_time_s": time.perf_counter() - wall,
            "simulated_time_s": max((r["time"] for r in records), default=0.0),
            "topology": {"name": built.topology.name, "nodes": built.topology.n,
                         "edges": built.topology.graph.number_of_edges()},
            "graph": {"nodes": list(built.topology.names),  # for `p2pfl report`'s picture of the graph
                      "edges": [[built.topology.names[a], built.topology.names[b]]
                                for a, b in built.topology.graph.edges]},
            "reference": None if built.reference is None else {
                "source": built.reference.spec.source, "rows": built.reference.size,
                "slice_size": built.reference.spec.slice_size, "digest": built.reference.digest},
            "params": {p.node_id: _params(l) for p, l in zip(plans, learners)},
            "fedavg_fp32_bytes_per_node_per_round": float(np.mean([
                4 * _params(l) * len(p.neighbours) for p, l in zip(plans, learners)])),
            "scenario": dataclasses.asdict(s),
        } | ({"ray": cluster.describe()} if cluster else {})
        if built.attackers:  # honest nodes' numbers apart: what the attack cost them
            honest = summarize([r for r in records if "attacker" not in r], rounds=summary.get("rounds", s.rounds),
                               wire_bytes=0)
            summary |= {"attackers": {plans[i].node_id: a.kind for i, a in sorted(built.attackers.items())},
                        "honest": {k: honest[k] for k in ("nodes", "global", "personal", "per_arch", "rejected")
                                   if k in honest}}
        if interrupted:
            summary |= {"partial": True, "rounds_reached": reached,
                        "rounds_done_by_all": min(_last_rounds(records, plans), default=0)}
        if run_dir is not None:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        result = SimulationResult(s, summary, records, run_dir, built, [h.node.mode for h in hosts if h.node],
                                  [h.node for h in hosts if h.node])
        if interrupted:
            raise Interrupted(result)
        return result


class NodeHost:
    """One simulated node's process, which events stop and start again. A crash takes the node off the
    network at once (no bye, nothing in flight arrives) and loses what it did since its last round; a
    leave ends its round loop and says bye. Either way it restarts (`start`) from the checkpoint it kept
    after its last round (in memory), as a new incarnation that catches up with the network."""

    def __init__(self, plan: NodePlan, learner: Learner, network: MemoryNetwork, make: Callable[..., Node],
                 on_record: Callable[[dict], None], *, checkpoints: bool, compute: SimulatedCompute):
        self.plan, self.learner, self.network, self.compute = plan, learner, network, compute
        self.name = plan.node_id
        self.endpoint = network.endpoint(plan.node_id)
        self._make, self._on_record, self._checkpoints = make, on_record, checkpoints
        self.state = "absent"  # absent | up | left | crashed | done
        self.node: Node | None = None
        self.saved: bytes | None = None  # the checkpoint after its last round
        self._scope = trio.CancelScope()
        self._started = False  # this start's Node exists
        self._finished = trio.Event()  # the last start's process is gone (none yet: set)
        self._finished.set()
        self._meta = {"node": plan.node_id}
        if checkpoints:  # a crash before its first round loses the warm-up too
            self.saved = on_learner(learner, checkpoint.dumps, round=0, meta=self._meta, peers={})

    @property
    def up(self) -> bool:
        return self.state == "up"

    def start(self, nursery: trio.Nursery, *, late: bool) -> None:
        self.state, self._started = "up", False
        self._scope = trio.CancelScope()
        previous, self._finished = self._finished, trio.Event()
        nursery.start_soon(self._run, late, self._scope, previous, self._finished)

    def stop(self, crash: bool) -> None:
        if crash:
            self.network.set_down(self.name)  # no bye, and what is in flight to or from it is lost
            self.state = "crashed"
            self._scope.cancel()
        else:
            self.state = "left"
            self.node.leave() if self._started else self._scope.cancel()  # not started: nobody to tell

    async def _run(self, late: bool, scope: trio.CancelScope, previous: trio.Event, finished: trio.Event) -> None:
        await previous.wait()  # the last process (a round's work in a thread included) is gone
        try:
            with scope:
                await self._process(late)
        finally:
            finished.set()

    async def _process(self, late: bool) -> None:
        self.network.set_down(self.name, False)
        self.endpoint.drain()  # what reached the dead process is gone
        resumed = self._resume() if self.saved else None
        before = self.node.round_seconds if self.node is not None else None  # what a round took last time
        node = self._make(self.plan, self.learner, self.compute, self.endpoint, self._record,
                          start_round=resumed.round if resumed else 0, late=late, round_seconds=before)
        if resumed:
            node.mode.load_state(resumed.mode_state)
        self.node, self._started = node, True
        try:
            async with node:
                await node.run()
        finally:
            if self.state == "left":  # it said bye (still on its way); a stopped process answers nobody
                self.network.set_down(self.name, clean=True)
        if self.state == "up":
            self.state = "done"

    def _resume(self) -> checkpoint.Resumed:
        return on_learner(self.learner, _load_checkpoint, self.saved, meta=self._meta)

    def _record(self, record: dict) -> None:
        if self._checkpoints:
            self.saved = on_learner(self.learner, checkpoint.dumps, round=record["round"], meta=self._meta,
                                    peers={}, mode_state=self.node.mode.state())
        self._on_record(record)


class EventRunner:
    """Applies a run's scheduled events: round events when the network's front (the first node to
    record round R - 1) starts round R, time events at their simulated second. It logs each change and,
    per round of the front, which nodes were up."""

    def __init__(self, scheduled: list[events.Scheduled], hosts: list[NodeHost], network: MemoryNetwork,
                 graph):
        self.hosts, self.network, self.graph = hosts, network, graph
        self._by_round = sorted((item for item in scheduled if not item.event.time), key=lambda i: i.event.at)
        self._by_time = sorted((item for item in scheduled if item.event.time), key=lambda i: i.event.time)
        self.front = 0
        self.log: list[dict] = []
        self.up_by_round: dict[int, list[str]] = {}
        self._nursery: trio.Nursery | None = None

    def begin(self, nursery: trio.Nursery, absent: set[int]) -> None:
        self._nursery = nursery
        for h in self.hosts:
            if h.plan.index in absent:
                self.network.set_down(h.name)  # not there yet: its neighbours' hellos find nobody
            else:
                h.start(nursery, late=False)
        self._fire_rounds(1)  # round 0 (the warm-up) and 1: at the start
        if self._by_time:
            nursery.start_soon(self._timed)

    def recorded(self, record: dict) -> None:
        if record["round"] + 1 > self.front:
            self.front = record["round"] + 1
            self._fire_rounds(self.front)
            self.up_by_round[self.front] = [h.name for h in self.hosts if h.up]

    def _fire_rounds(self, r: int) -> None:
        while self._by_round and self._by_round[0].event.at <= r:
            self._apply(self._by_round.pop(0))

    async def _timed(self) -> None:
        for item in self._by_time:
            await trio.sleep_until(item.event.time)
            self._apply(item)

    def _apply(self, item: events.Scheduled) -> None:
        e = item.event
        action = e.action
        hosts = self.hosts
        ignored = []
        if action in ("leave", "crash"):
            for i in getattr(e, action):
                if hosts[i].up:
                    hosts[i].stop(crash=action == "crash")
                else:
                    ignored.append(i)
        elif action in ("rejoin", "join"):
            for i in getattr(e, action):
                if hosts[i].state in (("left", "crashed") if action == "rejoin" else ("absent",)):
                    hosts[i].start(self._nursery, late=True)
                else:
                    ignored.append(i)
        elif action in ("cut", "partition"):
            for a, b in e.cut or events.partition_cuts(e.partition, self.graph):
                self.network.cut(hosts[a].name, hosts[b].name)
        elif action == "heal":
            self.network.heal()
        elif action == "slow":
            for i in e.slow:
                hosts[i].compute.speed = e.speed
        elif action == "link":
            for a, b in e.link:
                old = self.network.link_model(hosts[a].name, hosts[b].name)
                new = {k: v for k in ("latency", "jitter", "loss", "bandwidth") if (v := getattr(e, k)) >= 0}
                self.network.set_link(hosts[a].name, hosts[b].name, dataclasses.replace(old, **new))
        if ignored:
            log.warning("%s at round %d: %s ignored for nodes %s (%s)", item.source, self.front, action, ignored,
                        "not up" if action in ("leave", "crash") else "not down" if action == "rejoin" else "started")
        named = sorted(set(events.nodes_named(e)) - set(ignored))
        self.log.append({"event": action, "source": item.source, "round": self.front, "time": trio.current_time(),
                         "nodes": [hosts[i].name for i in named]} | ({"speed": e.speed} if action == "slow" else {}))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `Simulation.run`: `result` holds what ran (its summary says "partial": true)."""

    def __init__(self, result: SimulationResult):
        super().__init__(f"interrupted at round {result.summary.get('rounds_reached', 0)}")
        self.result = result


def _params(learner: Learner | RemoteLearner) -> int:
    return learner.facts.params if isinstance(learner, RemoteLearner) else param_count(learner.model)


def _load_checkpoint(learner: Learner, saved: bytes, *, meta: dict) -> checkpoint.Resumed:
    """checkpoint.loads with the learner first, as `on_learner` calls it (on a Ray shard, too)."""
    return checkpoint.loads(saved, learner, meta=meta)


def _last_rounds(records: list[dict], plans: list[NodePlan]) -> list[int]:
    """Each node's last completed round (0 for a node with none)."""
    last = {p.node_id: 0 for p in plans}
    for r in records:
        last[r["node"]] = max(last[r["node"]], r["round"])
    return list(last.values())


def run_id() -> str:
    """A run's id: when it started (UTC) and 4 random bytes, so two runs never share one."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
