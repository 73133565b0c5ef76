"""Start one real `p2pfl node` process per node of a topology, watch them, merge their metrics.

    python scripts/launch_local.py topologies/ring-8.toml --rounds 30
    python scripts/launch_local.py ring --nodes 4 --rounds 5 --set data.samples=2000
    python scripts/launch_local.py topologies/lan-example.toml --print     # per-host commands for a LAN
    python scripts/launch_local.py topologies/ring-8.toml --kill 2 --kill-at 10 --restart-at 15

Every process gets --peers from the graph and its own state dir under runs/launch-<name>/; a rerun
is a fresh run in runs/launch-<name>-2/, -3, ... (new identities, round 0), and --resume continues
the latest of them from its nodes' checkpoints. Ctrl-C stops them all (bye to neighbours, metrics
flushed). At the end: the summary table of a simulation (`p2pfl sim` prints the same one), the run
folder's summary.json and --json.
--kill K: SIGKILL K nodes (no bye, no flush) once every node finished round --kill-at, and start
them again with the same state dir once every other node finished round --restart-at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pfl.cli import print_error, print_summary  # noqa: E402
from p2pfl.config import load_scenario, parse_sets  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.launch import Launch, choose_run_dir, commands_by_host, latest_round, merge, plan_nodes  # noqa: E402
from p2pfl.topology import Topology, load_topology, make_topology  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("topology", help="a topology file, or a generator name with --nodes")
    ap.add_argument("--nodes", type=int, help="nodes, when TOPOLOGY is a generator name")
    ap.add_argument("--scenario", default=str(ROOT / "sim" / "quickstart.toml"))
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="scenario override for every node")
    ap.add_argument("--base-port", type=int, default=4001)
    ap.add_argument("--psk-file")
    ap.add_argument("--run-dir", help="default runs/launch-<topology name> (a rerun: the same with -2, -3, ...)")
    ap.add_argument("--resume", action="store_true", help="continue the latest run folder of this name "
                                                          "from its checkpoints instead of starting a fresh one")
    ap.add_argument("--print", action="store_true", help="print each host's commands instead of starting them")
    ap.add_argument("--kill", type=int, default=0, metavar="K", help="crash K nodes (SIGKILL) during the run")
    ap.add_argument("--kill-at", type=int, default=10, metavar="R")
    ap.add_argument("--restart-at", type=int, default=15, metavar="R")
    ap.add_argument("--timeout", type=float, default=3600.0, help="stop everything after this many seconds")
    ap.add_argument("--json", metavar="PATH", help="write the merged summary here")
    args = ap.parse_args(argv)
    console = Console(highlight=False)
    try:  # bad input: one line, exit 2 (as `p2pfl`); nothing is started yet
        topology, scenario, run_dir, done = prepare(ap, args)
    except ValueError as e:  # ConfigError, TopologyError and the rest of bad input derive from it
        print_error(e)
        return 2
    shown = _shown(run_dir)
    if done is None:
        console.print(f"fresh run in {shown}")
    else:
        console.print(f"resuming {shown} after round {done}"
                      + (f" (all {scenario.rounds} rounds were done: nothing left to train)" if done >= scenario.rounds else ""))
    plans = plan_nodes(topology, run_dir, scenario=args.scenario, rounds=args.rounds, overrides=tuple(args.set),
                       base_port=args.base_port, psk_file=args.psk_file)
    if args.print:
        for host, lines in commands_by_host(plans).items():
            console.print(f"# on {host} (copy {run_dir}/<name>/identity.key into each --state-dir first)")
            for line in lines:
                console.print(line, soft_wrap=True)
        return 0

    victims = [p.name for p in plans[1::max(1, len(plans) // max(args.kill, 1))][:args.kill]]
    state = {"killed": False, "restarted": False}
    wall = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console) as progress:
        task = progress.add_task(f"{topology.name}: {len(plans)} processes", total=len(plans) * scenario.rounds,
                                 status="starting")

        def on_tick(launch: Launch) -> None:
            rounds = {p.name: latest_round(p) for p in plans}
            progress.update(task, completed=sum(rounds.values()), status=(
                f"rounds {min(rounds.values())}..{max(rounds.values())}  running {len(launch.running())}"))
            if victims and not state["killed"] and min(rounds.values()) >= args.kill_at:
                for name in victims:
                    launch.kill(name)
                state["killed"] = True
                progress.console.print(f"killed {', '.join(victims)} (SIGKILL) after round {args.kill_at}")
            others = [r for name, r in rounds.items() if name not in victims]
            if state["killed"] and not state["restarted"] and others and min(others) >= args.restart_at:
                for p in plans:
                    if p.name in victims:
                        launch.start(p)
                state["restarted"] = True
                progress.console.print(f"restarted {', '.join(victims)} once every other node finished round "
                                       f"{args.restart_at} (they are at {min(others)}..{max(others)})")

        with Launch(plans) as launch:
            try:
                launch.wait(on_tick=on_tick, timeout=args.timeout)
            except KeyboardInterrupt:
                progress.console.print("Ctrl-C: stopping every node")
    summary = merge(plans, scenario.rounds)
    summary |= {"name": f"launch-{topology.name}", "mode": scenario.mode, "seed": scenario.seed,
                "wall_time_s": time.perf_counter() - wall, "exit_codes": launch.exit_codes(),
                "events": launch.events, "peer_ids": {p.name: p.peer_id for p in plans}}
    if summary.get("nodes"):
        print_summary(console, summary, None)
    console.print(f"per node: {run_dir}/<name>/metrics.jsonl and node.log  summary: {run_dir}/summary.json")
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2, default=str))
    failed = {k: v for k, v in launch.exit_codes().items() if v not in (0, None)}
    if failed:
        console.print(f"[red]nodes that exited with an error:[/red] {escape(f'{failed} (see {run_dir}/<name>/node.log)')}")
    return 1 if failed else 0


def prepare(ap: argparse.ArgumentParser, args: argparse.Namespace):
    """(topology, scenario, run folder, round to resume after or None): everything checked before a process starts."""
    if Path(args.topology).exists():
        topology = load_topology(args.topology)
    else:
        if args.nodes is None:
            ap.error(f"--nodes is required to generate {args.topology!r} (or pass a topology file)")
        topology = Topology.from_graph(f"{args.topology}-{args.nodes}", make_topology(args.topology, args.nodes))
    overrides = parse_sets(args.set)
    scenario = load_scenario(args.scenario, overrides | ({"rounds": args.rounds} if args.rounds else {}))
    base = Path(args.run_dir) if args.run_dir else ROOT / "runs" / f"launch-{topology.name}"
    run_dir, done = choose_run_dir(base.parent, base.name, resume=args.resume)
    return topology, scenario, run_dir, done


def _shown(path: Path) -> str:
    """A run folder as a person would type it: relative to the current directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
