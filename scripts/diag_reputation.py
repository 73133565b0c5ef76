"""Diagnostic: who the logits reputation weighed down in a finished run, and whether the two nodes hold
labels of a class in common (reputation judges a neighbour on the rows we are confident of, one of our
own classes; BENCHMARKS.md, the protocol section, for what it found on clean runs).

    python scripts/diag_reputation.py runs/protocol/protocol-mnist5k-dir0.1-logits-s1-r20

Reads the run's summary (its scenario: the split is rebuilt, not trained) and metrics.jsonl (each record's
`reputation`, the weight factor per neighbour). Prints the directed neighbour pairs, how many share a
known class, and each pair ever below full weight with its rounds; `--json` for machines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from p2pfl import assemble
from p2pfl.config import load_scenario

FULL = 0.99  # a factor below this is weighed down
KNOWN_SHARE = 0.05  # a class is known with at least this share of a node's labels (consensus.self_support's)


def known_classes(scenario_dict: dict) -> tuple[dict[str, set[int]], list[tuple[str, str]]]:
    """Per node the classes it holds labels of (KNOWN_SHARE of its rows at least), and the directed
    neighbour pairs of the scenario's graph."""
    s = load_scenario(None, scenario_dict)
    data, _ = assemble.data_and_reference(s)
    graph = assemble.topology(s)
    parts = assemble.partition(data.y_train, graph.n, s.data.partition, s.data.split(s.seed))
    classes = int(data.y_train.max()) + 1
    known = {}
    for i in range(graph.n):
        counts = np.bincount(data.y_train[parts[i]], minlength=classes)
        known[graph.names[i]] = {int(c) for c in np.flatnonzero(counts >= KNOWN_SHARE * counts.sum())}
    pairs = [(graph.names[i], graph.names[j]) for i in range(graph.n) for j in sorted(graph.graph.neighbors(i))]
    return known, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a run folder (summary.json and metrics.jsonl)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    summary = json.loads((args.run / "summary.json").read_text())
    known, pairs = known_classes(summary["scenario"])
    low: dict[tuple[str, str], list[tuple[int, float]]] = {}
    with open(args.run / "metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            for peer, factor in r.get("reputation", {}).items():
                if factor < FULL:
                    low.setdefault((r["node"], peer), []).append((r["round"], factor))
    out = {"run": str(args.run), "pairs": len(pairs),
           "pairs_sharing_a_class": sum(bool(known[a] & known[b]) for a, b in pairs),
           "weighed_down": [{"node": a, "knows": sorted(known[a]), "neighbour": b, "it_knows": sorted(known[b]),
                             "in_common": sorted(known[a] & known[b]), "rounds": len(v),
                             "lowest": min(f for _, f in v), "first": v[0]}
                            for (a, b), v in sorted(low.items())]}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['pairs']} directed neighbour pairs, {out['pairs_sharing_a_class']} share a known class; "
          f"{len(low)} ever below x{FULL}")
    for w in out["weighed_down"]:
        print(f"  {w['node']} {w['knows']} <- {w['neighbour']} {w['it_knows']}: in common {w['in_common']}, "
              f"{w['rounds']} rounds below, lowest x{w['lowest']:.2f}, first at round {w['first'][0]}")


if __name__ == "__main__":
    main()
