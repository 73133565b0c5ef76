"""How good is the first teacher? Train every node of a scenario locally (warm-up only), then score
the consensus rules on the test set: each node's neighbourhood teacher, and all nodes pooled.

    python scripts/diag_consensus.py --steps 400            # quickstart's nodes and partition
    python scripts/diag_consensus.py --steps 400 --uniform 0 # without outlier exposure

A diagnostic, not a benchmark: it explains why logit consensus starts where it does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from p2pfl.config import load_scenario, parse_sets
from p2pfl.consensus import Contribution, teacher
from p2pfl.sim import Simulation

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", nargs="?", default=str(ROOT / "sim" / "quickstart.toml"))
    ap.add_argument("--steps", type=int, default=400, help="local steps per node")
    ap.add_argument("--uniform", type=float, default=1.0, help="weight of outlier exposure on reference rows (0: off)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    over = parse_sets(args.set) | {"mode": "logits"}
    built = Simulation(load_scenario(args.scenario, over), run_dir=None).build()
    torch.set_num_threads(1)
    dataset, reference, plans = built.dataset, built.reference, built.plans
    ref_x = torch.from_numpy(reference.x[reference.slice_rows(0)])
    uniform = torch.full((len(ref_x), dataset.num_classes), 1.0 / dataset.num_classes)
    learners = []
    for learner in built.learners:
        if args.uniform > 0:
            learner.config = dataclasses.replace(learner.config, kd_weight=args.uniform)
            learner.train(args.steps, ref_x, uniform)
        else:
            learner.train(args.steps)
        learners.append(learner)
    y = dataset.y_test
    logits = [l.logits(dataset.x_test) for l in learners]
    out = {"steps": args.steps, "uniform": args.uniform,
           "local_global_acc": float(np.mean([(z.argmax(1) == y).mean() for z in logits]))}
    index = {p.node_id: i for i, p in enumerate(plans)}
    for rule in ("mean", "class-weighted", "pairwise", "aligned"):
        pooled = teacher([Contribution(z, l.label_counts) for z, l in zip(logits, learners)], rule=rule)
        local = []
        for i, plan in enumerate(plans):
            members = [i] + [index[n] for n in plan.neighbours]
            t = teacher([Contribution(logits[j], learners[j].label_counts) for j in members], rule=rule)
            local.append((t.argmax(1) == y).mean())
        out[rule] = {"neighbourhood": float(np.mean(local)), "all_nodes": float((pooled.argmax(1) == y).mean())}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
