"""Run logs and their summary: per node per round JSON lines, and the statistics everyone reports."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, IO

import numpy as np


class MetricsLog:
    """Append-only JSON lines; one line per node per round. Flushed per line so a crash loses nothing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def spread(values: list[float]) -> dict[str, float]:
    """mean, worst node, worst decile (mean of the lowest 10%, at least one node) and the deciles (the
    10%, 20%, ..., 90% quantiles: at a thousand nodes, the distribution rather than a line per node)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    k = max(1, math.ceil(0.1 * len(v)))
    return {"mean": float(v.mean()), "worst": float(v[0]), "worst_decile": float(v[:k].mean()),
            "deciles": [float(q) for q in np.quantile(v, np.arange(1, 10) / 10)]}


def finals(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each node's last evaluated record."""
    out: dict[str, dict] = {}
    for r in records:
        if "global_acc" in r and r["round"] >= out.get(r["node"], {}).get("round", -1):
            out[r["node"]] = r
    return out


# a node is worse off than alone when its personal accuracy is below local's by more than this: one
# test sample in a few hundred is noise, not transfer
NEGATIVE_TRANSFER_TOLERANCE = 0.005


def negative_transfer(ours: dict[str, dict], alone: dict[str, dict],
                      tolerance: float = NEGATIVE_TRANSFER_TOLERANCE) -> dict[str, Any]:
    """The share of nodes whose final personal accuracy is below what the same node reaches alone by
    more than `tolerance` (`alone`: the finals of a `local` run, same seed and split; nodes matched by
    id), and the worst node's loss. Only nodes in both runs count."""
    common = sorted(set(ours) & set(alone))
    if not common:
        raise ValueError("the two runs share no node id: compare runs of one scenario, seed and node count")
    diffs = {n: ours[n]["personal_acc"] - alone[n]["personal_acc"] for n in common}
    below = sorted(n for n, d in diffs.items() if d < -tolerance)
    return {"rate": len(below) / len(common), "worst_loss": max(0.0, -min(diffs.values())), "nodes": len(common),
            "below": below}


NOISE_SIGMAS = 2.0


def noise_tolerance(alone: dict[str, dict], again: dict[str, dict], sigmas: float = NOISE_SIGMAS) -> float:
    """How far below alone a node may be by chance: `sigmas` x the std over nodes of the personal
    accuracy differences between two `local` runs of one split that differ only in training randomness
    (`again`), at least NEGATIVE_TRANSFER_TOLERANCE. A node of one or two classes, scored on a few dozen
    test rows of each, moves by a row's worth between such runs (BENCHMARKS.md, the protocol section)."""
    common = sorted(set(alone) & set(again))
    if len(common) < 2:
        raise ValueError("the two local runs share fewer than two node ids: runs of one scenario and split")
    diffs = [again[n]["personal_acc"] - alone[n]["personal_acc"] for n in common]
    return max(NEGATIVE_TRANSFER_TOLERANCE, sigmas * float(np.std(diffs, ddof=1)))


def summarize(records: list[dict[str, Any]], *, rounds: int, wire_bytes: int) -> dict[str, Any]:
    """Final accuracies (each node's last evaluated round), per architecture, and bytes.

    wire_bytes: every encoded byte the nodes handed to the network, hellos and byes included.
    """
    final = finals(records)
    if not final:
        return {"nodes": 0}
    nodes = sorted(final)
    per_round = rounds_curve(records)
    out = {
        "nodes": len(nodes),
        "rounds": rounds,
        "global": spread([final[n]["global_acc"] for n in nodes]),
        "personal": spread([final[n]["personal_acc"] for n in nodes]),
        "per_arch": _groups([final[n] for n in nodes], "arch"),
        "bytes_per_node_per_round": wire_bytes / len(nodes) / rounds,
        "rejected": dict(sum((Counter(final[n].get("rejected", {})) for n in nodes), Counter())),
        "curve": per_round,
    }
    spent = {r["node"]: r["epsilon"] for r in sorted(records, key=lambda r: r["round"]) if "epsilon" in r}
    if spent:  # differential privacy: what each node's private data has cost, the accountant's epsilon
        out["epsilon_spent"] = {"max": max(spent.values()), "per_node": dict(sorted(spent.items()))}
    profiles = _groups([final[n] for n in nodes if "profile" in final[n]], "profile")
    if set(profiles) - set(out["per_arch"]):  # profiles say more than architectures (two widths of one)
        out["per_profile"] = profiles
    return out


def refusals(summary: dict[str, Any]) -> tuple[dict[str, int], str]:
    """What the nodes refused, by reason (their final counts, summed), and whose: the honest nodes' where the
    run had liars, whose own refusals of honest knowledge say nothing about the defence."""
    if "honest" in summary:
        return summary["honest"].get("rejected", {}), "honest nodes"
    return summary.get("rejected", {}), "all nodes"


def _groups(finals: list[dict[str, Any]], key: str) -> dict[str, dict]:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in finals:
        by[r[key]].append(r)
    return {g: {"nodes": len(rs), "global": spread([r["global_acc"] for r in rs]),
                "personal": spread([r["personal_acc"] for r in rs])} for g, rs in sorted(by.items())}


