"""Learners on Ray actors: `ray = "auto" | "local" | ADDRESS` trains a simulation's nodes on a Ray cluster.

One trio loop keeps the mock clock, the memory network and every node's loop, mode and gossip, as
without Ray; only the learners (model, optimizer, private rows, random generator) live on `Shard`
actors, a share of the nodes each, and every learner method a node's mode calls (train, logits, class
means, evaluate, the flat parameters) runs there. The frozen-time pool's threads wait on those calls,
so simulated time, determinism and the records are a single-process run's (tests/test_ray.py compares
them record by record).

Why this split and not one trio loop per shard with the nodes' messages carried by Ray: a node's round
is > 80% `Learner.train` (the profile in BENCHMARKS.md), which this spreads, and a remote call costs a
few ms against a training call's 0.1-0.8 s; loops per shard would need their mock clocks kept in step
(a conservative synchronisation on the smallest link latency) to stay deterministic, for the < 20% of
the work that is the loops' own. scripts/bench_scale.py measures the overhead per round.

Arguments cross to the actors as Ray serialises them (pickle, inside the simulation's own cluster);
nothing of it is the peer-to-peer wire, which stays msgpack. Ray is an optional extra: this module
imports it only when a simulation asks for it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from ipaddress import ip_address
from typing import Any

import numpy as np
import torch

from p2pfl.assemble import NodePlan, learner
from p2pfl.config import ConfigError, Scenario, TrainConfig
from p2pfl.data.sources import Dataset
from p2pfl.learner import Learner
from p2pfl.models import param_count

log = logging.getLogger(__name__)

FORWARDED = ("train", "logits", "class_means", "evaluate", "get_flat", "set_flat", "epsilon_spent")


@dataclass(frozen=True)
class Facts:
    """What the driver reads of a learner without a call: fixed at build, refreshed after `apply`
    (a checkpoint's load restores a private node's released label counts)."""

    num_classes: int
    label_counts: np.ndarray
    config: TrainConfig
    adapter_size: int
    adapter_shape: tuple
    private: bool
    params: int

    @staticmethod
    def of(learner: Learner) -> Facts:
        return Facts(learner.num_classes, learner.label_counts, learner.config, learner.adapter.size,
                     tuple(learner.adapter.shape), learner.private is not None, param_count(learner.model))


class ShardLost(RuntimeError):
    """A shard's actor died (its worker process or machine went away): its nodes' learners are gone with it,
    and a simulation cannot go on deterministically without them."""


def _get(refs: Any, holding: str) -> Any:
    """ray.get, with a shard's death (or the loss of a result it computed) as `ShardLost` naming what it held."""
    import ray

    try:
        return ray.get(refs)
    except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
        cause = str(e).strip().splitlines()[0][:300]
        raise ShardLost(f"ray: the shard holding {holding} is gone ({cause}); a simulation keeps every node's "
                        f"state on its shard and cannot go on without it: run again (on workers that stay up)") from None


def versions() -> dict[str, str]:
    """What must match between the driver and its shards for their numbers to be the driver's."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("p2pfl")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        ours = "not installed"
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__, "p2pfl": ours}


class Shard:
    """Some nodes' learners, built where they train (`assemble.learner`, as every process builds them)."""

    def __init__(self, scenario: Scenario, data: Dataset):
        torch.set_num_threads(1)  # as the simulation's own threads: the same kernels, the same numbers
        # the data and test set come read-only from the object store; learners only read them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.scenario, self.data = scenario, data
        self.learners: dict[int, Learner] = {}

    def build(self, plans: list[NodePlan]) -> tuple[dict[str, str], list[Facts]]:
        for p in plans:
            self.learners[p.index] = learner(self.scenario, p, self.data)
        return versions(), [Facts.of(self.learners[p.index]) for p in plans]

    def call(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.learners[index], method)(*args, **kwargs)

    def apply(self, index: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Facts]:
        out = fn(self.learners[index], *args, **kwargs)
        return out, Facts.of(self.learners[index])

    def take(self) -> dict[int, Learner]:
        """The trained learners, for the driver's result (the actor ends after this)."""
        return self.learners


class AdapterFacts:
    """What a node reads of its learner's adapter: the size and shape it announces in its hello."""

    def __init__(self, facts: Facts):
        self.size, self.shape = facts.adapter_size, facts.adapter_shape


