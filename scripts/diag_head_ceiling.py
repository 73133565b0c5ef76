"""How far can a shared head take a private backbone? Run a scenario, then, for every node, freeze its
final backbone (`embed()`) and fit a fresh copy of everything after it (private projection + the shared
module in adapter modes, the linear classifier otherwise) on the *pooled* training data of all nodes,
labels and all. No averaging scheme can give a node a better head for that backbone than this oracle,
so its test accuracy bounds what adapter mode can reach with the backbones it trains.

    python scripts/diag_head_ceiling.py                          # quickstart in adapter mode
    python scripts/diag_head_ceiling.py --mode local             # the same for local mode's backbones
    python scripts/diag_head_ceiling.py --set rounds=10

The oracle sees un-augmented embeddings and trains `--steps` Adam steps (lr 3e-3, batch 256) from a
fresh initialization. A diagnostic, not a benchmark: it uses labels no node has.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import p2pfl.sim
from p2pfl.config import load_scenario, parse_sets

ROOT = Path(__file__).resolve().parent.parent


@torch.inference_mode()
def embeddings(model, x: np.ndarray, batch: int = 4096) -> torch.Tensor:
    model.eval()
    x = torch.as_tensor(x, dtype=torch.float32)
    return torch.cat([model.embed(x[i:i + batch]) for i in range(0, len(x), batch)])


def oracle_head_accuracy(model, x_train, y_train, x_test, y_test, steps: int, seed: int) -> float:
    """Test accuracy of a fresh copy of `model.head` fitted on all of (x_train, y_train) over the frozen backbone."""
    e_train, e_test = embeddings(model, x_train), embeddings(model, x_test)
    y = torch.as_tensor(y_train, dtype=torch.long)
    torch.manual_seed(seed)
    head = copy.deepcopy(model.head)
    for m in head.modules():  # a fresh start, so the node's own head is no prior
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(y), (256,), generator=gen)
        loss = F.cross_entropy(head(e_train[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.eval()
    with torch.inference_mode():
        return float((head(e_test).argmax(1).numpy() == y_test).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", nargs="?", default=str(ROOT / "sim" / "quickstart.toml"))
    ap.add_argument("--mode", default="adapter")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    over = parse_sets(args.set) | {"mode": args.mode}

    scenario = load_scenario(args.scenario, over)
    result = p2pfl.sim.Simulation(scenario, run_dir=None).run()
    d, learners = result.built.dataset, result.learners
    archs = [p.profile.arch for p in result.built.plans]
    torch.set_num_threads(2)
    rows = []
    for i, (lr, arch) in enumerate(zip(learners, archs)):
        own = lr.evaluate(d.x_test, d.y_test).global_acc
        oracle = oracle_head_accuracy(lr.model, d.x_train, d.y_train, d.x_test, d.y_test, args.steps, seed=i)
        rows.append((arch, own, oracle))
        print(f"node {i:2d} {arch:8s} global {own:.3f}  oracle head {oracle:.3f}", flush=True)
    own, oracle = np.mean([r[1] for r in rows]), np.mean([r[2] for r in rows])
    print(f"{scenario.name} {args.mode}: global mean {own:.3f} (run: {result.global_mean:.3f}), "
          f"oracle-head mean {oracle:.3f}")
    for arch in sorted(set(archs)):
        sel = [r for r in rows if r[0] == arch]
        print(f"  {arch}: global {np.mean([r[1] for r in sel]):.3f}, oracle head {np.mean([r[2] for r in sel]):.3f}")


if __name__ == "__main__":
    main()