def rounds_curve(records: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Mean accuracies and cumulative bytes per node, round by round (rounds every node evaluated)."""
    by_round: dict[int, list[dict]] = defaultdict(list)
    nodes = {r["node"] for r in records}
    for r in records:
        by_round[r["round"]].append(r)
    curve, cum = [], 0.0
    for rnd in sorted(by_round):
        rs = by_round[rnd]
        cum += sum(r["bytes_out"] for r in rs) / max(len(nodes), 1)
        evaluated = [r for r in rs if "global_acc" in r]
        if evaluated:
            curve.append({
                "round": rnd,
                "global": float(np.mean([r["global_acc"] for r in evaluated])),
                "personal": float(np.mean([r["personal_acc"] for r in evaluated])),
                "bytes_per_node": cum,
            })
    return curve


RECOVERED = 0.01  # back within this of the pre-partition level (global accuracy, the network's mean)


def churn_summary(records: list[dict[str, Any]], log: list[dict], up_by_round: dict[int, list[str]],
                  nodes: list[str]) -> dict[str, Any]:
    """How the nodes came through a run's events (`log`: sim.EventRunner's): the share of rounds each
    node was up (every one of `nodes`, those never up at 0 and named in `never_up`), the share of time spent waiting, the staleness of what was used, rounds trained alone
    and skipped to catch up, steps trained to make up for those (train.make_up) and while waiting
    (train.idle_steps); per heal, the rounds until the network's mean global accuracy was back
    within RECOVERED of its level before the split; per late joiner, `_joiners`."""
    last_time: dict[str, float] = defaultdict(float)
    waited: dict[str, float] = defaultdict(float)
    for r in records:
        last_time[r["node"]] = max(last_time[r["node"]], r["time"])
        waited[r["node"]] += r.get("waited", 0.0)
    stale = [r["staleness"] for r in records if r.get("staleness") is not None]
    up = Counter(name for names in up_by_round.values() for name in names)
    out: dict[str, Any] = {
        "up_share": {n: up[n] / max(len(up_by_round), 1) for n in sorted(nodes)},
        "waiting_share": float(np.mean([waited[n] / last_time[n] for n in last_time if last_time[n] > 0]))
        if last_time else 0.0,
        "staleness_mean": float(np.mean(stale)) if stale else None,
        "alone_rounds": sum(bool(r.get("alone")) for r in records),
        "skipped_rounds": sum(r.get("skipped", 0) for r in records),
        "made_up_steps": sum(r.get("made_up", 0) for r in records),
        "idle_steps": sum(r.get("idle_steps", 0) for r in records),
        "restarts": sum(len(e["nodes"]) for e in log if e["event"] == "rejoin"),
    }
    if never := sorted(set(nodes) - set(last_time)):  # down (or not yet joined) for the whole run: no record
        out["never_up"] = never
    curve = {c["round"]: c["global"] for c in rounds_curve(records)}
    splits = [e for e in log if e["event"] in ("partition", "cut")]
    heals = []
    for h in (e for e in log if e["event"] == "heal"):
        before = [e["round"] for e in splits if e["round"] <= h["round"]]
        level = curve.get(max(before) - 1) if before else None
        back = next((r for r in sorted(curve) if r >= h["round"] and level is not None
                     and curve[r] >= level - RECOVERED), None)
        heals.append({"split_round": max(before) if before else None, "heal_round": h["round"],
                      "level_before": level, "rounds_to_recover": None if back is None else back - h["round"]})
    if heals:
        out["recovery"] = heals
    joins = [(n, e["round"]) for e in log if e["event"] == "join" for n in e["nodes"]]
    if joins:
        out["joiners"] = _joiners(records, joins)
    return out


def _joiners(records: list[dict[str, Any]], joins: list[tuple[str, int]]) -> list[dict]:
    """Per late joiner, the rounds from its join until its global accuracy reached the median of the
    nodes there from the start at the same round: of all of them, and of those of its own profile (an
    architecture below the median everywhere never reaches the first one, joining or not)."""
    late = {n for n, _ in joins}
    by_round: dict[tuple[int, str | None], list[float]] = defaultdict(list)
    for r in records:
        if "global_acc" in r and r["node"] not in late:
            by_round[r["round"], None].append(r["global_acc"])
            by_round[r["round"], r.get("profile")].append(r["global_acc"])
    median = {k: float(np.median(v)) for k, v in by_round.items()}

    def reached(mine: list[dict], joined: int, group: str | None) -> int | None:
        hit = next((r["round"] for r in mine if r["global_acc"] >= median.get((r["round"], group), 1.0)), None)
        return None if hit is None else hit - joined

    out = []
    for name, joined in joins:
        mine = sorted((r for r in records if r["node"] == name and "global_acc" in r), key=lambda r: r["round"])
        profile = mine[0].get("profile") if mine else None
        out.append({"node": name, "joined_round": joined, "profile": profile,
                    "rounds_to_median": reached(mine, joined, None),
                    "rounds_to_profile_median": reached(mine, joined, profile)})
    return out
