"""Real `p2pfl node` processes on an emulated LAN (network namespaces, a bridge, tc), against the simulation.

    sudo python scripts/lan_emulation.py --nodes 8 --latency 50ms --jitter 10ms --loss 2% --rate 10mbit --rounds 20
    sudo python scripts/lan_emulation.py --nodes 8 --cut 3@8+5            # node 3's cable out at round 8, for 5 rounds
    sudo python scripts/lan_emulation.py --nodes 8 --discover mdns --degree 3   # no --peers: mDNS finds them
    sudo python scripts/lan_emulation.py --cleanup                        # remove what a killed run left

Node i (shard i of n, the scenario's topology on n nodes) runs in its own namespace at 10.77.0.(i+1);
`p2pfl.lan.EmulatedLan` makes the namespaces and removes them on exit, Ctrl-C and errors included. At
the end the merged metrics are compared with the simulation of the same scenario, nodes and rounds
(`--no-sim` to skip it). A kernel without netem (sch_netem) cannot delay or drop: `--partial` runs with
what it can (the rate, by tbf) and the JSON says what was not applied. Writes
scripts/results/lan_emulation.json and a row in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from benchrows import add_rows, commit, machine  # noqa: E402  (scripts/ is on sys.path when a script runs)
from p2pfl import assemble, lan, shipped  # noqa: E402
from p2pfl.config import load_scenario, parse_sets  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.launch import Launch, latest_round, merge, node_records, plan_nodes  # noqa: E402
from p2pfl.sim import Simulation  # noqa: E402

PORT = 4001


def parse_cut(text: str) -> tuple[int, int, int]:
    """'3@8+5' -> (node 3, at round 8, for 5 rounds)."""
    try:
        node, rest = text.split("@")
        at, rounds = rest.split("+")
        return int(node), int(at), int(rounds)
    except ValueError:
        raise SystemExit(f"--cut {text!r}: expected NODE@ROUND+ROUNDS, e.g. 3@8+5") from None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", nargs="?", default=None, help="scenario (default: the quickstart)")
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--latency", default="0ms", help="one-way delay added on each node's link, e.g. 50ms")
    ap.add_argument("--jitter", default="0ms")
    ap.add_argument("--loss", default="0%")
    ap.add_argument("--rate", default="", help="e.g. 10mbit")
    ap.add_argument("--partial", action="store_true", help="without netem in the kernel, apply only the rate")
    ap.add_argument("--cut", action="append", default=[], metavar="NODE@ROUND+ROUNDS")
    ap.add_argument("--discover", choices=["mdns"], help="no --peers: the nodes find each other on the bridge")
    ap.add_argument("--degree", type=int, help="with --discover: neighbours each node keeps (default: p2pfl node's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before the run is stopped as failed")
    ap.add_argument("--no-sim", action="store_true", help="skip the simulation to compare with")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "lan_emulation.json"))
    ap.add_argument("--cleanup", action="store_true", help="remove leftover p2pfl-lan-* namespaces, then exit")
    args = ap.parse_args()
    if (why := lan.available()) is not None:
        raise SystemExit(f"lan_emulation: {why}")
    if args.cleanup:
        print("removed:", ", ".join(lan.remove_stale()) or "nothing")
        return 0
    netem = lan.Netem(lan.parse_ms(args.latency), lan.parse_ms(args.jitter), lan.parse_pct(args.loss), args.rate)
    cuts = [parse_cut(c) for c in args.cut]
    path = shipped.scenario(args.scenario)
    sets = [*args.set, f"topology.nodes={args.nodes}"]
    s = load_scenario(path, parse_sets(sets) | {"rounds": args.rounds})
    topology = assemble.topology(s)
    result = {"command": "python scripts/lan_emulation.py " + shlex.join(sys.argv[1:]),
              "date": dt.date.today().isoformat(), "machine": machine(), "commit": commit(), "scenario": str(path),
              "nodes": args.nodes, "rounds": args.rounds, "netem": dataclasses.asdict(netem), "cuts": [],
              "discover": args.discover}
    with tempfile.TemporaryDirectory(prefix="p2pfl-lan-") as tmp, \
            lan.EmulatedLan(args.nodes, netem=netem, partial=args.partial) as net:
        result["applied"] = net.applied
        hosts = {name: f"{net.address(i)}:{PORT}" for i, name in enumerate(topology.names)}
        extra = (("--discover", "mdns") + (("--degree", str(args.degree)) if args.degree is not None else ())
                 if args.discover else ())
        plans = plan_nodes(dataclasses.replace(topology, hosts=hosts), Path(tmp), scenario=str(path),
                           rounds=args.rounds, overrides=tuple(args.set), prefix=net.prefix, extra=extra,
                           dial=not args.discover)
        started = time.monotonic()
        pending = sorted(cuts, key=lambda c: c[1])
        restores: list[tuple[int, int]] = []

        def tick(launch: Launch) -> None:
            front = max((latest_round(p) for p in plans), default=0)
            while pending and pending[0][1] <= front:
                node, at, length = pending.pop(0)
                net.cut(node)
                result["cuts"].append({"node": node, "cut_at_round": front, "time_s": time.monotonic() - started})
                restores.append((node, front + length))
            for node, until in list(restores):
                if front >= until:
                    net.restore(node)
                    restores.remove((node, until))
                    result["cuts"][-1] |= {"restored_at_round": front}
            line = " ".join(f"{p.name}:{latest_round(p)}" for p in plans)
            print(f"\r{time.monotonic() - started:6.0f}s  {line}", end="", flush=True)

        with Launch(plans) as launch:
            launch.wait(on_tick=tick, tick=1.0, timeout=args.timeout)
        print()
        result["exit_codes"] = launch.exit_codes()
        result["wall_s"] = time.monotonic() - started
        summary = merge(plans, args.rounds)
        result["real"] = {"personal": summary["personal"]["mean"], "global": summary["global"]["mean"],
                          "rounds_done": {p.name: latest_round(p) for p in plans}}
        for c in result["cuts"]:  # the cut node: one process all along, and knowledge again after the restore
            recs = node_records(plans[c["node"]])
            after = [r for r in recs if r["round"] > c.get("restored_at_round", 10**9)]
            c["contributors_after_restore"] = max((r["contributors"] for r in after), default=0)
        result["neighbours"] = {p.name: max((r.get("neighbours_up", 0) for r in node_records(p)), default=0)
                                for p in plans}
    if not args.no_sim:
        sim = Simulation(s, run_dir=None).run().summary
        result["sim"] = {"personal": sim["personal"]["mean"], "global": sim["global"]["mean"]}
        result["real_vs_sim"] = {k: result["real"][k] - result["sim"][k] for k in ("personal", "global")}
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    ok = all(code == 0 for code in result["exit_codes"].values())
    vs = result.get("real_vs_sim", {})
    add_rows(ROOT / "BENCHMARKS.md", "<!-- lan_emulation rows -->",
             "### Real nodes on an emulated LAN (`scripts/lan_emulation.py`): namespaces, a bridge, tc\n\n"
             "| date | scenario | nodes, rounds | link (as applied) | cuts | discovery | all exited 0 | personal "
             "| global | vs simulation (personal / global) | wall | JSON |\n|---|---|---|---|---|---|---|---|---|---|---|---|",
             [f"| {result['date']} | {Path(str(path)).stem} | {args.nodes}, {args.rounds} | {result['applied']} "
              f"| {json.dumps(result['cuts'])} | {args.discover or '--peers'} | {ok} | {result['real']['personal']:.3f} "
              f"| {result['real']['global']:.3f} | {vs.get('personal', float('nan')):+.3f} / "
              f"{vs.get('global', float('nan')):+.3f} | {result['wall_s']:.0f} s | {Path(args.out).name} |"])
    print(json.dumps({k: v for k, v in result.items() if k not in ("command", "machine")}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
