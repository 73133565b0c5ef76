"""One real node process: a scenario's shard, trained by `Node` over libp2p, checkpointed every round.

    cfg = RealNodeConfig(scenario, shard=3, shards=8, state_dir=Path("~/.p2pfl/n3"), peers=(...))
    records = await run_real_node(cfg, on_start=..., on_record=...)

What a node learns (data source, partition, model, training, reference set, mode) comes from the
scenario exactly as in a simulation: shard i of n trains the data and model that simulated node
i would, so real runs and simulations of one scenario and seed are comparable. Only the network
differs: libp2p instead of the memory transport, real time instead of the mock clock, and
uniform mixing weights over whoever is a neighbour (the graph is not known to one process).

The state dir holds the node's identity (identity.key: the same peer id after a restart),
checkpoint.pt (rewritten atomically after each round) and metrics.jsonl (one line per round,
the simulation's format). A restart with the same state dir resumes after the last saved round.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from p2pfl import assemble, checkpoint
from p2pfl.config import AttackConfig, ConfigError, Scenario
from p2pfl.metrics import MetricsLog
from p2pfl.node import EvalData, Node, thread_compute
from p2pfl.transport.libp2p import Libp2pTransport, Policy, load_identity, peer_id_of
from p2pfl.transport.mdns import MdnsNeighbours

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RealNodeConfig:
    scenario: Scenario
    shard: int  # this node's index among `shards` (the simulation's node index)
    shards: int
    state_dir: Path
    listen: str = "/ip4/0.0.0.0/tcp/0"
    peers: tuple[str, ...] = ()  # multiaddrs ending in /p2p/<peer id>
    profile: str | None = None  # default: the scenario's profiles, round-robin by shard
    psk: str | None = None  # 64 hex characters: a private network
    policy: Policy = field(default_factory=Policy)
    name: str = ""  # a label for logs and metrics (default: the peer id)
    # before the first round, wait until this many neighbours are greeted (None: every one of `peers`,
    # at least one), for at most start_timeout seconds: a node started first does not train alone
    min_peers: int | None = None
    start_timeout: float = 60.0
    attack: AttackConfig | None = None  # a drill: this node lies to its neighbours (p2pfl node --attack)
    discover: str = ""  # "mdns": also find neighbours on the LAN segment (p2pfl.transport.mdns)
    degree: int = 4  # with discover: discovered neighbours to keep


def parse_shard(text: str) -> tuple[int, int]:
    """'3/8' -> (3, 8): shard 3 of 8, counting from 0."""
    i, sep, n = text.partition("/")
    try:
        shard, shards = int(i), int(n)
    except ValueError:
        shard = shards = -1
    if not sep or not 0 <= shard < shards:
        raise ConfigError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 3/8 for the 4th of 8 nodes")
    return shard, shards


async def run_real_node(cfg: RealNodeConfig, *, on_start: Callable[[list[str], int], None] = lambda addrs, start: None,
                        on_record: Callable[[dict], None] = lambda record: None,
                        say: Callable[[str], None] | None = None) -> list[dict]:
    """Run the node to the scenario's last round; returns this process's per-round records."""
    s = cfg.scenario
    dataset, reference = assemble.data_and_reference(s)
    key = load_identity(cfg.state_dir)
    peer_id = peer_id_of(key)
    plan = assemble.shard_plan(s, dataset, cfg.shard, cfg.shards, peer_id, cfg.profile)
    profile = plan.profile
    learner = assemble.learner(s, plan, dataset)

    meta = {"arch": profile.arch, "mode": s.mode, "shard": f"{cfg.shard}/{cfg.shards}", "data": s.data.source,
            "partition": s.data.partition, "seed": s.seed, "reference": reference.digest if reference else "",
            "adapter": assemble.adapter_kind(s) or ""}
    if learner.private is not None:  # another budget or plan would make the epsilon spent so far meaningless
        pr = s.privacy
        meta["privacy"] = (f"epsilon={pr.epsilon} delta={pr.delta} clip={pr.clip} batch={pr.batch} "
                           f"count_noise={learner.private.count_noise} steps={learner.private.planned}")
    ckpt_path = Path(cfg.state_dir) / checkpoint.FILENAME
    resumed = checkpoint.load(ckpt_path, learner, meta=meta)
    start = resumed.round if resumed else 0
    if resumed:
        log.info("resuming after round %d from %s", start, ckpt_path)

    metrics = MetricsLog(Path(cfg.state_dir) / "metrics.jsonl")
    label = cfg.name or peer_id
    node: Node | None = None

    def record_round(record: dict) -> None:
        record = record | {"name": label, "shard": cfg.shard}
        metrics.write(record)
        peers = {pid: p.inbox.newest_round for pid, p in node.peers.items() if p.inbox.latest}
        checkpoint.save(ckpt_path, learner, round=record["round"], meta=meta, peers=peers, mode_state=mode.state())
        on_record(record)

    try:
        async with Libp2pTransport.open(key_pair=key, listen=cfg.listen, peers=cfg.peers, policy=cfg.policy,
                                        psk=cfg.psk) as transport:
            neighbours = {p: 1.0 / (len(transport.neighbours) + 1) for p in transport.neighbours}
            # uniform weights are not symmetric (neighbours differ in degree): push-sum keeps the plain mean
            mode = assemble.mode(s, "push-sum")
            if resumed:
                mode.load_state(resumed.mode_state)
            node = assemble.make_node(
                s, dataclasses.replace(plan, neighbours=neighbours), learner=learner, mode=mode, transport=transport,
                reference=reference, test=EvalData(dataset.x_test, dataset.y_test), compute=thread_compute,
                on_record=record_round, start_round=start, accept_new_peers=True, say=say,
                attack=cfg.attack,  # a drill: it learns honestly and lies in what it shares
                min_peers=(max(1, len(cfg.peers), cfg.degree if cfg.discover else 0)
                           if cfg.min_peers is None else cfg.min_peers),
                start_timeout=cfg.start_timeout,
                status_extra={"name": label, "shard": f"{cfg.shard}/{cfg.shards}", "addrs": transport.addrs,
                              "resumed_from": start})
            transport.status = node.status
            on_start(transport.addrs, start)
            async with node:
                if not cfg.discover:
                    return await node.run()
                async with trio.open_nursery() as nursery:  # discovery lives exactly as long as the rounds
                    finder = MdnsNeighbours(transport, degree=cfg.degree, introduce=node.introduce,
                                            allow=cfg.policy.allow, psk=cfg.psk, say=say or log.info)
                    nursery.start_soon(finder.run)
                    records = await node.run()
                    nursery.cancel_scope.cancel()
                return records
    finally:
        metrics.close()
