"""Robustness: honest nodes' accuracy with attackers among them, with and without a defence.

    python scripts/bench_robustness.py                                        # the default grid
    python scripts/bench_robustness.py --rounds 15 --attacks shift+inflate invert --shares 0.2 --defences none claims
    python scripts/bench_robustness.py --attacks shift --shares 0.2 --neighbours 2 --reuse scripts/results/a.json

For each attack x attacker share x defence: the scenario (default the quickstart) with that share of
its nodes attacking (`[[attack]]`, a seeded choice), or (`--neighbours K`) enough attackers that every
honest node has K attacking neighbours, and the honest nodes' final personal and global means and worst
decile; share 0 is the clean run of each defence. `--reuse` takes the rows an earlier JSON of the same
scenario, settings and rounds already holds instead of running them again (a grid built over several
sittings). Writes scripts/results/bench_robustness.json, a PNG beside it and a table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from benchrows import add_rows, commit, machine, save_figure  # noqa: E402  (scripts/ is on sys.path when a script runs)
from p2pfl import shipped  # noqa: E402
from p2pfl.config import PLACEMENTS, load_scenario, parse_sets  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.sim import Simulation  # noqa: E402


def run(scenario_path, overrides: dict, attack: str | None, share: float | str, defence: str, seed: int,
        place: str = "random") -> dict:
    """One simulation; `share` is a fraction of the nodes, or "K of N" (K attacking neighbours per node)."""
    over = overrides | {"gossip.defence": defence, "seed": seed}
    if attack and isinstance(share, str):
        over["attack"] = [{"kind": attack, "neighbours": int(share.split()[0]), "place": place}]
    elif attack and share > 0:
        over["attack"] = [{"kind": attack, "fraction": share, "place": place}]
    s = load_scenario(scenario_path, over)
    result = Simulation(s, run_dir=None).run()
    honest = result.summary.get("honest", result.summary)
    final, final_personal = {}, {}  # each node's last accuracies, to compare the same honest nodes with a clean run
    for r in result.records:
        if "global_acc" in r:
            final[r["node"]], final_personal[r["node"]] = r["global_acc"], r["personal_acc"]
    return {"attack": attack if attack and share else "none", "share": share, "defence": defence, "seed": seed,
            "attackers": sorted(result.summary.get("attackers", {})),
            "personal": honest["personal"]["mean"], "global": honest["global"]["mean"],
            "personal_worst10": honest["personal"]["worst_decile"], "global_worst10": honest["global"]["worst_decile"],
            "wall_s": result.summary["wall_time_s"], "final_global": final, "final_personal": final_personal}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", nargs="?", default=None, help="scenario (default: the quickstart)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--attacks", nargs="*", default=["shift+inflate", "shift", "uniform", "invert", "reorder",
                                                     "scale", "replay", "echo", "inflate"],
                    help="attacks to run (none given: the clean runs only)")
    ap.add_argument("--shares", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    ap.add_argument("--neighbours", nargs="*", type=int, default=[2],
                    help="also K attacking neighbours per honest node (a cover; 'K of N' in the table)")
    ap.add_argument("--defences", nargs="+", default=["none", "auto"])
    ap.add_argument("--place", choices=PLACEMENTS, default="random", help="where the attackers sit (attack.place)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side, one process each (one core each)")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_robustness.json"))
    ap.add_argument("--table-from", metavar="JSON", help="run nothing: add the table rows of an earlier run's JSON")
    ap.add_argument("--no-table", action="store_true", help="a screen: write the JSON and PNG, not BENCHMARKS.md rows")
    ap.add_argument("--reuse", nargs="*", default=[], metavar="JSON",
                    help="earlier JSONs of this scenario, settings and rounds: their rows are taken, not rerun")
    args = ap.parse_args()
    if args.table_from:
        earlier = json.loads(Path(args.table_from).read_text())
        compare_to_clean(earlier["rows"])
        write_table(earlier, Path(args.table_from))
        plot(earlier["rows"], Path(args.table_from).with_suffix(".png"))
        return
    path = shipped.scenario(args.scenario)
    overrides = parse_sets(args.set) | {"rounds": args.rounds}
    shares = [*args.shares, *(f"{k} of N" for k in args.neighbours)]
    # attack-major, defences side by side: an interrupted grid still compares what it ran
    grid = [(path, overrides, attack, share, defence, seed)
            for attack, share in [(None, 0.0)] + [(a, f) for a in args.attacks for f in shares]
            for defence in args.defences for seed in args.seeds]
    command = "python scripts/bench_robustness.py " + shlex.join(sys.argv[1:])
    out = {"command": command, "date": dt.date.today().isoformat(), "machine": machine(), "commit": commit(),
           "scenario": str(path), "label": "; ".join([Path(str(path)).stem, *args.set]
                                                     + ([f"attackers at {args.place}"] if args.place != "random" else [])),
           "rounds": args.rounds,
           "seeds": args.seeds, "rows": []}
    done = reusable(args.reuse, out)
    todo = [g for g in grid if key(*g[2:]) not in done]
    print(f"{len(grid) - len(todo)} of {len(grid)} runs taken from {', '.join(args.reuse) or 'nowhere'}", flush=True)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        # in grid order, each printed as soon as it and those before are done
        for row in pool.map(run, *zip(*todo), [args.place] * len(todo)) if todo else ():
            row["commit"] = out["commit"]  # each row names its code: a reused one keeps the commit it ran at
            done[key(row["attack"], row["share"], row["defence"], row["seed"])] = row
            out["rows"] = [done[key(*g[2:])] for g in grid if key(*g[2:]) in done]
            print(json.dumps(row), flush=True)
            atomic_write_text(Path(args.out), json.dumps(out | {"complete": False}, indent=1) + "\n")
    out["rows"] = [done[key(*g[2:])] for g in grid]
    compare_to_clean(out["rows"])
    atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")
    if not args.no_table:
        write_table(out, Path(args.out))
    plot(out["rows"], Path(args.out).with_suffix(".png"))


def key(attack: str | None, share: float | str, defence: str, seed: int) -> tuple:
    return (attack or "none") if share else "none", share if attack else 0.0, defence, seed


def reusable(paths: list[str], out: dict) -> dict[tuple, dict]:
    """The rows of earlier JSONs run on the same scenario, settings and rounds, by grid key."""
    rows: dict[tuple, dict] = {}
    for p in paths:
        earlier = json.loads(Path(p).read_text())
        if (earlier["label"], earlier["rounds"]) != (out["label"], out["rounds"]):
            raise SystemExit(f"--reuse {p}: it ran {earlier['label']!r} for {earlier['rounds']} rounds, this grid "
                             f"{out['label']!r} for {out['rounds']}; reuse only runs of the same scenario and rounds")
        # a row from before rows were stamped ran at its JSON's commit, unless that JSON reused it in turn
        ran_at = None if "--reuse" in earlier["command"] else earlier.get("commit")
        rows |= {key(r["attack"], r["share"], r["defence"], r["seed"]): {"commit": ran_at} | r
                 for r in earlier["rows"]}
    return rows


def write_table(out: dict, json_path: Path) -> None:
    table = [f"| {out['date']} | {out['label']}, {out['rounds']} rounds, seeds {' '.join(map(str, out['seeds']))} "
             f"| {g['attack']} | {share_label(g['share'])} | {g['defence']} | {g['personal']:.3f} | {g['personal_kept']:.1%} "
             f"| {g['global']:.3f} | {g['vs_clean']:+.3f} | {g['vs_clean_worst']:+.3f} | {g['global_worst10']:.3f} "
             f"| {json_path.name} |" for g in by_setting(out["rows"])]
    add_rows(ROOT / "BENCHMARKS.md", "<!-- bench_robustness grid rows -->",
             "### Robustness grid (`scripts/bench_robustness.py`): honest nodes only, against the undefended clean run\n\n"
             f"Machine: {out['machine']}. Each row's command is in its JSON (scripts/results/).\n\n"
             "| date | scenario | attack | attackers | defence | personal | of clean personal | global "
             "| global vs clean (same nodes) | worst seed | global worst 10% | JSON |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|", table)
    print(f"wrote {json_path} and a table in BENCHMARKS.md")


def share_label(share: float | str) -> str:
    return share if isinstance(share, str) else f"{share:.0%}"


def plot(rows: list[dict], path: Path) -> None:
    """Honest nodes' global change against the clean run, per attack and attacker share, defended or not."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in by_setting(rows) if g["attack"] != "none"]
    if not groups:  # clean runs only: nothing to draw
        return
    attacks = list(dict.fromkeys(g["attack"] for g in groups))
    settings = list(dict.fromkeys((share_label(g["share"]), g["defence"]) for g in groups))
    value = {(g["attack"], share_label(g["share"]), g["defence"]): g["vs_clean"] for g in groups}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(attacks)), 4.5))
    width = 0.8 / max(1, len(settings))
    for i, (share, defence) in enumerate(settings):
        xs = [a + i * width for a in range(len(attacks))]
        ys = [value.get((att, share, defence), np.nan) for att in attacks]
        ax.bar(xs, ys, width, label=f"{share} attacking, defence {defence}",
               hatch="" if defence != "none" else "//", alpha=0.85)
    ax.axhline(-0.03, color="grey", lw=0.8, ls="--")  # the bar at 20%
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xticks([a + 0.4 - width / 2 for a in range(len(attacks))], attacks, rotation=30, ha="right")
    ax.set_ylabel("honest global accuracy vs clean run")
    ax.set_title("robustness: honest nodes' change against the undefended clean run")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    print(f"wrote {path}")


