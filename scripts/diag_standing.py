"""Diagnostic: what the parameter reputation sees, per round: each neighbour's spread (distance from the
receiver's own vector in lower-median distances) and cosine with it, honest senders and attackers apart.

    python scripts/diag_standing.py --mode fedavg --attack sign-flip --rounds 4

Prints one line per round and kind of sender (median, min, max); `--json` for machines.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from p2pfl import averaging, modes, shipped
from p2pfl.config import load_scenario
from p2pfl.sim import Simulation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="fedavg")
    ap.add_argument("--attack", default="none")
    ap.add_argument("--share", type=float, default=0.2)
    ap.add_argument("--defence", default="auto")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    seen: list[list[tuple[str, float, float]]] = []  # per absorb: (sender, spread, cosine)
    honest_plausible = modes.plausible

    def watched(own, inbox):  # the vectors the defence judges, as it judges them
        kept, refused = honest_plausible(own, inbox)
        if kept:
            vectors = [r.array for r in kept]
            seen.append(list(zip([r.sender for r in kept], averaging.spread(own, vectors),
                                 averaging.alignment(own, vectors))))
        return kept, refused

    modes.plausible = watched
    over = {"mode": args.mode, "rounds": args.rounds, "gossip.defence": args.defence}
    if args.mode == "fedavg":
        over |= {"profiles": ["cnn1d"], "train.min_lr_ratio": 0.05}
    if args.attack != "none":
        over["attack"] = [{"kind": args.attack, "fraction": args.share}]
    result = Simulation(load_scenario(shipped.scenario(None), over), run_dir=None).run()
    liars = set(result.summary.get("attackers", {}))
    nodes = len(result.nodes)
    rows = []
    for i in range(0, len(seen), nodes):  # the simulation absorbs once per node per round, in order
        for who in ("honest", "attacker"):
            got = [(s, a) for e in seen[i:i + nodes] for snd, s, a in e if (snd in liars) == (who == "attacker")]
            if got:
                s, a = np.array(got).T
                rows.append({"round": i // nodes + 1, "sender": who, "spread": [float(np.median(s)), float(s.min()),
                             float(s.max())], "cosine": [float(np.median(a)), float(a.min()), float(a.max())]})
    if args.json:
        print(json.dumps(rows))
        return
    for r in rows:
        print(f"round {r['round']} {r['sender']:8s} spread median/min/max {r['spread'][0]:.2f} {r['spread'][1]:.2f} "
              f"{r['spread'][2]:.2f}  cosine {r['cosine'][0]:.2f} {r['cosine'][1]:.2f} {r['cosine'][2]:.2f}")


if __name__ == "__main__":
    main()
