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
    """mean, worst node and worst decile (mean of the lowest 10%, at least one node)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    k = max(1, math.ceil(0.1 * len(v)))
    return {"mean": float(v.mean()), "worst": float(v[0]), "worst_decile": float(v[:k].mean())}


def summarize(records: list[dict[str, Any]], *, rounds: int, wire_bytes: int) -> dict[str, Any]:
    """Final accuracies (each node's last evaluated round), per architecture, and bytes.

    wire_bytes: every encoded byte the nodes handed to the network, hellos and byes included.
    """
    final: dict[str, dict] = {}
    for r in records:
        if "global_acc" in r and r["round"] >= final.get(r["node"], {}).get("round", -1):
            final[r["node"]] = r
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
