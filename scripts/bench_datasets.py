"""Logits mode on real data against each node alone, and what a data-free reference costs.

    python scripts/bench_datasets.py                                   # spoken-digits, mnist-5k, quickstart
    python scripts/bench_datasets.py --scenarios spoken-digits --runs /tmp/runs

Per scenario (its own seed, split and settings), four runs: logits with the scenario's reference set
(for real data: a held-out split, 20% of the training rows, labels dropped), `local` on the same rows;
logits with reference.source = "noise" (data-free: Gaussian rows shaped by the training inputs'
per-position mean and std, 2,000 rows), and `local` on all rows (nothing is held out then). Reported:
personal / global mean, bytes per node per round, and the negative-transfer rate (the share of nodes
whose personal accuracy is below the same node's alone; `p2pfl.metrics.negative_transfer`) with its
worst node. A run whose folder already holds a summary is read, not run again (`--runs`: where they
live). Writes scripts/results/bench_datasets.json and rows in BENCHMARKS.md. The dataset extras are
needed: pip install -e ".[fsdd,mnist5k]".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from benchrows import add_rows, commit, machine, run_or_read  # noqa: E402  (scripts/ is on sys.path when a script runs)
from p2pfl import shipped  # noqa: E402
from p2pfl.assemble import reference_source  # noqa: E402
from p2pfl.config import load_scenario  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.metrics import finals, negative_transfer, read_metrics  # noqa: E402

NOISE = {"reference.source": "noise", "reference.size": 2_000}
# (suffix, overrides, the local run it is judged against)
VARIANTS = [("", {}, "-local"), ("-local", {"mode": "local"}, None),
            ("-noise", NOISE, "-local-all"), ("-local-all", {"mode": "local", "reference.source": "noise"}, None)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="+", default=["spoken-digits", "mnist-5k", "quickstart"])
    ap.add_argument("--runs", default=str(ROOT / "runs"), help="where the run folders are (or go)")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_datasets.json"))
    args = ap.parse_args()
    rows, table = [], []
    for scenario in args.scenarios:
        # data with a generator (quickstart) has a data-free reference already: the noise pair is for real data
        held_out = reference_source(load_scenario(shipped.scenario(scenario))) == "held-out"
        variants = VARIANTS if held_out else VARIANTS[:2]
        base = load_scenario(shipped.scenario(scenario)).name
        folders = {suffix: run_or_read(scenario, base + suffix, overrides, Path(args.runs))
                   for suffix, overrides, _ in variants}
        for suffix, _, alone in variants:
            if alone is None:
                continue
            s = json.loads((folders[suffix] / "summary.json").read_text())
            a = json.loads((folders[alone] / "summary.json").read_text())
            nt = negative_transfer(finals(read_metrics(folders[suffix] / "metrics.jsonl")),
                                   finals(read_metrics(folders[alone] / "metrics.jsonl")))
            row = {"scenario": scenario, "reference": "noise" if suffix else "scenario's",
                   "personal": s["personal"]["mean"], "global": s["global"]["mean"],
                   "local_personal": a["personal"]["mean"], "local_global": a["global"]["mean"],
                   "bytes_per_node_per_round": s["bytes_per_node_per_round"],
                   "per_arch_global": {k: v["global"]["mean"] for k, v in s["per_arch"].items()},
                   "negative_transfer": nt, "runs": [folders[suffix].name, folders[alone].name]}
            rows.append(row)
            table.append(f"| {dt.date.today().isoformat()} | {scenario} | {row['reference']} | "
                         f"{row['personal']:.3f} / {row['global']:.3f} | "
                         f"{row['local_personal']:.3f} / {row['local_global']:.3f} | "
                         f"{row['global'] - row['local_global']:+.3f} | {nt['rate']:.0%} ({len(nt['below'])} of "
                         f"{nt['nodes']}), worst {nt['worst_loss']:.3f} | {row['bytes_per_node_per_round'] / 1e3:.1f} KB "
                         f"| bench_datasets.json |")
            print(table[-1], flush=True)
    result = {"command": "python scripts/bench_datasets.py " + shlex.join(sys.argv[1:]),
              "date": dt.date.today().isoformat(), "machine": machine(), "commit": commit(), "rows": rows}
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    add_rows(ROOT / "BENCHMARKS.md", "<!-- bench_datasets rows -->",
             "### Real data: logits mode against each node alone (`scripts/bench_datasets.py`, seed 0)\n\n"
             "| date | scenario | reference set | personal / global | local: personal / global | global gain "
             "| negative transfer (share of nodes below alone), worst node | bytes / node / round | JSON |\n"
             "|---|---|---|---|---|---|---|---|---|", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
