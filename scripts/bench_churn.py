"""Churn, partitions, late joiners and stragglers: what each costs against the undisturbed run of the seed.

    python scripts/bench_churn.py                                  # quickstart, every case, seed 0
    python scripts/bench_churn.py --cases undisturbed churn --seeds 0 1 2 --jobs 2

Cases (node indices of the scenario's topology, n nodes):
    undisturbed          no event
    patience             undisturbed with gossip.patience 0.25 (off by default): what patience costs
    churn                churn.rate 0.2, downtime 3 rounds, half the downs crashes (back from the checkpoint)
    churn-stale-decay    churn, late knowledge weighed by (1 + rounds old)^-1 instead of full weight
    churn-drop-stale     churn, late knowledge dropped (gossip.staleness 0) instead of used at full weight
    partition            nodes 0..n/2-1 and n/2..n-1 split at round 15, healed at 25
    join                 a quarter of the nodes (every 4th) absent until round 25
    straggler            node 5 at a quarter of its speed from the start, gossip.patience 0.25

Per case: final personal / global means, their change against undisturbed, wall time ratio; partition:
each half's personal accuracy change during the split and the global gap to undisturbed at round 40;
join: the rounds each joiner needed to reach the median node's global accuracy; straggler: the other
nodes' rounds per simulated second against undisturbed, the slow node's global accuracy against the
median. Writes scripts/results/bench_churn.json (rewritten after every run) and a table in BENCHMARKS.md.
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

from benchrows import add_rows, commit, machine  # noqa: E402  (scripts/ is on sys.path when a script runs)
from p2pfl import shipped  # noqa: E402
from p2pfl.config import load_scenario, parse_sets  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.sim import Simulation  # noqa: E402

SPLIT, HEAL, CHECK = 15, 25, 40  # partition rounds, and the round it must have recovered by
JOIN = 25
SLOW, SPEED = 5, 0.25


def case_overrides(case: str, n: int) -> dict:
    churn = {"churn.rate": 0.2, "churn.downtime": 3.0, "churn.crash": 0.5}
    return {
        "undisturbed": {},
        "patience": {"gossip.patience": 0.25},
        "churn": churn,
        "churn-stale-decay": churn | {"gossip.stale_decay": 1.0},
        "churn-drop-stale": churn | {"gossip.staleness": 0},
        "partition": {"events": [{"at": SPLIT, "partition": [list(range(n // 2)), list(range(n // 2, n))]},
                                 {"at": HEAL, "heal": True}]},
        "join": {"events": [{"at": JOIN, "join": list(range(3, n, 4))}]},
        # patience (off by default) is what keeps a straggler from setting its neighbours' pace
        "straggler": {"events": [{"at": 0, "slow": [SLOW], "speed": SPEED}], "gossip.patience": 0.25},
    }[case]


CASES = ("undisturbed", "patience", "churn", "churn-stale-decay", "churn-drop-stale", "partition", "join", "straggler")


def run(scenario_path, overrides: dict, case: str, seed: int) -> dict:
    n = load_scenario(scenario_path, overrides).topology.nodes
    s = load_scenario(scenario_path, overrides | case_overrides(case, n) | {"seed": seed})
    result = Simulation(s, run_dir=None).run()
    summary = result.summary
    last: dict[str, dict] = {}
    for r in result.records:
        if r["round"] >= last.get(r["node"], {}).get("round", -1):
            last[r["node"]] = r
    personal_at = {}  # node -> round -> personal accuracy
    for r in result.records:
        if "personal_acc" in r:
            personal_at.setdefault(r["node"], {})[r["round"]] = r["personal_acc"]
    return {"case": case, "seed": seed, "personal": summary["personal"]["mean"], "global": summary["global"]["mean"],
            "wall_s": summary["wall_time_s"], "simulated_s": summary["simulated_time_s"],
            "curve": {c["round"]: c["global"] for c in summary["curve"]},
            "final_global": {n: r.get("global_acc") for n, r in last.items()},
            "rate": {n: r["round"] / r["time"] for n, r in last.items() if r["time"] > 0},
            "personal_at": personal_at, "churn": summary.get("churn"), "names": result.built.topology.names}


def compare(rows: list[dict]) -> list[dict]:
    """Each case's numbers against the undisturbed run of its seed (the rows of the table)."""
    base = {r["seed"]: r for r in rows if r["case"] == "undisturbed"}
    out = []
    for r in rows:
        b = base.get(r["seed"])
        row = {"case": r["case"], "seed": r["seed"], "personal": r["personal"], "global": r["global"],
               "wall_s": r["wall_s"]}
        if b is not None:
            row |= {"d_personal": r["personal"] - b["personal"], "d_global": r["global"] - b["global"],
                    "wall_ratio": r["wall_s"] / b["wall_s"]}
        names = r["names"]
        if r["case"] == "partition":
            half = len(names) // 2
            for side, members in (("a", names[:half]), ("b", names[half:])):
                gains = [r["personal_at"][m][HEAL - 1] - r["personal_at"][m][SPLIT - 1] for m in members
                         if {SPLIT - 1, HEAL - 1} <= set(r["personal_at"].get(m, {}))]
                row[f"half_{side}_personal_gain"] = float(np.mean(gains)) if gains else None
            if b is not None:
                check = str(CHECK) if str(CHECK) in r["curve"] else CHECK
                row["global_gap_at_check"] = r["curve"].get(check, np.nan) - b["curve"].get(check, np.nan)
            row["recovery"] = (r["churn"] or {}).get("recovery")
        if r["case"] == "join":
            joiners = (r["churn"] or {}).get("joiners", [])
            row["rounds_to_median"] = [j["rounds_to_median"] for j in joiners]
            row["rounds_to_profile_median"] = [j.get("rounds_to_profile_median") for j in joiners]
            if b is not None:  # the joiners' final global accuracy against their own in the undisturbed run
                row["joiners_vs_undisturbed"] = [r["final_global"][j["node"]] - b["final_global"][j["node"]]
                                                 for j in joiners]
        if r["case"] == "straggler" and b is not None:
            slow = names[SLOW]
            others = [m for m in names if m != slow]
            row["others_rate_ratio"] = float(np.mean([r["rate"][m] / b["rate"][m] for m in others]))
            finals = [v for v in r["final_global"].values() if v is not None]
            row["slow_vs_median_global"] = r["final_global"][slow] - float(np.median(finals))
        if r["churn"]:
            row["restarts"] = r["churn"]["restarts"]
            row["up_share_mean"] = float(np.mean(list(r["churn"]["up_share"].values())))
            row["waiting_share"] = r["churn"]["waiting_share"]
            row["skipped_rounds"] = r["churn"]["skipped_rounds"]
            row["made_up_steps"] = r["churn"].get("made_up_steps", 0)
            row["idle_steps"] = r["churn"].get("idle_steps", 0)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", nargs="?", default=None, help="scenario (default: the quickstart)")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side, one process each (one core each)")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_churn.json"))
    args = ap.parse_args()
    if "undisturbed" not in args.cases:
        args.cases.insert(0, "undisturbed")  # everything is measured against it
    path = shipped.scenario(args.scenario)
    overrides = parse_sets(args.set) | {"rounds": args.rounds}
    grid = [(path, overrides, case, seed) for seed in args.seeds for case in args.cases]
    out = {"command": "python scripts/bench_churn.py " + shlex.join(sys.argv[1:]), "date": dt.date.today().isoformat(),
           "machine": machine(), "commit": commit(), "scenario": str(path), "label": "; ".join([Path(str(path)).stem, *args.set]),
           "rounds": args.rounds, "runs": []}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(run, *zip(*grid)):
            out["runs"].append(row)
            print(json.dumps({k: row[k] for k in ("case", "seed", "personal", "global", "wall_s")}), flush=True)
            atomic_write_text(Path(args.out), json.dumps(out | {"complete": False}, indent=1) + "\n")
    out["rows"] = compare(out["runs"])
    atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")
    write_table(out, Path(args.out))