class RemoteLearner:
    """A `Learner` that lives on a shard: the same methods, each a call the calling thread waits on."""

    def __init__(self, shard: Any, index: int, facts: Facts, plan: NodePlan, data: Dataset,
                 shared: dict[int, tuple[np.ndarray, Any]]):
        self.shard, self.index, self._plan, self._data, self._shared = shard, index, plan, data, shared
        self._set(facts)

    def __getattr__(self, name: str) -> Any:
        # only reached for what this proxy lacks: a learner's model, optimizer and state live on its shard
        raise AttributeError(f"{name!r}: with ray, node {self._plan.node_id}'s learner lives on a Ray shard, and the "
                             f"driver reaches it only through its methods ({', '.join(FORWARDED)}) and `apply(fn)`; "
                             f"run with ray = '' to use the learner's {name!r} directly")

    def _set(self, facts: Facts) -> None:
        self.facts = facts
        self.num_classes, self.label_counts, self.config = facts.num_classes, facts.label_counts, facts.config
        self.adapter = AdapterFacts(facts)

    # the node's own rows, for modes that teach on them (fd): the driver has the data, so no call
    @cached_property
    def x(self) -> torch.Tensor:
        return torch.as_tensor(self._data.x_train[self._plan.train_idx], dtype=torch.float32)

    @cached_property
    def y(self) -> torch.Tensor:
        return torch.as_tensor(self._data.y_train[self._plan.train_idx], dtype=torch.long)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        # arrays every node passes (the test set) travel once, as object refs (Ray resolves those given as
        # arguments themselves, not inside a tuple), not with every call
        args = tuple(self._shared[id(a)][1] if id(a) in self._shared and self._shared[id(a)][0] is a else a
                     for a in args)
        return _get(self.shard.call.remote(self.index, method, *args, **kwargs), f"learner {self._plan.node_id}")

    def train(self, *args: Any, **kwargs: Any) -> float:
        return self._call("train", *args, **kwargs)

    def logits(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self._call("logits", *args, **kwargs)

    def class_means(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self._call("class_means", *args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("evaluate", *args, **kwargs)

    def get_flat(self) -> np.ndarray:
        return self._call("get_flat")

    def set_flat(self, flat: np.ndarray) -> None:
        self._call("set_flat", flat)

    def epsilon_spent(self) -> float | None:
        return self._call("epsilon_spent") if self.facts.private else None

    def apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(learner, *args, **kwargs) on the shard (a checkpoint's dumps or loads); its facts refreshed."""
        out, facts = _get(self.shard.apply.remote(self.index, fn, *args, **kwargs), f"learner {self._plan.node_id}")
        self._set(facts)
        return out


def on_learner(learner: Learner | RemoteLearner, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(learner, ...) where the learner lives: in this process, or on its Ray shard."""
    if isinstance(learner, RemoteLearner):
        return learner.apply(fn, *args, **kwargs)
    return fn(learner, *args, **kwargs)


def place(plans: Sequence[NodePlan], shards: int) -> list[list[NodePlan]]:
    """Nodes to shards: round-robin within each architecture, so each shard gets its share of the costly ones."""
    ordered = sorted(plans, key=lambda p: (p.profile.arch, p.index))
    return [ordered[k::shards] for k in range(shards)]


class RayCluster:
    """The driver's side of a cluster: `learners` connects to it (or starts one) and puts one `Shard` actor
    on each of its CPUs. Made before the run is built, so that a missing Ray fails first; connected only
    once the scenario has built (its own errors come before any cluster starts)."""

    def __init__(self, address: str):
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(f"ray = {address!r} needs Ray: pip install 'p2pfl[ray]' (or -e \".[ray]\" in a "
                              f"checkout); or leave ray unset to simulate in this process")
        self.address = address
        self.connected = False
        self.cpus = 0
        self.shards: list[Any] = []
        self._placed: list[list[NodePlan]] = []
        self.startup_s = 0.0  # connecting (or starting), the shards' start and their learners' build

    def _connect(self) -> None:
        address = self.address
        given = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
        if given not in ("", "auto", "local"):  # RAY_ADDRESS too: a dead head there hangs "auto" for minutes
            _reachable(given)
        _loopback_stays_loopback(given)
        import ray

        # a cluster Ray starts for us would report usage to Ray's makers; not unasked (the variable turns it on)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
        if address == "local":
            kwargs |= {"include_dashboard": False}
        try:
            ray.init(address=None if address == "auto" else address, **kwargs)
        except ConnectionError as e:
            raise ConfigError(f"ray = {address!r}: no Ray cluster there ({e}); start one with `ray start --head` "
                              f"(workers: `ray start --address HEAD:PORT`), or use ray = 'local'") from None
        self.connected = True
        # CPUs free now: each shard takes one for the run, and one asked for beyond them would wait forever
        self.cpus = int(ray.available_resources().get("CPU", 0))
        if self.cpus < 1:
            total = ray.cluster_resources().get("CPU", 0)
            raise ConfigError(f"ray = {address!r}: the cluster has no free CPU ({total:g} in all, the rest in use "
                              f"by other jobs); add workers (`ray start --address HEAD:PORT`) or wait for them")

    def learners(self, scenario: Scenario, data: Dataset, plans: list[NodePlan],
                 shared: Sequence[np.ndarray] = ()) -> list[RemoteLearner]:
        """Every plan's learner, built on the shard it is placed on; `shared`: arrays many calls pass."""
        started = time.perf_counter()
        self._connect()
        import ray

        actor = ray.remote(num_cpus=1)(Shard)
        data_ref = ray.put(data)  # one copy in the object store, read by every shard
        self._placed = [group for group in place(plans, min(self.cpus, len(plans))) if group]
        self.shards = [actor.remote(scenario, data_ref) for _ in self._placed]
        refs = {id(a): (a, ray.put(a)) for a in shared}
        built = _get([s.build.remote(group) for s, group in zip(self.shards, self._placed)], "learners being built")
        ours = versions()
        for theirs, _ in built:
            if theirs != ours:
                diff = ", ".join(f"{k} {theirs.get(k)} there, {v} here" for k, v in ours.items() if theirs.get(k) != v)
                raise ConfigError(f"ray = {self.address!r}: a worker runs other versions ({diff}); its numbers would "
                                  f"not be this process's: install the same on every machine of the cluster")
        out: dict[int, RemoteLearner] = {}
        for shard, group, (_, facts) in zip(self.shards, self._placed, built):
            for plan, f in zip(group, facts):
                out[plan.index] = RemoteLearner(shard, plan.index, f, plan, data, refs)
        self.startup_s += time.perf_counter() - started
        log.info("ray: %d nodes on %d shards (%d CPUs)", len(plans), len(self.shards), self.cpus)
        return [out[p.index] for p in plans]

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "cpus": self.cpus, "startup_s": self.startup_s,
                "nodes_per_shard": [len(group) for group in self._placed]}

    def take(self) -> dict[int, Learner]:
        """The trained learners, back in this process (each shard's, in one call)."""
        out: dict[int, Learner] = {}
        for part in _get([s.take.remote() for s in self.shards], "trained learners"):
            out |= part
        return out

    def close(self) -> None:
        if not self.connected:
            return
        import ray

        self.shards = []
        ray.shutdown()  # a cluster we started stops; one we joined keeps running, our actors end


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else -1


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A head that does not answer fails now, in one line: Ray itself would retry for minutes."""
    host, port = _host_port(address)
    if not host or not 0 < port < 65536:
        raise ConfigError(f"ray = {address!r}: give the head as HOST:PORT (e.g. 10.0.0.5:6379, as `ray start "
                          f"--head` prints it), or 'auto' / 'local'")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"ray = {address!r}: nothing answers there ({e.strerror or e}); start the head with "
                          f"`ray start --head --port {port}` (workers: `ray start --address {host}:{port}`), or use "
                          f"ray = 'local' for a cluster on this machine") from None


def _loopback_stays_loopback(address: str) -> None:
    """Ray rewrites a loopback address to the host's own (meant for clusters across machines); a cluster
    started on 127.0.0.1 (`ray start --head --node-ip-address 127.0.0.1`, the tests') is then unreachable.
    Its switch for single-machine clusters keeps it local; it must be set before Ray is imported."""
    host, _ = _host_port(address)
    try:
        loopback = ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
