"""The field's benchmark protocol (HtFLlib / PFLlib style), every method in the same runtime: 20 nodes,
Dirichlet 0.1 and pathological (shards:2) splits, 3 seeds, mean +- std over the seeds, mixed architectures.

    python scripts/bench_protocol.py                                     # every dataset, split, seed, method
    python scripts/bench_protocol.py --datasets mnist1d --rounds 20      # a part of the grid

Datasets are the shipped scenarios (their models, topology, reference set and training settings; 20
nodes): mnist1d = quickstart (MLP / CNN1D / GRU), fsdd = spoken-digits (GRU / CNN1D / Transformer),
mnist5k = mnist-5k (CNN2D / MLP). Methods: `local` (each node alone), `logits` (this project), `fd`
(per-class average logits, no reference set), `prototypes` (FedProto-style class means of the embedding),
`adapter` and `hybrid` (a shared adapter averaged; hybrid with logits too) and `fedavg`, which needs one
architecture: it runs with the scenario's first profile only and is judged
against `local` on that same architecture. Unlike HtFLlib's server, nodes learn over the scenario's graph
(quickstart: a small world), with no server.

Per run: personal and global accuracy (mean over nodes), bytes per node per round, and the
negative-transfer rate (the share of nodes whose personal accuracy is below the same node's in `local`,
same seed and split) with its worst node's loss; `local-again` (local with other training randomness on
the same split) measures that rate's noise floor, and where it ran, the rate *beyond noise* counts a node
only when it is below alone by more than twice the std of the per-node differences between the two local
runs (metrics.noise_tolerance). A run whose folder already holds a summary of the same scenario is read,
not run again (`--runs`, default runs/protocol), and the JSON keeps the rows this invocation does not
measure: the grid can be filled over several sessions. Writes
scripts/results/bench_protocol.json, a PNG beside it, and rows in BENCHMARKS.md. Real data needs the
extras: pip install -e ".[fsdd,mnist5k]".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from benchrows import add_rows, commit, find_run, machine, run_now, save_figure  # noqa: E402  (scripts/ is on sys.path)
from p2pfl import shipped  # noqa: E402
from p2pfl.config import load_scenario  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.metrics import finals, negative_transfer, noise_tolerance, read_metrics  # noqa: E402

DATASETS = {"mnist1d": "quickstart", "fsdd": "spoken-digits", "mnist5k": "mnist-5k"}
SPLITS = {"dir0.1": "dirichlet:0.1", "shards2": "shards:2"}
METHODS = ["local", "local-again", "logits", "fd", "prototypes", "adapter", "hybrid", "fedavg"]
# local-again: `local` once more on the same split with other training randomness (models, batches). Its
# negative-transfer rate against `local` is the metric's noise floor: what a method that changes nothing
# would be charged with.
AGAIN_SEED = 1_000
NODES = 20


def overrides(dataset: str, split: str, method: str, seed: int, rounds: int | None) -> dict:
    """The scenario's overrides for one run; fedavg (and its `local` judge, "local-one") on one architecture;
    local-again on seed's split with another seed's training."""
    scenario = load_scenario(shipped.scenario(DATASETS[dataset]))
    out = {"topology.nodes": NODES, "data.partition": SPLITS[split], "seed": seed,
           "mode": "local" if method.startswith("local") else method}
    if method == "local-again":
        out |= {"seed": seed + AGAIN_SEED, "data.split_seed": seed}
    if method in ("fedavg", "local-one"):
        out["profiles"] = [scenario.profiles[0]]
    if rounds:
        out["rounds"] = rounds
    return out


def run_name(dataset: str, split: str, method: str, seed: int, rounds: int | None) -> str:
    return f"protocol-{dataset}-{split}-{method}-s{seed}" + (f"-r{rounds}" if rounds else "")


def measure(dataset: str, split: str, method: str, seed: int, rounds: int | None, runs: Path,
            run: bool = True) -> tuple[dict | None, bool]:
    """One run (read when its folder has a summary) judged against `local` of the same seed and split, and
    beyond the noise where a `local-again` run of them is there; without `run`, None unless both are done.
    And whether this call ran it (False: read from its folder)."""
    judge = "local-one" if method == "fedavg" else "local"
    folders, fresh = {}, False
    for m in {method, judge}:
        where = (DATASETS[dataset], run_name(dataset, split, m, seed, rounds), overrides(dataset, split, m, seed, rounds), runs)
        folders[m] = find_run(*where)
        if folders[m] is None and run:
            folders[m] = run_now(*where)
            fresh |= m == method
    if None in folders.values():
        return None, False
    s = json.loads((folders[method] / "summary.json").read_text())
    row = {"dataset": dataset, "split": split, "method": method, "seed": seed, "rounds": s["rounds"],
           "personal": s["personal"]["mean"], "global": s["global"]["mean"],
           "bytes_per_node_per_round": s["bytes_per_node_per_round"], "archs": sorted(s["per_arch"]),
           "run": folders[method].name}
    if method != "local":
        ours, alone = (finals(read_metrics(folders[m] / "metrics.jsonl")) for m in (method, judge))
        nt = negative_transfer(ours, alone)
        row |= {"negative_transfer": nt["rate"], "worst_loss": nt["worst_loss"], "judged_by": folders[judge].name}
        again = None if method in ("fedavg", "local-again") else find_run(
            DATASETS[dataset], run_name(dataset, split, "local-again", seed, rounds),
            overrides(dataset, split, "local-again", seed, rounds), runs)
        if again is not None:  # a node counts only when it is below alone by more than two local runs differ
            tol = noise_tolerance(alone, finals(read_metrics(again / "metrics.jsonl")))
            row |= {"beyond_noise": negative_transfer(ours, alone, tol)["rate"], "noise_tolerance": tol}
    return row, fresh


SITTING = ("command", "date", "machine")


def row_key(r: dict) -> tuple:
    return r["dataset"], r["split"], r["method"], r["seed"], r["rounds"]


def merged(out: Path, rows: list[dict], stamp: dict) -> list[dict]:
    """`rows` and the rows already in the JSON at `out` that this invocation did not measure (other datasets,
    splits, methods or seeds), so a part of the grid rerun keeps the rest of it; run folders do not outlive
    a machine, the JSON does. Each row names the command, date and machine that measured it: rows that ran
    come stamped; a row read from its folder keeps the stamp of the row it replaces (`stamp`, this
    invocation's, only where the JSON has none)."""
    before = {row_key(r): r for r in (json.loads(out.read_text())["rows"] if out.is_file() else [])}
    rows = [r if "command" in r else r | ({k: before[row_key(r)][k] for k in SITTING}
                                          if all(k in before.get(row_key(r), {}) for k in SITTING) else stamp)
            for r in rows]
    new = {row_key(r) for r in rows}
    return [r for k, r in before.items() if k not in new] + rows


def cells(rows: list[dict]) -> list[dict]:
    """Rows grouped by (dataset, split, method, rounds): mean and std over the seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["split"], r["method"], r["rounds"]), []).append(r)
    out = []
    for (dataset, split, method, _), rs in groups.items():
        def stat(key: str) -> tuple[float, float]:
            v = [r[key] for r in rs]
            return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0
        cell = {"dataset": dataset, "split": split, "method": method, "seeds": sorted(r["seed"] for r in rs),
                "rounds": rs[0]["rounds"], "archs": rs[0]["archs"],
                "personal": stat("personal"), "global": stat("global"),
                "bytes_per_node_per_round": statistics.fmean(r["bytes_per_node_per_round"] for r in rs)}
        if method != "local":
            cell |= {"negative_transfer": statistics.fmean(r["negative_transfer"] for r in rs),
                     "worst_loss": max(r["worst_loss"] for r in rs)}
        if all("beyond_noise" in r for r in rs):
            cell["beyond_noise"] = statistics.fmean(r["beyond_noise"] for r in rs)
        out.append(cell)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=0, help="rounds per run (0: the scenario's)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "protocol"), help="where the run folders are (or go)")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_protocol.json"))
    ap.add_argument("--done", action="store_true", help="run nothing: the JSON and PNG of the runs already in "
                    "--runs (rows in BENCHMARKS.md are added by the runs that ran)")
    args = ap.parse_args()
    command = "python scripts/bench_protocol.py " + shlex.join(sys.argv[1:])
    today = dt.date.today().isoformat()
    stamp = {"command": command, "date": today, "machine": machine(), "commit": commit()}
    rows, measured = [], set()  # measured: the cells with a row this invocation ran (not read)
    for dataset in args.datasets:
        for split in args.splits:
            for method in args.methods:
                for seed in args.seeds:
                    row, fresh = measure(dataset, split, method, seed, args.rounds or None, Path(args.runs),
                                         not args.done)
                    if row is not None:
                        rows.append(row | stamp if fresh else row)
                        measured |= {(dataset, split, method, row["rounds"])} if fresh else set()
                        print(json.dumps(row), flush=True)
    out = Path(args.out)
    rows = merged(out, rows, stamp)
    grid = cells(rows)
    # each sitting whose rows the JSON holds: what a reader needs to rerun and to compare machines
    sittings = list({tuple(r[k] for k in SITTING): {k: r[k] for k in SITTING} for r in rows}.values())
    result = {"command": command, "sittings": sittings,
              "date": today, "machine": machine(), "commit": commit(), "nodes": NODES, "rows": rows,
              "cells": grid}
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    plot(grid, out.with_suffix(".png"))
    date = result["date"]
    add_rows(ROOT / "BENCHMARKS.md", "<!-- bench_protocol rows -->",
             f"### The field's protocol (`scripts/bench_protocol.py`): {NODES} nodes, mean +- std over seeds\n\n"
             "| date | dataset | split | method | architectures | rounds | seeds | personal | global | "
             "negative transfer (mean share of nodes), worst node | KB / node / round | JSON |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             [f"| {date} | {c['dataset']} | {c['split']} | {c['method']} | {'/'.join(c['archs'])} | {c['rounds']} | "
              f"{len(c['seeds'])} | {c['personal'][0]:.3f} +- {c['personal'][1]:.3f} | "
              f"{c['global'][0]:.3f} +- {c['global'][1]:.3f} | "
              + (f"{c['negative_transfer']:.0%}" + (f" (beyond noise {c['beyond_noise']:.0%})" if "beyond_noise" in c
                                                     else "") + f", {c['worst_loss']:.3f}"
                 if "negative_transfer" in c else "(alone)")
              + f" | {c['bytes_per_node_per_round'] / 1e3:.1f} | {out.name} |"
              # rows kept from the JSON were tabled by the run that measured them
              for c in grid if (c["dataset"], c["split"], c["method"], c["rounds"]) in measured])
    return 0


def plot(grid: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({c["dataset"] for c in grid})
    fig, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 8), squeeze=False, layout="constrained")
    for col, dataset in enumerate(datasets):
        splits = sorted({c["split"] for c in grid if c["dataset"] == dataset})
        methods = [m for m in METHODS if any(c["method"] == m and c["dataset"] == dataset for c in grid)]
        width = 0.8 / len(splits)
        for ax, key in zip(axes[:, col], ("personal", "global")):
            for k, split in enumerate(splits):
                by = {c["method"]: c for c in grid if c["dataset"] == dataset and c["split"] == split}
                xs = [i + (k - (len(splits) - 1) / 2) * width for i in range(len(methods))]
                ax.bar(xs, [by[m][key][0] if m in by else 0 for m in methods], width,
                       yerr=[by[m][key][1] if m in by else 0 for m in methods], capsize=3, label=split)
            # fedavg runs one architecture (the scenario's first profile): its bars are not the mixed runs'
            ax.set_xticks(range(len(methods)), [m + " (1 arch)" if m == "fedavg" else m for m in methods],
                          rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_ylabel(f"{key} accuracy\n(mean over nodes; +- std over seeds)", fontsize=8)
            ax.set_title(f"{dataset}: {key}")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8, loc="lower left" if key == "personal" else "upper left")
    fig.suptitle(f"{NODES} nodes, the HtFLlib-style protocol in one runtime", fontsize=9)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
