"""Scenario events as a schedule (pure): the [[events]] tables and the churn process, checked against the
topology. `sim.EventRunner` applies them on the memory network and the nodes' own lifecycle.

    at = R      fires when the network's front (the first node) starts round R (0: at the start)
    time = T    fires at simulated second T

The churn process (`churn.rate`, `churn.downtime`, `churn.crash`) is a seeded on/off chain per node over
rounds: from `churn.start` on, an up node goes down with probability q each round and a down lasts a
geometric number of rounds with mean `downtime`, so a node is down a share `rate` of the rounds in the
long run (q = rate / (downtime x (1 - rate))). Every down ends by the run's last round, so each node
finishes. A down is a crash with probability `churn.crash`, else a leave; either way the node comes back
from its last round's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from p2pfl.config import ChurnConfig, ConfigError, EventConfig, Scenario


@dataclass(frozen=True)
class Scheduled:
    event: EventConfig
    source: str  # "events[2]" or "churn"


def schedule(s: Scenario, n: int) -> list[Scheduled]:
    """Every event of the run: the scenario's tables (checked: indices of an n-node topology, each node
    joining at most once) then the churn process's, in the order they are listed."""
    out = [Scheduled(e, f"events[{i}]") for i, e in enumerate(s.events)]
    for item in out:
        bad = sorted({i for i in nodes_named(item.event) if i >= n})
        if bad:
            raise ConfigError(f"{item.source}: nodes {bad} are not node indices of a {n}-node topology (0..{n - 1})")
    joins = [i for e in s.events for i in e.join]
    twice = sorted({i for i in joins if joins.count(i) > 1})
    if twice:
        raise ConfigError(f"events: nodes {twice} join twice; a node joins once (then leave / crash and rejoin)")
    return out + [Scheduled(e, "churn") for e in churn(s.churn, n, s.rounds, s.seed)]


def nodes_named(e: EventConfig) -> list[int]:
    return [i for group in (e.leave, e.crash, e.rejoin, e.join, e.slow, *e.partition, *e.cut, *e.link) for i in group]


def late_joiners(s: Scenario) -> set[int]:
    """The nodes absent from the start: those a join event starts."""
    return {i for e in s.events for i in e.join}


def churn(c: ChurnConfig, n: int, rounds: int, seed: int) -> list[EventConfig]:
    """The churn process's leaves / crashes and rejoins (see the module's docstring)."""
    if c.rate <= 0:
        return []
    rng = np.random.default_rng([seed, 7_013])
    down = min(1.0, c.rate / (c.downtime * (1.0 - c.rate)))
    out = []
    for node in range(n):
        r = c.start
        while r < rounds - 1:
            if rng.random() < down:
                back = min(r + int(rng.geometric(1.0 / c.downtime)), rounds - 1)
                how = "crash" if rng.random() < c.crash else "leave"
                out += [EventConfig(at=r, **{how: (node,)}), EventConfig(at=back, rejoin=(node,))]
                r = back + 1
            else:
                r += 1
    return out


def partition_cuts(groups: tuple[tuple[int, ...], ...], graph: nx.Graph) -> list[tuple[int, int]]:
    """The graph's links between two different groups (nodes in no group form one more group)."""
    side = {i: g for g, members in enumerate(groups) for i in members}
    rest = len(groups)
    return [(a, b) for a, b in graph.edges if side.get(a, rest) != side.get(b, rest)]
