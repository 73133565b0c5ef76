"""`p2pfl report`: pictures of a run (PNG) and one self-contained HTML page, from its metrics and summary.

    report(["runs/quickstart"])                                   # runs/quickstart/report/
    report(["runs/quickstart", "runs/quickstart-local"], compare=True)

Works on a simulation's run folder (metrics.jsonl, summary.json) and on a launch's folder (one
sub-folder per node, each with its metrics.jsonl). Figures: accuracy per round (mean and spread per
architecture), final accuracy per node (against the other runs with --compare), bytes per node
(cumulative, log scale), staleness and refusals where the run has them, and the graph coloured by
final global accuracy when the summary holds it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or used
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from p2pfl.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from p2pfl.metrics import finals, negative_transfer, read_metrics, refusals  # noqa: E402


@dataclass
class Run:
    name: str
    path: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any]

    def finals(self) -> dict[str, dict]:
        """Each node's last evaluated record."""
        return finals(self.records)

    @property
    def mode(self) -> str:
        return self.summary.get("mode", "")


class ReportError(ValueError):
    """A folder that holds no run: the message says what was looked for."""


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if (path / "metrics.jsonl").is_file():
        records = read_metrics(path / "metrics.jsonl")
    else:  # a launch: runs/launch-<name>/<node>/metrics.jsonl, the node's name as its id
        files = sorted(path.glob("*/metrics.jsonl"))
        if not files:
            raise ReportError(f"{path}: no metrics.jsonl here or in its sub-folders; pass a run folder such as "
                              f"runs/quickstart (p2pfl sim) or runs/launch-ring-8 (scripts/launch_local.py)")
        # a launch's sub-folders are its nodes; simulation runs beside each other (runs/) are runs, not nodes
        if runs := [f.parent.name for f in files if (f.parent / "summary.json").is_file()]:
            raise ReportError(f"{path} holds {len(runs)} run(s) ({', '.join(runs[:5])}{', ...' if len(runs) > 5 else ''}), "
                              f"not one run's nodes: pass one run folder, e.g. {path / runs[0]}, or several with "
                              f"--compare")
        records = [r | {"node": r.get("name", f.parent.name)} for f in files for r in read_metrics(f)]
    if not records:
        raise ReportError(f"{path}: its metrics hold no round yet")
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return Run(path.resolve().name, path, records, summary)  # the folder's name: a rerun's (name-2) is told apart


# -- figures ----------------------------------------------------------------------------------------

COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _by_arch_round(records: list[dict], key: str) -> dict[str, dict[int, list[float]]]:
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if key in r:
            out[r.get("arch", "?")][r["round"]].append(r[key])
    return out


