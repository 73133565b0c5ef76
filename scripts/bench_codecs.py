"""The accuracy–bytes frontier: quickstart in logits mode with each codec (and slice size), beside fedavg.

    python scripts/bench_codecs.py                                   # the default sweep, 50 rounds each
    python scripts/bench_codecs.py --variants int8 topk:3+int4+z@500 --fedavg fp32 --rounds 30

A variant is CODEC or CODEC@ROWS (reference rows per slice: a smaller slice is the simplest
selection), then optional flags: /delta (delta coding with error feedback, gossip.delta),
/confident:F or /uncertain:F (send that share of each slice's rows, gossip.select), /changed:T (send
only the rows whose prediction moved by T in total variation since last sent) and /adaptive:T
(adaptive bit width with threshold T, gossip.adaptive_bits) and /augref:N (reference rows shifted by
up to N steps when distilled, train.augment_reference), e.g. topk:3+int4+z@2000/confident:0.25.
fedavg runs take CODEC or CODEC/delta. For each: final personal/global means, encoded bytes per
node per round (exact, from the memory transport), cumulative bytes per node until the global mean
first reaches --target (0.70), and the codec's encode+decode throughput on one quickstart knowledge
array. `fedavg` runs (all CNN1D, the weights through the given codecs) give the reference the bar
compares against.
Writes scripts/results/bench_codecs.json, a table in BENCHMARKS.md and
scripts/results/bench_codecs.png (global accuracy vs cumulative bytes, log x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from bench_accuracy import FEDAVG_SCHEDULE, run_mode  # noqa: E402  (scripts/ is on sys.path when a script runs)
from benchrows import add_rows, commit, machine, save_figure  # noqa: E402
from p2pfl import codecs  # noqa: E402
from p2pfl.config import plain_name  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402

DEFAULT_VARIANTS = ["fp32@2000/augref:0", "int8@2000/augref:0", "topk:3+int3+z@2000/augref:0",
                    "topk:3+int3+ans@2000/augref:0", "topk:2+int3+ans", "topk:1+int3+ans", "topk:2+int3+ans/changed:0.1"]


def throughput(name: str, shape=(2000, 10), repeats: int = 30) -> float:
    """MB/s of float32 input through encode + decode, on logits-like values."""
    x = (np.random.default_rng(0).standard_normal(shape) * 3).astype(np.float32)
    codecs.decode(codecs.encode(x, name), max_elements=x.size)
    start = time.perf_counter()
    for _ in range(repeats):
        codecs.decode(codecs.encode(x, name), max_elements=x.size)
    return x.nbytes * repeats / (time.perf_counter() - start) / 1e6


def split_variant(variant: str) -> tuple[str, int | None, dict]:
    """'topk:3+int4+z@500/delta/confident:0.5' -> ('topk:3+int4+z', 500, {overrides})."""
    body, *flags = variant.split("/")
    overrides: dict = {"gossip.delta": False, "gossip.select": "all", "gossip.adaptive_bits": 0.0}
    for flag in flags:
        if flag == "delta":
            overrides["gossip.delta"] = True
        elif flag.startswith(("confident:", "uncertain:", "changed:")):
            overrides["gossip.select"] = flag
        elif flag.startswith("adaptive:"):
            overrides["gossip.adaptive_bits"] = float(flag.removeprefix("adaptive:"))
        elif flag.startswith("augref:"):
            overrides["train.augment_reference"] = int(flag.removeprefix("augref:"))
        else:
            raise SystemExit(f"variant {variant!r}: unknown flag {flag!r}; "
                             f"flags are delta, confident:F, uncertain:F, changed:T, adaptive:T, augref:N")
    name, _, rows = body.partition("@")
    return name, int(rows) if rows else None, overrides


def bytes_to_reach(curve: list[dict], target: float) -> float | None:
    """Cumulative bytes per node at the first round whose global mean reaches `target`."""
    return next((c["bytes_per_node"] for c in curve if c["global"] >= target), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default=str(ROOT / "sim" / "quickstart.toml"))
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, metavar="CODEC[@ROWS][/FLAG]")
    ap.add_argument("--fedavg", nargs="*", default=["fp32", "int8"], metavar="CODEC", help="fedavg runs (all CNN1D)")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--target", type=float, default=0.70, help="global accuracy whose cost in bytes is compared")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_codecs.json"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-codecs"))
    ap.add_argument("--no-markdown", action="store_true")
    args = ap.parse_args()
    for v in args.variants + args.fedavg:
        codecs.parse_codec(split_variant(v)[0])  # a typo fails now, not after an hour of runs

    runs = []
    for variant in args.variants:
        name, rows, flags = split_variant(variant)
        over = {"rounds": args.rounds, "gossip.codec": name, **flags,
                "name": plain_name(f"codec-{variant}".replace(":", "-").replace("/", "-"))}
        if rows:
            over["reference.slice_size"] = rows
        runs.append({"mode": "logits", "variant": variant, "codec": name, "mb_per_s": throughput(name),
                     **run_mode(args.scenario, over, args.runs)})
        print(json.dumps({k: runs[-1][k] for k in ("variant", "bytes_per_node_per_round", "wall_time_s")}), flush=True)
    for variant in args.fedavg:
        name, _, flags = split_variant(variant)
        over = FEDAVG_SCHEDULE | {"rounds": args.rounds, "mode": "fedavg", "profiles": ["cnn1d"], "gossip.codec": name,
                                  **flags, "name": plain_name(f"codec-fedavg-{variant}".replace(":", "-").replace("/", "-"))}
        runs.append({"mode": "fedavg", "variant": f"fedavg {variant}", "codec": name,
                     "mb_per_s": throughput(name, shape=(7500,)), **run_mode(args.scenario, over, args.runs)})
    for r in runs:
        r["bytes_to_target"] = bytes_to_reach(r["curve"], args.target)
        r["total_bytes"] = r["curve"][-1]["bytes_per_node"] if r["curve"] else 0.0
    ref = next((r for r in runs if r["variant"] == "fedavg fp32"), None)
    for r in runs:
        if ref and ref["bytes_to_target"] and r["bytes_to_target"]:
            r["fewer_bytes_than_fedavg_fp32"] = ref["bytes_to_target"] / r["bytes_to_target"]

    report = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "machine": machine(), "commit": commit(),
              "date": dt.date.today().isoformat(), "rounds": args.rounds, "target": args.target, "runs": runs}
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    plot(runs, args.target, Path(args.out).with_suffix(".png"))
    if not args.no_markdown:
        add_rows(ROOT / "BENCHMARKS.md", "<!-- bench_codecs rows -->", (
            "## bench_codecs\n\nQuickstart, logits mode unless marked fedavg (all CNN1D). Bytes are encoded bytes per node "
            "(exact); 'to target' = cumulative bytes per node until the global mean first reaches the target.\n\n"
            "| date | variant | personal / global | bytes/node/round | to target (×fewer than fedavg fp32) "
            "| enc+dec MB/s | rounds, target | machine |\n|---|---|---|---|---|---|---|---|"),
            [row(report, r) for r in runs])
    return 0


def row(report: dict, r: dict) -> str:
    reach = r["bytes_to_target"]
    reach_text = "not reached" if reach is None else (
        f"{reach / 1e6:.2f} MB" + (f" ({r['fewer_bytes_than_fedavg_fp32']:.2f}×)" if "fewer_bytes_than_fedavg_fp32" in r else ""))
    return (f"| {report['date']} | `{r['variant']}` | {r['personal']['mean']:.3f} / {r['global']['mean']:.3f} | "
            f"{r['bytes_per_node_per_round'] / 1e3:.1f} KB | {reach_text} | {r['mb_per_s']:.0f} | "
            f"{report['rounds']}, {report['target']} | {report['machine']} |")


def plot(runs: list[dict], target: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        xs = [c["bytes_per_node"] for c in r["curve"]]
        ys = [c["global"] for c in r["curve"]]
        ax.plot(xs, ys, "--" if r["mode"] == "fedavg" else "-", label=r["variant"])
    ax.axhline(target, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative encoded bytes sent per node")
    ax.set_ylabel("global accuracy (mean over nodes)")
    ax.set_title("quickstart: accuracy vs bytes")
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
