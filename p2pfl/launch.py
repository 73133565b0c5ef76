"""Many real node processes from one topology: commands, start, watch, merge, stop.

    plans = plan_nodes(topology, run_dir, scenario_path=..., rounds=30)
    with Launch(plans) as launch:        # starts every `p2pfl node` process
        launch.wait(on_tick=...)         # until all exit; Ctrl-C stops them all cleanly
    summary = merge(plans, rounds)       # the simulation's summary, from every node's metrics.jsonl

Each node gets its own state dir under run_dir (identity, checkpoint, metrics). Identities are
created here first, so every node's --peers (its graph neighbours' full multiaddrs) is known
before any process starts. A topology file's [hosts] table (name = "host:port") places nodes on
a LAN; without it every node listens on 127.0.0.1, ports base_port + index.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p2pfl.files import fresh_dir
from p2pfl.metrics import read_metrics, summarize
from p2pfl.topology import Topology
from p2pfl.transport.libp2p import load_identity, peer_id_of

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # SIGINT, then SIGKILL after this long


@dataclass(frozen=True)
class NodeLaunch:
    index: int
    name: str
    host: str
    port: int
    peer_id: str
    state_dir: Path
    argv: tuple[str, ...]
    prefix: tuple[str, ...] = ()  # what runs the command elsewhere, e.g. ip netns exec NS (an emulated LAN)

    @property
    def addr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.port}/p2p/{self.peer_id}"


def plan_nodes(topology: Topology, run_dir: Path, *, scenario: str | None = None, rounds: int | None = None,
               overrides: tuple[str, ...] = (), base_port: int = 4001, psk_file: str | None = None,
               threads: int = 1, python: str = sys.executable,
               prefix: Callable[[int], list[str]] = lambda i: [], extra: tuple[str, ...] = (),
               dial: bool = True) -> list[NodeLaunch]:
    """One `p2pfl node` command per topology node; shard i of n is simulated node i's data and model.
    prefix(i): what runs node i's command (an emulated LAN's namespace); extra: more `p2pfl node`
    options for every node; dial=False: no --peers (the nodes discover each other)."""
    n = topology.n
    places, ids = [], []
    for i, name in enumerate(topology.names):
        hostport = topology.hosts.get(name, f"127.0.0.1:{base_port + i}")
        host, _, port = hostport.rpartition(":")
        places.append((host, int(port)))
        ids.append(peer_id_of(load_identity(run_dir / name)))
    plans = []
    for i, name in enumerate(topology.names):
        host, port = places[i]
        peers = [f"/ip4/{places[j][0]}/tcp/{places[j][1]}/p2p/{ids[j]}" for j in sorted(topology.graph.neighbors(i))]
        listen_host = host if host == "127.0.0.1" else "0.0.0.0"
        argv = [python, "-m", "p2pfl.cli", "node", "--shard", f"{i}/{n}", "--name", name,
                "--listen", f"/ip4/{listen_host}/tcp/{port}", "--state-dir", str(run_dir / name),
                "--threads", str(threads), "--json", *(["--peers", *peers] if dial else []), *extra]
        if scenario:
            argv += ["--scenario", scenario]
        if rounds:
            argv += ["--rounds", str(rounds)]
        if psk_file:
            argv += ["--psk-file", psk_file]
        for kv in overrides:
            argv += ["--set", kv]
        plans.append(NodeLaunch(i, name, host, port, ids[i], run_dir / name, tuple(argv), tuple(prefix(i))))
    return plans


def commands_by_host(plans: list[NodeLaunch]) -> dict[str, list[str]]:
    """Shell lines to run on each host (for a LAN: copy each state dir's identity.key there first)."""
    out: dict[str, list[str]] = {}
    for p in plans:
        argv = ["p2pfl", *p.argv[3:]]  # the console script instead of `python -m p2pfl.cli`
        out.setdefault(p.host, []).append(shlex.join(argv))
    return out


class Launch:
    """Owns the node processes: started on enter, always stopped on exit (SIGINT, then SIGKILL)."""

    def __init__(self, plans: list[NodeLaunch]):
        self.plans = plans
        self.procs: dict[str, subprocess.Popen] = {}
        self.events: list[dict] = []

    def __enter__(self) -> Launch:
        for p in self.plans:
            self.start(p)
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def start(self, p: NodeLaunch) -> None:
        p.state_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(p.state_dir / "node.log", "ab")
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        self.procs[p.name] = subprocess.Popen([*p.prefix, *p.argv], stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True)  # Ctrl-C reaches us, we stop them
        log_file.close()
        self.events.append({"event": "start", "node": p.name, "time": time.time()})

    def kill(self, name: str) -> None:
        """SIGKILL: a crash, no bye, no flush (what a checkpoint must survive)."""
        proc = self.procs[name]
        proc.kill()
        proc.wait()
        self.events.append({"event": "kill", "node": name, "time": time.time()})

    def running(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is None]

    def wait(self, on_tick: Callable[[Launch], None] = lambda launch: None, tick: float = 1.0,
             timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running():
            on_tick(self)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"nodes still running after {timeout:.0f}s: {', '.join(self.running())}")
            time.sleep(tick)
        on_tick(self)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def exit_codes(self) -> dict[str, int | None]:
        return {name: proc.returncode for name, proc in self.procs.items()}


@dataclass
class CableCut:
    """A drill on an emulated LAN (`lan.EmulatedLan`): node `node`'s cable out once the launch's front
    reaches `at_round`, back after `for_s` seconds of wall time and `min_rounds` of the node's rounds
    (on a busy machine a round may outlast the seconds), and how long after that the node first logs a
    round with bytes received (`heard_after_s`). Call `tick` from `Launch.wait`'s on_tick."""

    net: object  # cut(i) and restore(i): lan.EmulatedLan
    plans: list[NodeLaunch]
    node: int
    for_s: float
    at_round: int = 3
    min_rounds: int = 0
    cut_at: float | None = None
    cut_round: int = 0  # the node's round when its cable went
    back_at: float | None = None
    back_round: int = 0  # the node's round when its cable came back
    heard_after_s: float | None = None

    def tick(self, launch: Launch) -> None:
        now = time.monotonic()
        if self.cut_at is None:
            if max(latest_round(p) for p in self.plans) >= self.at_round:
                self.net.cut(self.node)
                self.cut_at, self.cut_round = now, latest_round(self.plans[self.node])
        elif self.back_at is None:
            alone = latest_round(self.plans[self.node]) - self.cut_round
            if now - self.cut_at >= self.for_s and alone >= self.min_rounds:
                self.net.restore(self.node)
                self.back_at, self.back_round = now, latest_round(self.plans[self.node])
        elif self.heard_after_s is None and any(r["round"] > self.back_round and r["bytes_in"] > 0
                                                for r in node_records(self.plans[self.node])):
            self.heard_after_s = now - self.back_at


def choose_run_dir(root: Path, name: str, *, resume: bool = False) -> tuple[Path, int | None]:
    """Where a launch keeps its nodes' state: (folder, None) for a fresh run, root/name or else the
    first free root/name-2, -3, ... (as `p2pfl sim` does, so a rerun trains anew and overwrites
    nothing); with resume, (the latest existing of those, the round every node has finished).

    A ValueError of one line when there is nothing to resume.
    """
    if not resume:

        return fresh_dir(Path(root), name), None
    runs = earlier_runs(Path(root), name)
    if not runs:
        raise ValueError(f"--resume: no earlier run {Path(root) / name} to continue; "
                         f"leave out --resume to start a fresh one")
    latest = runs[-1]
    return latest, rounds_done(latest)


def earlier_runs(root: Path, name: str) -> list[Path]:
    """root/name, root/name-2, ... that exist, oldest first (by number: name-10 after name-9)."""
    found = []
    if (root / name).is_dir():
        found.append((1, root / name))
    if root.is_dir():
        for path in root.glob(f"{name}-*"):
            suffix = path.name[len(name) + 1:]
            if path.is_dir() and suffix.isdigit() and int(suffix) >= 2 and not suffix.startswith("0"):
                found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def rounds_done(run_dir: Path) -> int:
    """The last round every node of a run logged (0 when one has logged none)."""
    nodes = [d for d in sorted(Path(run_dir).iterdir()) if d.is_dir()]
    return min((max((r["round"] for r in _records(d / "metrics.jsonl")), default=0) for d in nodes), default=0)


def node_records(plan: NodeLaunch) -> list[dict]:
    return _records(plan.state_dir / "metrics.jsonl")


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        return read_metrics(path)
    except ValueError:  # a line being written right now (or cut by a kill): read again later
        return [json.loads(line) for line in path.read_text().splitlines()[:-1] if line.strip()]


def latest_round(plan: NodeLaunch) -> int:
    records = node_records(plan)
    return max((r["round"] for r in records), default=0)


def merge(plans: list[NodeLaunch], rounds: int) -> dict:
    """The simulation's summary over every node's metrics; a round logged twice (a node redid it
    after a crash) counts once, its last record."""
    by_key: dict[tuple[str, int], dict] = {}
    for p in plans:
        for r in node_records(p):
            by_key[r["node"], r["round"]] = r | {"node": p.name}
    records = [by_key[k] for k in sorted(by_key)]
    wire_bytes = sum(r["bytes_out"] for r in records)
    return summarize(records, rounds=rounds, wire_bytes=wire_bytes)