def compare_to_clean(rows: list[dict]) -> None:
    """Add each row's honest nodes' change against the same nodes in the clean run of the same seed: the
    undefended clean run when the grid has one (what these nodes get with no attacker and no defence),
    else the clean run of the same defence."""
    clean = {(r["defence"], r["seed"]): r for r in rows if r["attack"] == "none"}
    for r in rows:
        base = clean.get(("none", r["seed"])) or clean[r["defence"], r["seed"]]
        same = [n for n in r["final_global"] if n not in r["attackers"]]
        r["vs_clean"] = float(np.mean([r["final_global"][n] - base["final_global"][n] for n in same]))
        r["personal_kept"] = float(np.mean([r["final_personal"][n] for n in same])
                                   / np.mean([base["final_personal"][n] for n in same]))


def by_setting(rows: list[dict]) -> list[dict]:
    """One row per attack x share x defence: the means over seeds, and the worst seed's global change."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["attack"], r["share"], r["defence"]), []).append(r)
    return [{"attack": a, "share": f, "defence": d, "vs_clean_worst": min(r["vs_clean"] for r in rs)}
            | {k: float(np.mean([r[k] for r in rs])) for k in ("personal", "personal_kept", "global", "vs_clean",
                                                               "global_worst10")}
            for (a, f, d), rs in groups.items()]


if __name__ == "__main__":
    main()