def _fmt(v, spec: str = "+.3f") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return format(v, spec)


def write_table(out: dict, json_path: Path) -> None:
    table = []
    for r in out["rows"]:
        detail = {
            "partition": lambda: f"halves' personal gain during the split {_fmt(r.get('half_a_personal_gain'))} / "
                                 f"{_fmt(r.get('half_b_personal_gain'))}; global vs undisturbed at round {CHECK} "
                                 f"{_fmt(r.get('global_gap_at_check'))}",
            "join": lambda: f"joiners' rounds to the median node {r.get('rounds_to_median')}, to their profile's "
                            f"median {r.get('rounds_to_profile_median')}; final global vs undisturbed "
                            f"{[round(v, 3) for v in r.get('joiners_vs_undisturbed', [])]}",
            "straggler": lambda: f"others' rounds per simulated second {_fmt(r.get('others_rate_ratio'), '.1%')} "
                                 f"of undisturbed; slow node's global vs median {_fmt(r.get('slow_vs_median_global'))}",
        }.get(r["case"], lambda: (f"{r['restarts']} restarts, up {r['up_share_mean']:.0%} of rounds, waiting "
                                  f"{r['waiting_share']:.1%} of the time, {r['skipped_rounds']} rounds skipped"
                                  + (f", {r['made_up_steps']} steps made up" if r.get("made_up_steps") else "")
                                  + (f", {r['idle_steps']} steps trained while waiting" if r.get("idle_steps") else "")
                                  if "restarts" in r else ""))()
        table.append(f"| {out['date']} | {out['label']}, {out['rounds']} rounds | {r['case']} | {r['seed']} "
                     f"| {r['personal']:.3f} | {r['global']:.3f} | {_fmt(r.get('d_personal'))} "
                     f"| {_fmt(r.get('d_global'))} | {_fmt(r.get('wall_ratio'), '.2f')} | {detail} "
                     f"| {json_path.name} |")
    add_rows(ROOT / "BENCHMARKS.md", "<!-- bench_churn rows -->",
             "### Churn, partitions, joiners, stragglers (`scripts/bench_churn.py`), against the undisturbed run\n\n"
             f"Machine: {out['machine']}. Each row's command is in its JSON (scripts/results/).\n\n"
             "| date | scenario | case | seed | personal | global | personal vs undisturbed | global vs undisturbed "
             "| wall time ratio | what the case measures | JSON |\n|---|---|---|---|---|---|---|---|---|---|---|", table)
    print(f"wrote {json_path} and a table in BENCHMARKS.md")


if __name__ == "__main__":
    main()
