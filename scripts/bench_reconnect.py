"""How soon a real node hears its neighbours again after its cable is put back.

    sudo python scripts/bench_reconnect.py                      # cables out 8, 20 and 45 s, twice each
    sudo python scripts/bench_reconnect.py --cuts 60 --repeats 3

Three `p2pfl node` processes in a ring on an emulated LAN (`p2pfl.lan.EmulatedLan`, the rate limit only:
this is about connections, not bandwidth). Once the front reaches round 3, node 1's bridge port goes down
for the given wall-clock seconds: no reset reaches either end, so both keep a connection that looks alive.
Measured: seconds from the restore until node 1 logs a round with bytes received (`null`: not within
`--give-up` seconds). Writes scripts/results/bench_reconnect.json and a row in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent

from benchrows import add_rows, commit, machine  # noqa: E402  (scripts/ is on sys.path when a script runs)
from p2pfl import lan  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.launch import CableCut, Launch, plan_nodes  # noqa: E402
from p2pfl.topology import Topology  # noqa: E402

# small models and data, rounds of about half a second with three processes on two cores
SETS = ("profiles=[\"mlp\",\"cnn1d\"]", "embed_dim=16", "data.source=synthetic", "data.samples=800",
        "reference.source=synthetic", "reference.size=400", "reference.slice_size=200",
        "train.warmup_steps=20", "train.local_steps=200", "gossip.wait_timeout=2.0")


def one_cut(cut_s: float, give_up_s: float) -> dict:
    names = ("n0", "n1", "n2")
    with tempfile.TemporaryDirectory(prefix="p2pfl-reconnect-") as tmp, \
            lan.EmulatedLan(3, netem=lan.Netem(rate="10mbit"), partial=True) as net:
        topo = Topology("ring", nx.cycle_graph(3), names, {n: f"{net.address(i)}:4001" for i, n in enumerate(names)})
        plans = plan_nodes(topo, Path(tmp), rounds=100_000, overrides=SETS, prefix=net.prefix)
        drill = CableCut(net, plans, node=1, for_s=cut_s)

        def tick(launch: Launch) -> None:
            drill.tick(launch)
            if drill.heard_after_s is not None or (drill.back_at and time.monotonic() - drill.back_at > give_up_s):
                launch.stop_all()

        with Launch(plans) as launch:
            launch.wait(on_tick=tick, tick=0.1, timeout=cut_s + give_up_s + 300)
        return {"cut_s": cut_s, "heard_after_s": drill.heard_after_s,
                "rounds_alone": drill.back_round - drill.at_round if drill.back_at else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", type=float, nargs="+", default=[8.0, 20.0, 45.0], help="seconds the cable is out")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--give-up", type=float, default=90.0, help="seconds after the restore before giving up")
    ap.add_argument("--label", default="", help="what this run measures (e.g. a commit), for the table")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_reconnect.json"))
    args = ap.parse_args()
    if (why := lan.available()) is not None:
        raise SystemExit(f"bench_reconnect: {why}")
    runs = []
    for cut_s in args.cuts:
        for _ in range(args.repeats):
            runs.append(one_cut(cut_s, args.give_up))
            print(json.dumps(runs[-1]), flush=True)
    result = {"command": "python scripts/bench_reconnect.py " + shlex.join(sys.argv[1:]),
              "date": dt.date.today().isoformat(), "machine": machine(), "commit": commit(), "label": args.label, "runs": runs}
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")

    def cell(cut_s: float) -> str:
        times = [r["heard_after_s"] for r in runs if r["cut_s"] == cut_s]
        heard = [t for t in times if t is not None]
        worst = "not heard" if len(heard) < len(times) else f"{max(heard):.1f}"
        return f"{statistics.median(heard):.1f} / {worst}" if heard else "not heard"

    add_rows(ROOT / "BENCHMARKS.md", "<!-- bench_reconnect rows -->",
             "### A cable put back (`scripts/bench_reconnect.py`): seconds until the cut node hears its "
             "neighbours again (median / worst)\n\n| date | code | " + " | ".join(f"cut {c:.0f} s" for c in args.cuts)
             + " | runs each | JSON |\n|---|---|" + "---|" * len(args.cuts) + "---|---|",
             [f"| {result['date']} | {args.label or 'this commit'} | " + " | ".join(cell(c) for c in args.cuts)
              + f" | {args.repeats} | {Path(args.out).name} |"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