def fig_accuracy(runs: list[Run]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in zip(axes, ("personal_acc", "global_acc"), ("personal accuracy", "global accuracy")):
        for i, run in enumerate(runs):
            style = "-" if i == 0 else "--"
            for j, (arch, by_round) in enumerate(sorted(_by_arch_round(run.records, key).items())):
                rounds = sorted(by_round)
                mean = np.array([np.mean(by_round[r]) for r in rounds])
                lo = np.array([np.min(by_round[r]) for r in rounds])
                hi = np.array([np.max(by_round[r]) for r in rounds])
                colour = COLOURS[j % len(COLOURS)]
                label = arch if len(runs) == 1 else f"{run.name}: {arch}"
                ax.plot(rounds, mean, style, color=colour, label=label)
                if i == 0:
                    ax.fill_between(rounds, lo, hi, color=colour, alpha=0.15)
        ax.set_title(f"{title} per round (mean; band: worst to best node)")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (fraction of test samples)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def fig_nodes(runs: list[Run]) -> plt.Figure:
    finals = [run.finals() for run in runs]
    nodes = sorted(finals[0], key=lambda n: (finals[0][n].get("arch", ""), n))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(nodes) + 2), 6.5), sharex=True)
    width = 0.8 / len(runs)
    x = np.arange(len(nodes))
    for ax, key, title in zip(axes, ("personal_acc", "global_acc"), ("personal", "global")):
        for i, (run, final) in enumerate(zip(runs, finals)):
            values = [final.get(n, {}).get(key, np.nan) for n in nodes]
            ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=run.name,
                   color=COLOURS[i % len(COLOURS)])
        ax.set_ylabel(f"final {title} accuracy")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, 1)
    if len(runs) == 2:  # the difference per node, first run minus second (against local: what sharing gave)
        for ax, key in zip(axes, ("personal_acc", "global_acc")):
            for n_i, n in enumerate(nodes):
                d = finals[0][n].get(key, np.nan) - finals[1].get(n, {}).get(key, np.nan)
                if not np.isnan(d):
                    ax.annotate(f"{d:+.2f}", (n_i, 0.02), ha="center", fontsize=7, rotation=90,
                                color="#b00000" if d < 0 else "black")
    # long run names go in the legend and a wrapped caption, not in a title that the figure would cut off
    # every run's liars are marked: a node that lies in one run of a comparison is not an honest node of it
    attackers = set().union(*(run.summary.get("attackers", {}) for run in runs))
    fig.suptitle("final accuracy per node" + (f" (! = attacker{' in a run' if len(runs) > 1 else ''})"
                                              if attackers else "")
                 + ("\n(on the bars: the first run minus the second, below 0 in red)" if len(runs) == 2 else ""),
                 fontsize=10)
    axes[1].set_xticks(x, [f"{n}{'!' if n in attackers else ''} {finals[0][n].get('arch', '')}" for n in nodes],
                       fontsize=7, rotation=45, ha="right")
    axes[1].set_xlabel("node (architecture)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(runs), 2), fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.04 * ((len(runs) + 1) // 2) + 0.02, 1, 1))
    return fig


def fig_bytes(runs: list[Run]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, run in enumerate(runs):
        by_round: dict[int, int] = defaultdict(int)
        for r in run.records:
            by_round[r["round"]] += r.get("bytes_out", 0)
        nodes = len({r["node"] for r in run.records})
        rounds = sorted(by_round)
        cum = np.cumsum([by_round[r] / nodes for r in rounds])
        ax.plot(rounds, np.maximum(cum, 1), label=run.name, color=COLOURS[i % len(COLOURS)])
    ax.set_yscale("log")
    ax.set_title("bytes sent per node, cumulative (encoded, all message kinds)")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("bytes per node (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_health(run: Run, named: bool = False) -> plt.Figure | None:
    """Staleness of what was used and refusals per round, when the run has either (`named`: the run's name
    in the titles, for a page of several)."""
    stale: dict[int, list[float]] = defaultdict(list)
    refused: dict[int, dict[str, int]] = {}
    for r in run.records:
        if r.get("staleness") is not None:
            stale[r["round"]].append(r["staleness"])
        refused.setdefault(r["round"], {})
        for reason, n in r.get("rejected", {}).items():  # cumulative per node: keep the round's total
            refused[r["round"]][reason] = refused[r["round"]].get(reason, 0) + n
    reasons = sorted({k for v in refused.values() for k in v})
    if not stale and not reasons:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    rounds = sorted(stale)
    axes[0].plot(rounds, [np.mean(stale[r]) for r in rounds], color=COLOURS[0])
    axes[0].set_title("staleness of the knowledge used (mean over nodes)")
    axes[0].set_xlabel("round")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("rounds behind the node's own")
    axes[0].grid(alpha=0.3)
    rounds = sorted(refused)
    for i, reason in enumerate(reasons):
        axes[1].plot(rounds, [refused[r].get(reason, 0) for r in rounds], label=reason, color=COLOURS[i % 10])
    axes[1].set_title("messages refused so far, by reason (all nodes)")
    axes[1].set_xlabel("round")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_ylabel("messages")
    axes[1].grid(alpha=0.3)
    if reasons:
        axes[1].legend(fontsize=8)
    if named:
        fig.suptitle(f"run {run.name}", fontsize=10)
    fig.tight_layout()
    return fig


def fig_graph(run: Run, named: bool = False) -> plt.Figure | None:
    graph = run.summary.get("graph")
    if not graph:
        return None
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(graph["nodes"])
    g.add_edges_from(graph["edges"])
    finals = run.finals()
    acc = [finals.get(n, {}).get("global_acc", np.nan) for n in g.nodes]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    pos = nx.spring_layout(g, seed=0)
    nx.draw_networkx_edges(g, pos, ax=ax, alpha=0.4)
    drawn = nx.draw_networkx_nodes(g, pos, ax=ax, node_color=acc, cmap="viridis", vmin=0, vmax=1, node_size=260)
    attackers = set(run.summary.get("attackers", {}))
    labels = {n: f"{n}{'!' if n in attackers else ''}" for n in g.nodes}
    nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=7, font_color="white")
    fig.colorbar(drawn, ax=ax, label="final global accuracy")
    ax.set_title("the graph, nodes coloured by final global accuracy" + (" (! = attacker)" if attackers else ""))
    ax.axis("off")
    if named:
        fig.suptitle(f"run {run.name}", fontsize=10)
    fig.tight_layout()
    return fig


# -- the page ---------------------------------------------------------------------------------------

def _summary_rows(run: Run, alone: Run | None = None) -> list[tuple[str, str]]:
    """The run's summary as (what, value) rows; against `alone` (a local run of the same scenario and
    seed), its negative-transfer rate too."""
    s = run.summary
    rows = [("run", run.name), ("folder", str(run.path))]
    for key in ("mode", "seed", "rounds", "nodes", "run_id"):
        if key in s:
            rows.append((key, str(s[key])))
    for key in ("personal", "global"):
        if key in s:
            v = s[key]
            rows.append((f"{key} accuracy", f"mean {v['mean']:.3f}, worst {v['worst']:.3f}, "
                                            f"worst decile {v['worst_decile']:.3f}"))
    if "honest" in s:
        rows.append(("honest nodes", f"global {s['honest']['global']['mean']:.3f}, "
                                     f"personal {s['honest']['personal']['mean']:.3f}"))
    if s.get("attackers"):
        rows.append(("attackers", ", ".join(f"{n} ({kind})" for n, kind in s["attackers"].items())))
    refused, by = refusals(s)
    if refused:
        rows.append((f"rejected by {by}", ", ".join(f"{reason} {n:,}" for reason, n in sorted(refused.items()))))
    if "bytes_per_node_per_round" in s:
        rows.append(("bytes per node per round", f"{s['bytes_per_node_per_round']:,.0f}"))
    if s.get("partial"):
        rows.append(("partial", f"interrupted at round {s.get('rounds_reached')}"))
    if alone is not None and alone is not run:
        try:
            nt = negative_transfer(run.finals(), alone.finals())
            rows.append((f"negative transfer (vs {alone.name})",
                         f"{nt['rate']:.0%} of {nt['nodes']} nodes below their own accuracy alone; worst node "
                         f"{nt['worst_loss']:.3f} below" + (f" ({', '.join(nt['below'])})" if nt["below"] else "")))
        except ValueError as e:  # runs of other nodes: the page is still worth having
            rows.append((f"negative transfer (vs {alone.name})", f"not computed: {e}"))
    return rows


def report(paths: list[str | Path], *, out: str | Path | None = None, compare: bool = False) -> list[Path]:
    """Write the figures and index.html; returns the pages' paths: one page, or without `compare` one
    per run."""
    if compare and len(paths) < 2:
        raise ReportError(f"--compare needs two or more runs side by side; got {len(paths)} ({', '.join(map(str, paths))})")
    runs = [load_run(p) for p in paths]
    if not compare:
        return [_write(out and Path(out) / run.path.name if len(runs) > 1 else out, [run]) for run in runs]
    return [_write(out, runs)]


def _write(out: Path | None, runs: list[Run]) -> Path:
    folder = Path(out) if out else runs[0].path / ("report" if len(runs) == 1 else "compare")
    figures = [("accuracy", fig_accuracy(runs)), ("nodes", fig_nodes(runs)), ("bytes", fig_bytes(runs))]
    many = len(runs) > 1  # each run's own health and graph, named (graph-<run>.png; two runs of one name: -1, -2)
    names = [run.name if [r.name for r in runs].count(run.name) == 1 else f"{run.name}-{i + 1}" for i, run in enumerate(runs)]
    for kind, draw in (("health", fig_health), ("graph", fig_graph)):
        figures += [(f"{kind}-{name}" if many else kind, draw(run, many)) for name, run in zip(names, runs)]
    parts = []
    for name, fig in figures:
        if fig is None:
            continue
        png = folder / f"{name}.png"
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(png, buf.getvalue())
        parts.append(f'<h2>{name}</h2><img alt="{name}" src="data:image/png;base64,'
                     f'{base64.b64encode(buf.getvalue()).decode()}">')
    alone = next((run for run in runs if run.mode == "local"), None)  # what each node reaches by itself
    tables = "".join(
        "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                            for k, v in _summary_rows(run, alone)) + "</table>" for run in runs)
    title = html.escape(" vs ".join(run.name for run in runs))
    page = folder / "index.html"
    atomic_write_text(page, f"""<!doctype html><html><head><meta charset="utf-8"><title>p2pfl: {title}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}img{{max-width:100%}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style>
</head><body><h1>{title}</h1>{tables}{''.join(parts)}</body></html>
""")
    return page
