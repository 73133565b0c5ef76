"""Privacy: accuracy and bytes against the epsilon each node's release is held to (DP-SGD, opacus's RDP accountant).

    python scripts/bench_privacy.py                                   # quickstart, epsilon 1 2 4 8 inf, and local
    python scripts/bench_privacy.py --epsilons 8 --rounds 30 --jobs 2

For each epsilon: the scenario with `privacy.epsilon` at it (inf: no privacy) at `privacy.delta`, the
nodes' final personal and global means, bytes per node per round and the largest epsilon any node
spent (the accountant's). `--local` adds the local baseline (no sharing, no privacy) the bar is
measured against. Writes scripts/results/bench_privacy.json and a table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from benchrows import add_rows, commit, machine, save_figure  # noqa: E402  (scripts/ is on sys.path when a script runs)
from p2pfl import shipped  # noqa: E402
from p2pfl.config import load_scenario, parse_sets  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.sim import Simulation  # noqa: E402


def run(scenario_path, overrides: dict, epsilon: float | None) -> dict:
    """One run at `epsilon` (None: the local baseline)."""
    over = overrides | ({"mode": "local"} if epsilon is None else {"privacy.epsilon": epsilon})
    s = load_scenario(scenario_path, over)
    summary = Simulation(s, run_dir=None).run().summary
    return {"epsilon": "local" if epsilon is None else epsilon, "delta": s.privacy.delta,
            "personal": summary["personal"]["mean"], "global": summary["global"]["mean"],
            "global_worst10": summary["global"]["worst_decile"],
            "bytes_per_node_per_round": summary["bytes_per_node_per_round"],
            "epsilon_spent_max": summary.get("epsilon_spent", {}).get("max"), "wall_s": summary["wall_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", nargs="?", default=None, help="scenario (default: the quickstart)")
    ap.add_argument("--epsilons", nargs="+", type=float, default=[1, 2, 4, 8, math.inf])
    ap.add_argument("--local", action="store_true", help="also the local baseline")
    ap.add_argument("--rounds", type=int, default=None, help="default: the scenario's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side, one process each (one core each)")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_privacy.json"))
    ap.add_argument("--curve-from", nargs="+", metavar="JSON",
                    help="run nothing: draw the accuracy-epsilon curve of these runs' rows (one scenario) as a PNG "
                         "beside the first")
    args = ap.parse_args()
    if args.curve_from:
        rows = [r for p in args.curve_from for r in json.loads(Path(p).read_text())["rows"]]
        plot(rows, Path(args.curve_from[0]).with_suffix(".png"))
        return
    path = shipped.scenario(args.scenario)
    overrides = parse_sets(args.set) | ({"rounds": args.rounds} if args.rounds else {})
    grid = [None] * args.local + list(args.epsilons)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = []
        for row in pool.map(run, [path] * len(grid), [overrides] * len(grid), grid):
            rows.append(row)
            print(json.dumps(row), flush=True)
    rounds = load_scenario(path, overrides).rounds
    command = "python scripts/bench_privacy.py " + shlex.join(sys.argv[1:])
    out = {"command": command, "date": dt.date.today().isoformat(), "machine": machine(), "commit": commit(), "scenario": str(path),
           "rounds": rounds, "rows": rows}
    atomic_write_text(Path(args.out), json.dumps(out, indent=1, default=str) + "\n")
    label = "; ".join([Path(str(path)).stem, *args.set])
    table = [f"| {out['date']} | {label}, {rounds} rounds | {r['epsilon']} | {r['delta']:g} | {r['personal']:.3f} "
             f"| {r['global']:.3f} | {r['global_worst10']:.3f} | {r['bytes_per_node_per_round'] / 1e3:.1f} KB "
             f"| {'-' if r['epsilon_spent_max'] is None else format(r['epsilon_spent_max'], '.3f')} "
             f"| {r['wall_s']:.0f} s |" for r in rows]
    add_rows(ROOT / "BENCHMARKS.md", "<!-- bench_privacy rows -->",
             "### Privacy (`scripts/bench_privacy.py`): DP-SGD on private samples, opacus RDP accountant\n\n"
             f"Machine: {machine()}. Commands and notes in each JSON (scripts/results/bench_privacy*.json).\n\n"
             "| date | scenario | epsilon | delta | personal | global | global worst 10% | bytes / node / round "
             "| epsilon spent (max node) | wall |\n|---|---|---|---|---|---|---|---|---|---|", table)
    print(f"wrote {args.out} and a table in BENCHMARKS.md")


def plot(rows: list[dict], path: Path) -> None:
    """Global and personal accuracy against epsilon (log scale; no privacy drawn at the right edge), with
    the local baseline and the issue's bar (global >= local + 0.10) as lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    private = sorted((r for r in rows if isinstance(r["epsilon"], (int, float)) and math.isfinite(r["epsilon"])),
                     key=lambda r: r["epsilon"])
    free = [r for r in rows if r["epsilon"] in (math.inf, "inf", "Infinity")]
    local = [r for r in rows if r["epsilon"] == "local"]
    eps = [r["epsilon"] for r in private]
    edge = 2 * max(eps) if eps else 16.0  # where "no privacy" is drawn
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for key, colour in (("global", "tab:blue"), ("personal", "tab:orange")):
        ax.plot(eps, [r[key] for r in private], "o-", color=colour, label=f"{key}, DP-SGD at epsilon")
        if free:
            ax.plot([edge], [free[0][key]], "s", color=colour, label=f"{key}, no privacy")
        if local:
            ax.axhline(local[0][key], color=colour, ls="--", lw=0.8, label=f"{key}, each node alone")
    if local:
        ax.axhline(local[0]["global"] + 0.10, color="grey", ls=":", lw=0.8, label="bar: global >= local + 0.10")
    ax.set_xscale("log", base=2)
    ax.set_xticks(eps + [edge], [f"{e:g}" for e in eps] + ["inf"])
    ax.set_xlabel("epsilon per node over the whole run (delta 1e-5)")
    ax.set_ylabel("final accuracy (mean over nodes)")
    ax.set_title("privacy: what the (epsilon, delta)-DP release costs")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
