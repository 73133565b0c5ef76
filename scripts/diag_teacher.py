"""Where does logits mode stop? Run a scenario, then score each node's last teacher and its model on the
reference rows it was last taught (reference labels are regenerated for this, never used in training),
and its per-class test recall by how far the nearest holder of that class's labels is in the graph.

    python scripts/diag_teacher.py                              # quickstart as configured
    python scripts/diag_teacher.py --set gossip.reliability=none
    python scripts/diag_teacher.py --scale-arch mlp=0.25        # MLP senders' consensus weight x 0.25

--scale-arch multiplies the mixing weight of every sender of that architecture in its neighbours'
consensus. It is a diagnostic (it needs to know the architectures, which the product never does):
it measures how much weaker models' opinions cost, which `gossip.reliability` estimates without labels.
A diagnostic, not a benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import networkx as nx
import numpy as np

import p2pfl.sim
from p2pfl.config import load_scenario, parse_sets
from p2pfl.data.reference import reference_labels
from p2pfl.modes import LogitsMode

ROOT = Path(__file__).resolve().parent.parent
HOLDER_MIN = 10  # a node "holds" a class with at least this many training samples of it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", nargs="?", default=str(ROOT / "sim" / "quickstart.toml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--scale-arch", action="append", default=[], metavar="ARCH=F")
    args = ap.parse_args()
    over = parse_sets(args.set) | {"mode": "logits"}
    scale = {a: float(f) for a, f in (item.split("=", 1) for item in args.scale_arch)}

    arch_of: dict[str, str] = {}  # node id -> architecture, filled as the modes are built (before any round)

    class ScaledLogits(LogitsMode):
        """Logits mode whose consensus weighs each sender by --scale-arch of its architecture."""

        def absorb(self, ctx, inbox, round_idx):
            scaled = [dataclasses.replace(x, weight=x.weight * scale.get(arch_of[x.sender], 1.0)) for x in inbox]
            return super().absorb(ctx, scaled, round_idx)

    def make_mode(plan):
        arch_of[plan.node_id] = plan.profile.arch
        return ScaledLogits()

    result = p2pfl.sim.Simulation(load_scenario(args.scenario, over), run_dir=None, make_mode=make_mode).run()
    learners, modes = result.learners, result.modes
    dataset, graph, reference = result.built.dataset, result.built.topology.graph, result.built.reference
    try:
        y_ref = reference_labels(reference.spec)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    archs = list(arch_of.values())
    hops = dict(nx.all_pairs_shortest_path_length(graph))
    counts = np.stack([lr.label_counts for lr in learners])
    by_hop: dict[int, list[float]] = {}
    print(f"{'node':>5} {'arch':>6} {'global':>7} {'teacher':>8} {'student':>8}   (last taught reference rows)")
    for i, (lr, m) in enumerate(zip(learners, modes)):
        recall = lr.evaluate(dataset.x_test, dataset.y_test)
        table, taught = m.taught
        rows = np.flatnonzero(taught == taught.max())
        t_acc = (table[rows].argmax(1) == y_ref[rows]).mean()
        s_acc = (lr.logits(reference.x[rows]).argmax(1) == y_ref[rows]).mean()
        print(f"{i:>5} {archs[i]:>6} {recall.global_acc:>7.3f} "
              f"{t_acc:>8.3f} {s_acc:>8.3f}")
        for c in range(dataset.num_classes):
            hop = min((hops[i][j] for j in range(len(learners)) if counts[j, c] >= HOLDER_MIN), default=-1)
            by_hop.setdefault(hop, []).append(float(recall.per_class[c]))
    for hop, recalls in sorted(by_hop.items()):
        print(f"classes whose nearest holder is {hop} hop(s) away: {len(recalls)} (node, class) pairs, "
              f"mean test recall {np.mean(recalls):.3f}")
    print(f"personal {result.personal_mean:.3f} global {result.global_mean:.3f}",
          {a: round(v["global"]["mean"], 3) for a, v in result.summary["per_arch"].items()})


if __name__ == "__main__":
    main()
