"""Liveness and memory of a real node under hostile peers, over libp2p on 127.0.0.1.

    python scripts/bench_hostile.py                      # every behaviour, 30 s each
    python scripts/bench_hostile.py --seconds 20 --behaviours tarpit sybils

Two honest `p2pfl node` processes, "target" (which lets strangers in: --accept-any, the worst case)
and its neighbour "honest", train on tiny synthetic data. After an undisturbed window, this process
attaches each hostile behaviour to the target for `--seconds`, with a fresh identity each time:

    tarpit      a compatible hello, then it never reads or acknowledges anything the target sends
    hello-loop  its hello again every 0.25 s, forever, and no knowledge
    slice-flood logits frames as fast as it can, each about a new slice (another ref_start)
    sybils      14 identities at once, each with 8 knowledge streams open and frames on them
    mass        parameter frames with the largest push-sum mass the wire allows, and one past it (the
                target is a logits node: refused by kind or by the wire; push-sum mass on a parameter
                node is tested on the memory transport, tests/test_hostile.py)
    max-round   knowledge for round 2^63 - 1, then more

Per window: whether the target is alive, the honest neighbour's rounds per second against the
undisturbed window, the target's peak RSS against its undisturbed peak, and what the target counted
(its status: rejected by reason). Writes scripts/results/bench_hostile.json and a table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import multiaddr
import numpy as np
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr

ROOT = Path(__file__).resolve().parent.parent

from benchrows import add_rows, commit, machine  # noqa: E402  (scripts/ is on sys.path when a script runs)
from p2pfl import assemble, codecs, wire  # noqa: E402
from p2pfl.codecs import Encoded  # noqa: E402
from p2pfl.config import load_scenario, parse_sets  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.launch import Launch, plan_nodes  # noqa: E402
from p2pfl.topology import Topology, make_topology  # noqa: E402
from p2pfl.transport.libp2p import PROTOCOLS, peer_id_of, query_status  # noqa: E402

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
# small, fast rounds on synthetic data (a few a second: slower than the transport's flood limit of an honest
# peer's frames, faster than any real run) so that what a hostile peer costs the loop shows
TINY = {
    "data.source": "synthetic", "data.samples": 800, "data.partition": "shards:2", "profiles": ["mlp"],
    "embed_dim": 16, "reference.source": "synthetic", "reference.size": 400, "reference.slice_size": 200,
    "train.warmup_steps": 20, "train.local_steps": 100, "train.batch_size": 32, "train.kd_batch_size": 100,
    "gossip.wait_timeout": 2.0,
}
BEHAVIOURS = ("tarpit", "hello-loop", "slice-flood", "sybils", "mass", "max-round")


class Peer:
    """One hostile identity connected to the target (a libp2p host of our own)."""

    def __init__(self, target: str, facts: dict):
        self.key = create_new_key_pair()
        self.me = peer_id_of(self.key)
        self.info = info_from_p2p_addr(multiaddr.Multiaddr(target))
        self.facts = facts
        self.host = new_host(key_pair=self.key, muxer_preference="YAMUX")

    def hello(self) -> bytes:
        f = self.facts
        return wire.frame(wire.encode(wire.Hello(
            node_id=self.me, version=wire.PROTOCOL_VERSION, arch="mlp", mode=f["mode"], num_classes=f["classes"],
            ref_digest=f["digest"], codecs=("fp32",), param_count=0, incarnation=1)))

    def logits(self, round_idx: int, start: int, rows: int, rng: np.random.Generator) -> bytes:
        c = self.facts["classes"]
        payload = Encoded("fp32", (rows, c), rng.normal(size=(rows, c)).astype(np.float32).tobytes())
        return wire.frame(wire.encode(wire.Knowledge(
            sender=self.me, round=round_idx, time=0.0, kind="logits", ref_start=start, ref_count=rows,
            payload=payload, label_counts=(10,) * c, samples=10 * c, val_acc=0.0)))

    def params(self, round_idx: int, mass: float) -> wire.Knowledge:
        return wire.Knowledge(
            sender=self.me, round=round_idx, time=0.0, kind="params", ref_start=0, ref_count=0,
            payload=codecs.encode(np.zeros(16, np.float32), "fp32"), label_counts=(), samples=100, val_acc=0.0,
            mass=mass)

    async def stream(self, family: str, data: bytes = b""):
        s = await self.host.new_stream(self.info.peer_id, [PROTOCOLS[family]])
        if data:
            await s.write(data)
        return s


async def never_read(stream) -> None:
    await trio.sleep_forever()


async def read_and_ack(stream) -> None:
    """An honest-looking receiver: reads everything, acknowledges hello frames (not a tarpit)."""
    decoder = wire.FrameDecoder()
    try:
        while True:
            decoder.feed(await stream.read(65536))
            while decoder.next_frame() is not None:
                if stream.get_protocol() == PROTOCOLS["hello"]:
                    await stream.write(b"\x06")
    except Exception:  # the target closed or reset it: nothing to do
        return


async def behave(kind: str, target: str, facts: dict, seconds: float) -> None:
    """Run hostile behaviour `kind` against `target` for `seconds` (errors of our own streams ignored:
    the target is expected to reset them)."""
    rng = np.random.default_rng(0)
    peers = [Peer(target, facts) for _ in range(14 if kind == "sybils" else 1)]
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for p in peers:
                nursery.start_soon(_one, kind, p, rng, facts)


async def _one(kind: str, p: Peer, rng: np.random.Generator, facts: dict) -> None:
    handler = never_read if kind == "tarpit" else read_and_ack
    for protocol in PROTOCOLS.values():
        p.host.set_stream_handler(protocol, handler)
    async with p.host.run([multiaddr.Multiaddr(LOOPBACK)]):
        try:
            await p.host.connect(p.info)
            hello = await p.stream("hello", p.hello())
            if kind == "tarpit":
                await trio.sleep_forever()
            elif kind == "hello-loop":
                while True:
                    await trio.sleep(0.25)
                    await hello.write(p.hello())
            elif kind == "slice-flood":
                s = await p.stream("knowledge")
                for i in range(10**9):
                    start = int(rng.integers(0, facts["reference_size"]))
                    await s.write(p.logits(1 + i // 50, start, 1, rng))
                    await trio.sleep(0.005)
            elif kind == "sybils":
                streams = [await p.stream("knowledge") for _ in range(8)]
                for i in range(10**9):
                    for s in streams:
                        await s.write(p.logits(1 + i, 0, facts["slice"], rng))
                    await trio.sleep(0.5)
            elif kind == "mass":
                s = await p.stream("knowledge")
                over = msgpack.unpackb(wire.encode(p.params(1, 1.0)))
                over["w"] = 1e300  # past the wire's limit
                await s.write(wire.frame(msgpack.packb(over)))
                for i in range(10**9):
                    await s.write(wire.frame(wire.encode(p.params(1 + i, wire.MAX_MASS))))
                    await trio.sleep(0.2)
            elif kind == "max-round":
                s = await p.stream("knowledge")
                for i in range(10**9):
                    await s.write(p.logits(2**63 - 1 if i % 2 == 0 else 1 + i, 0, facts["slice"], rng))
                    await trio.sleep(0.2)
        except Exception:  # reset by the target (flood, refused): it stops us, which is the point
            await trio.sleep_forever()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def window(name: str, launch: Launch, plans, seconds: float, disturb) -> dict:
    """One measured window: `disturb()` runs meanwhile (None: undisturbed)."""
    target, honest = plans
    pid = launch.procs[target.name].pid
    start = (await query_status(honest.addr))["round"]
    t0, peak = time.monotonic(), rss_kib(pid)
    async with trio.open_nursery() as nursery:
        if disturb is not None:
            nursery.start_soon(disturb)
        while time.monotonic() - t0 < seconds:
            await trio.sleep(0.5)
            if launch.procs[target.name].poll() is not None:
                break
            peak = max(peak, rss_kib(pid))
        nursery.cancel_scope.cancel()
    alive = launch.procs[target.name].poll() is None
    end = (await query_status(honest.addr))["round"]
    rejected = (await query_status(target.addr))["rejected"] if alive else {}
    return {"behaviour": name, "alive": alive, "honest_rounds_per_s": (end - start) / (time.monotonic() - t0),
            "target_peak_rss_mib": peak / 1024, "target_rejected": rejected}


async def main_async(args) -> dict:
    sets = tuple(f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TINY.items()) + tuple(args.set)
    scenario = load_scenario(None, parse_sets(list(sets)))
    data, reference = assemble.data_and_reference(scenario)
    facts = {"mode": scenario.mode, "classes": data.num_classes, "digest": reference.digest,
             "reference_size": reference.size, "slice": scenario.reference.slice_size}
    with tempfile.TemporaryDirectory() as tmp:
        topo = Topology.from_graph("pair", make_topology("line", 2))
        port = 30_000 + os.getpid() % 20_000
        plans = plan_nodes(topo, Path(tmp), rounds=10**6, overrides=sets, base_port=port)
        plans[0] = dataclasses.replace(plans[0], argv=plans[0].argv + ("--accept-any",))
        with Launch(plans) as launch:
            with trio.fail_after(120):  # both up and past their first rounds
                while True:
                    try:
                        if (await query_status(plans[1].addr, timeout=2))["round"] >= 3:
                            break
                    except Exception:
                        pass
                    await trio.sleep(1)
            rows = [await window("undisturbed", launch, plans, args.seconds, None)]
            print(json.dumps(rows[-1]), flush=True)
            for kind in args.behaviours:
                rows.append(await window(kind, launch, plans, args.seconds,
                                         lambda kind=kind: behave(kind, plans[0].addr, facts, args.seconds)))
                print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def main() -> None:
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # its dial retries while the nodes start are expected
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--behaviours", nargs="+", choices=BEHAVIOURS, default=list(BEHAVIOURS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="logits modes only (the frames are logits)")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_hostile.json"))
    args = ap.parse_args()
    out = trio.run(main_async, args)
    base = out["rows"][0]
    for r in out["rows"]:
        r["round_rate_kept"] = r["honest_rounds_per_s"] / base["honest_rounds_per_s"] if base["honest_rounds_per_s"] else math.nan
        r["rss_over_undisturbed_mib"] = r["target_peak_rss_mib"] - base["target_peak_rss_mib"]
    command = "python scripts/bench_hostile.py " + shlex.join(sys.argv[1:])
    out |= {"command": command, "date": dt.date.today().isoformat(), "machine": machine(), "commit": commit(), "seconds": args.seconds}
    atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")
    table = [f"| {out['date']} | {r['behaviour']} | {'yes' if r['alive'] else '**no**'} | {r['honest_rounds_per_s']:.2f} "
             f"| {r['round_rate_kept']:.0%} | {r['target_peak_rss_mib']:.0f} MiB | {r['rss_over_undisturbed_mib']:+.0f} MiB "
             f"| {', '.join(f'{k} {v}' for k, v in sorted(r['target_rejected'].items())) or '-'} |" for r in out["rows"]]
    add_rows(ROOT / "BENCHMARKS.md", "<!-- bench_hostile rows -->",
             "### Hostile peers on a real node (`scripts/bench_hostile.py`): liveness and memory\n\n"
             f"Machine: {machine()}. Command: `{command}` ({args.seconds:.0f} s per window; the target's counters "
             "are cumulative).\n\n| date | behaviour | target alive | honest neighbour rounds/s | of undisturbed "
             "| target peak RSS | vs undisturbed | target rejected (so far) |\n|---|---|---|---|---|---|---|---|", table)
    print(f"wrote {args.out} and a table in BENCHMARKS.md")


if __name__ == "__main__":
    main()
