"""Shared by the benchmarks: the machine's description, and result rows in BENCHMARKS.md (each
benchmark owns one table, found by a marker comment)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from p2pfl.files import atomic_write_bytes, atomic_write_text


def add_rows(path: Path, marker: str, header: str, rows: list[str]) -> None:
    """Insert `rows` at the end of the table that ends with `marker`, creating it (after `header`) if absent."""
    if not rows:
        return
    text = path.read_text() if path.exists() else ""
    if marker not in text:
        text = text.rstrip("\n") + f"\n\n{header.rstrip()}\n{marker}\n"
    atomic_write_text(path, text.replace(marker, "\n".join(rows) + "\n" + marker))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}, torch {torch.__version__}"


def commit() -> str:
    """The code a result came from: git's short head, with "+changes" when the package, the scripts, the
    shipped scenarios or pyproject.toml differ from it ("" outside a git checkout, e.g. after a plain
    `pip install .`)."""
    root = Path(__file__).resolve().parent.parent
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--", "p2pfl", "scripts/*.py", "sim", "node",
                                  "topologies", "pyproject.toml"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+changes" if changed else "")


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically, then closed."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def find_run(scenario: str, name: str, overrides: dict, runs: Path) -> Path | None:
    """The folder of run `name` (a shipped scenario or path, with `overrides`) if one holds a summary of this
    very scenario, else None."""
    import dataclasses

    from p2pfl import shipped
    from p2pfl.config import load_scenario

    # what the summary records, through the same JSON round trip (tuples become lists)
    as_saved = lambda s: json.loads(json.dumps(dataclasses.asdict(s), default=str))  # noqa: E731
    wanted = as_saved(load_scenario(shipped.scenario(scenario), overrides | {"name": name}))
    defaults = as_saved(load_scenario(None, {})) | table_defaults()
    # a run stopped half-way left `name` without a summary; the rerun went to name-2 (runs are never
    # overwritten). A folder whose scenario differs (a shipped setting changed since) is not reused.
    for f in [runs / name, *sorted(runs.glob(f"{name}-[0-9]*"))]:
        if (f / "summary.json").is_file():
            if same_scenario(json.loads((f / "summary.json").read_text()).get("scenario"), wanted, defaults):
                return f
            print(f"{f.name} ran another scenario (a setting changed since): not reused", flush=True)
    return None


def table_defaults() -> dict:
    """The defaults of one [[attack]] or [[events]] table, as `same_scenario` reads them for each table of
    those lists (the scenario's own default for them is the empty list)."""
    import dataclasses

    from p2pfl.config import AttackConfig, EventConfig

    def of(cls) -> dict:
        return json.loads(json.dumps({f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                                      for f in dataclasses.fields(cls)}, default=str))
    return {"attack": [of(AttackConfig)], "events": [of(EventConfig)]}


def same_scenario(saved, wanted, defaults) -> bool:
    """Whether a run's recorded scenario is `wanted`; a key added since the run (absent from `saved`) counts
    as the same where `wanted` has it at its default: the run did what that default does. That holds only
    while a new key's default does what the code did before it (the rule for adding one). Lists of tables
    ([[attack]], [[events]]) are compared table by table, against one table's defaults (`table_defaults`)."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        return set(saved) <= set(wanted) and all(
            same_scenario(saved[k], wanted[k], (defaults or {}).get(k)) if k in saved
            else isinstance(defaults, dict) and k in defaults and wanted[k] == defaults[k] for k in wanted)
    if isinstance(saved, list) and isinstance(wanted, list) and len(saved) == len(wanted):
        table = defaults[0] if isinstance(defaults, list) and len(defaults) == 1 and isinstance(defaults[0], dict) else None
        return all(same_scenario(a, b, table) for a, b in zip(saved, wanted))
    return saved == wanted


def run_or_read(scenario: str, name: str, overrides: dict, runs: Path) -> Path:
    """The folder of run `name`: read when it holds a summary of this very scenario already (`find_run`),
    else run now (so a grid of runs can be filled over several sessions)."""
    return find_run(scenario, name, overrides, runs) or run_now(scenario, name, overrides, runs)


def run_now(scenario: str, name: str, overrides: dict, runs: Path) -> Path:
    """Run `name` (a shipped scenario or path, with `overrides`) into a fresh folder under `runs`."""
    from p2pfl import shipped
    from p2pfl.config import load_scenario
    from p2pfl.sim import Simulation

    print(f"running {name} ...", flush=True)
    return Simulation(load_scenario(shipped.scenario(scenario), overrides | {"name": name}), run_dir=runs).run().run_dir

