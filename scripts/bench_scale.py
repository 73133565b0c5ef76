"""What a simulation costs as it grows: wall per round, node-rounds/s, peak memory, bytes, and where a
training step's time goes.

    python scripts/bench_scale.py                                     # 16, 64, 256 nodes; logits and fedavg
    python scripts/bench_scale.py --nodes 1024 4096 --modes logits --rounds 1 --steps 5 --no-steps
    python scripts/bench_scale.py --nodes 16 --rounds 50 --steps 0    # the quickstart itself, default steps
    python scripts/bench_scale.py --nodes 16 64 --ray --no-steps --out scripts/results/bench_scale_ray.json
    python scripts/bench_scale.py --pypi-task --modes --no-steps --out scripts/results/bench_scale_pypi.json

Each point is one `p2pfl sim` process (peak RSS: that process's own high-water mark, VmHWM): the
quickstart's mixed MLP / CNN1D / GRU nodes on a small world (k = 4), `dirichlet-node:0.5`, ~250 training
samples per node (data.samples grows with the nodes), the global test set capped at 2,000 rows
(data.test_size: evaluating a growing test set every round is quadratic overall). fedavg points are all
MLP. `--steps K` sets local and warm-up steps to K (0: the scenario's 90 and 200); node-rounds/s counts
the warm-up as the round it is not, so it is a rate of the whole run.

The step section times one training step (100 labelled + 200 reference rows) per architecture with
Adam as the learner builds it and with fused Adam, counts its floating-point operations (torch's
FlopCounterMode: matrix products and convolutions, forward and backward), and gives the share of its
time inside torch's operators (the profiler's self time of aten ops) against the rest (Python, autograd
bookkeeping), and the bytes a node of it holds in tensors (parameters, gradients, Adam's state, its
training rows; the quickstart's ~500 rows per node). The machine's fp32 GEMM peak (1024^3, 1 and 2
threads) is measured in the same run.

Writes scripts/results/bench_scale.json, a PNG beside it, and rows in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from benchrows import add_rows, commit, machine, save_figure  # noqa: E402  (scripts/ is on sys.path when a script runs)
from p2pfl.files import atomic_write_text  # noqa: E402

TRAIN_PER_NODE = 250
TEST_ROWS = 2000


def scenario_sets(nodes: int, mode: str, rounds: int, steps: int) -> list[str]:
    sets = [f"topology.nodes={nodes}", "topology.name=small-world", "topology.params={k=4,p=0.2}",
            "data.partition=dirichlet-node:0.5", f"data.samples={round(TRAIN_PER_NODE * nodes / 0.8)}",
            f"data.test_size={TEST_ROWS}", f"rounds={rounds}"]
    if mode == "fedavg":
        sets.append('profiles=["mlp"]')
    if steps:
        sets += [f"train.local_steps={steps}", f"train.warmup_steps={steps}"]
    return sets


# `p2pfl sim` in a process that then reports its own peak RSS (VmHWM: the high-water mark of this
# process's memory; the kernel's rusage would start from the forking parent's, kept across exec)
# and its own CPU time (all its threads; with --ray the driver's alone: the shards are other processes)
CHILD = """import re, sys, time
from p2pfl.cli import main
code = main(sys.argv[2:])
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())
open(sys.argv[1], "w").write(hwm.group(1) + " " + str(time.process_time()))
sys.exit(code)"""


def ray_env(tmp: Path) -> dict[str, str]:
    """A child's environment: Ray's sessions in our temporary folder, not the host's /tmp/ray; no usage report."""
    return os.environ | {"RAY_TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"}


def run_point(nodes: int, mode: str, rounds: int, steps: int, runs: Path, ray: bool = False,
              sets: list[str] | None = None, name: str = "") -> dict:
    """One `p2pfl sim` process (with `ray`: on a local Ray cluster it starts); its summary plus its peak RSS
    and CPU time. `sets`: the scenario's settings instead of `scenario_sets`' (then `name` names the run)."""
    name = name or f"scale-{mode}-{nodes}" + ("-ray" if ray else "")
    out, rss = runs / f"{name}.json", runs / f"{name}.rss"
    cmd = ["sim", "--mode", mode, "--name", name, "--runs", str(runs), "--json", str(out)]
    for s in sets if sets is not None else scenario_sets(nodes, mode, rounds, steps):
        cmd += ["--set", s]
    if ray:
        cmd += ["--ray", "local"]
    env = ray_env(runs)
    start = time.perf_counter()
    with (runs / f"{name}.err").open("w+") as err:  # a file, not a pipe: a full pipe would block the
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(rss), *cmd],  # child while we wait for it
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if (code := os.waitstatus_to_exitcode(status)) != 0:
            err.seek(0)
            raise SystemExit(f"bench_scale: p2pfl {shlex.join(cmd)} failed ({code}):\n{err.read()[-2000:]}")
    summary = json.loads(out.read_text())
    metrics = runs / name / "metrics.jsonl"
    records = sum(1 for _ in metrics.open())
    sim_wall = summary["wall_time_s"]
    hwm_kib, cpu = rss.read_text().split()
    startup = summary["ray"]["startup_s"] if ray else 0.0
    return {
        "nodes": nodes, "mode": mode, "rounds": rounds, "ray": ray, "ray_startup_s": startup,
        "driver_cpu_s_per_round": float(cpu) / rounds,
        "local_steps": summary["scenario"]["train"]["local_steps"],
        "warmup_steps": summary["scenario"]["train"]["warmup_steps"],
        # with Ray, per round and per second without the start (connecting, shards, their learners)
        "process_wall_s": wall, "sim_wall_s": sim_wall, "wall_per_round_s": (sim_wall - startup) / rounds,
        "node_rounds_per_s": nodes * rounds / (sim_wall - startup),
        "peak_rss_mib": int(hwm_kib) / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "bytes_per_node_per_round": summary["bytes_per_node_per_round"],
        "global": summary["global"]["mean"], "personal": summary["personal"]["mean"],
        "metrics_bytes_per_record": metrics.stat().st_size / max(records, 1),
    }


def gemm_peak(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """Best-of fp32 GFLOPS of an n^3 matrix product on `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_costs(steps: int = 40, repeats: int = 3) -> list[dict]:
    """Per architecture of the quickstart: ms per distillation step (Adam as built, and fused), FLOPs per
    step, and the share of the step's time inside aten operators; one thread, as the simulation runs."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from p2pfl.config import load_scenario
    from p2pfl.sim import Simulation

    torch.set_num_threads(1)
    built = Simulation(load_scenario("sim/quickstart.toml", {"topology.nodes": 6}), run_dir=None).build()
    ref = built.reference
    teacher_x = torch.as_tensor(ref.x[ref.slice_rows(0)])
    teacher_p = torch.softmax(torch.randn(len(teacher_x), built.dataset.num_classes,
                                          generator=torch.Generator().manual_seed(0)), 1)
    out = []
    for learner in built.learners[:3]:  # one of each
        arch = type(learner.model).__name__
        learner.train(5, teacher_x, teacher_p)  # first calls allocate
        with FlopCounterMode(display=False) as flops:
            learner.train(1, teacher_x, teacher_p)
        adams = {}
        for fused in (False, True, False, True)[:2 * repeats]:  # interleaved: the machine's noise hits both
            group = learner.optimizer.param_groups[0]
            learner.optimizer = torch.optim.Adam(group["params"], lr=group["lr"], weight_decay=group["weight_decay"],
                                                 fused=fused)
            learner.train(2, teacher_x, teacher_p)
            adams.setdefault(fused, []).append(_timed(lambda: learner.train(steps, teacher_x, teacher_p)) / steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            wall = _timed(lambda: learner.train(steps, teacher_x, teacher_p))
        in_ops = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")) / 1e6
        ms = statistics.median(adams[False]) * 1e3
        state = [*learner.model.parameters(), *(p.grad for p in learner.model.parameters() if p.grad is not None),
                 *(t for st in learner.optimizer.state.values() for t in st.values() if torch.is_tensor(t)),
                 learner.x, learner.y]
        out.append({"arch": arch, "params": sum(p.numel() for p in learner.model.parameters()),
                    "state_bytes": sum(t.numel() * t.element_size() for t in state),
                    "ms_per_step": ms, "ms_per_step_fused_adam": statistics.median(adams[True]) * 1e3,
                    "gflop_per_step": flops.get_total_flops() / 1e9,
                    "effective_gflops": flops.get_total_flops() / 1e9 / (ms / 1e3),
                    "share_in_aten_ops": in_ops / wall})
    return out


# The PyPI p2pfl (0.4.4) on its own task, as issue 18 measured it beside ours in one session: an MLP
# 40-128-128-10, IID, a ring, 10 rounds of one epoch. It is not installed beside this package (same
# import name) and its task fetches its data online, so its figure is the recorded one, not this run's.
PYPI_P2PFL = {"version": "0.4.4", "node_rounds_per_s": {8: 0.79, 16: 0.78},
              "source": "issue 18, measured on this 2-core machine in one session with ours"}


def pypi_task_sets(nodes: int, runs: Path) -> list[str]:
    """Our fedavg on the PyPI p2pfl's task: its MLP (40-128-128-10) on every node, IID, a ring, 10 rounds of
    one epoch (the node's rows / batch size, no warm-up), the quickstart's data and evaluation."""
    profile = runs / "mlp-128.toml"
    profile.write_text('arch = "mlp"\n[arch_options]\nhidden = 128\nembed_dim = 128\n')
    train_rows = 10_000 * 0.8 / nodes  # quickstart's 10,000 samples, 80% for training
    epoch = -(-int(train_rows) // 100)  # batches of train.batch_size (100)
    return [f"topology.nodes={nodes}", "topology.name=ring", "data.partition=iid", "rounds=10",
            f'profiles=["{profile}"]', f"train.local_steps={epoch}", "train.warmup_steps=0"]


def pypi_side_by_side(runs: Path) -> list[dict]:
    out = []
    for n in (8, 16):
        p = run_point(n, "fedavg", 10, 0, runs, sets=pypi_task_sets(n, runs), name=f"pypi-task-{n}")
        theirs = PYPI_P2PFL["node_rounds_per_s"][n]
        out.append(p | {"task": "pypi-p2pfl", "theirs_node_rounds_per_s": theirs,
                        "speedup": p["node_rounds_per_s"] / theirs})
        print(json.dumps(out[-1]), flush=True)
    return out


RAY_CALL = """import os, sys, time
import numpy as np
import ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
@ray.remote(num_cpus=1)
class Echo:
    def call(self, x):
        return x[:1]
echo = Echo.remote()
x = np.zeros((200, 40), np.float32)  # a reference slice, as a predict call sends it
ray.get(echo.call.remote(x))
t = time.perf_counter()
for _ in range(200):
    ray.get(echo.call.remote(x))
print((time.perf_counter() - t) / 200 * 1e3)
ray.shutdown()"""


def ray_call_ms(tmp: Path) -> float:
    """The round trip of one remote call carrying a reference slice (32 KB), to an actor on this machine."""
    done = subprocess.run([sys.executable, "-c", RAY_CALL], capture_output=True, text=True, env=ray_env(tmp),
                          timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"bench_scale: the Ray call probe failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--modes", nargs="*", default=["logits", "fedavg"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="local and warm-up steps (0: the scenario's)")
    ap.add_argument("--no-steps", action="store_true", help="skip the per-step section")
    ap.add_argument("--pypi-task", action="store_true", help="our fedavg on the PyPI p2pfl's task (ring of 8 "
                    "and 16, IID, MLP 40-128-128-10, 10 rounds of one epoch) beside its recorded figure")
    ap.add_argument("--ray", action="store_true", help="each point also on a local Ray cluster (ray = 'local': "
                    "one shard per core), and the cost of one remote call")
    ap.add_argument("--label", default="", help="what this run measures (e.g. a commit), for the table")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_scale.json"))
    args = ap.parse_args()

    result = {"command": "python scripts/bench_scale.py " + shlex.join(sys.argv[1:]),
              "date": dt.date.today().isoformat(), "machine": machine(), "commit": commit(), "label": args.label,
              "gemm_gflops": {"1_thread": gemm_peak(1), "2_threads": gemm_peak(2)}, "points": [], "steps": []}
    print(json.dumps(result["gemm_gflops"]), flush=True)
    if not args.no_steps:
        result["steps"] = step_costs()
        for row in result["steps"]:
            print(json.dumps(row), flush=True)
    with tempfile.TemporaryDirectory(prefix="p2pfl-scale-") as tmp:
        if args.ray:
            result["ray_call_ms"] = ray_call_ms(Path(tmp))
            print(json.dumps({"ray_call_ms": result["ray_call_ms"]}), flush=True)
        if args.pypi_task:
            result["pypi_task"] = pypi_side_by_side(Path(tmp))
            result["pypi_p2pfl"] = PYPI_P2PFL
        for mode in args.modes:
            for n in args.nodes:
                for ray in (False, True) if args.ray else (False,):
                    result["points"].append(run_point(n, mode, args.rounds, args.steps, Path(tmp), ray=ray))
                    print(json.dumps(result["points"][-1]), flush=True)
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    table(result, out.name)
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, mem) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in sorted({p["mode"] for p in result["points"]}):
        pts = sorted((p for p in result["points"] if p["mode"] == mode and not p.get("ray")), key=lambda p: p["nodes"])
        n = [p["nodes"] for p in pts]
        rate.plot(n, [p["node_rounds_per_s"] for p in pts], "o-", label=mode)
        mem.plot(n, [p["peak_rss_mib"] / 1024 for p in pts], "o-", label=mode)
    for ax, title, unit in ((rate, "Throughput", "node-rounds per second (wall)"),
                            (mem, "Peak memory of the process", "peak RSS (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("nodes")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"p2pfl sim on {result['machine']}", fontsize=9)
    save_figure(fig, path)


def table(result: dict, source: str) -> None:
    md = ROOT / "BENCHMARKS.md"
    date = result["date"]
    rows = [f"| {date} | {p['mode']} | {p['nodes']} | {p['rounds']} | {p['local_steps']} / {p['warmup_steps']} | "
            f"{p['wall_per_round_s']:.1f} | {p['node_rounds_per_s']:.2f} | {p['peak_rss_mib'] / 1024:.2f} | "
            f"{p['bytes_per_node_per_round'] / 1024:.1f} | {p['metrics_bytes_per_record']:.0f} | {source} |"
            for p in result["points"] if not p.get("ray")]
    add_rows(md, "<!-- bench_scale points -->",
             "### Scale (`scripts/bench_scale.py`): one process, 2 cores\n\n"
             "| date | mode | nodes | rounds | local / warm-up steps | wall per round (s) | node-rounds/s | "
             "peak RSS (GiB) | KB per node per round | metrics bytes per record | JSON |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|", rows)
    here = {(p["mode"], p["nodes"]): p for p in result["points"] if not p.get("ray")}
    rows = [f"| {date} | {p['mode']} | {p['nodes']} | {p['rounds']} | {p['local_steps']} / {p['warmup_steps']} | "
            f"{here[p['mode'], p['nodes']]['wall_per_round_s']:.2f} | {p['wall_per_round_s']:.2f} | "
            f"{p['wall_per_round_s'] - here[p['mode'], p['nodes']]['wall_per_round_s']:+.2f} | "
            f"{p['driver_cpu_s_per_round']:.2f} | {p['ray_startup_s']:.1f} | {result['ray_call_ms']:.1f} | {source} |"
            for p in result["points"] if p.get("ray")]
    if rows:
        add_rows(md, "<!-- bench_scale ray -->",
                 "On a local Ray cluster (`--ray`: ray = 'local', one shard per core; per round without the start):\n\n"
                 "| date | mode | nodes | rounds | local / warm-up steps | wall per round, one process (s) | "
                 "on Ray (s) | Ray's cost per round (s) | driver CPU per round (s) | Ray start (s) | "
                 "one remote call (ms) | JSON |\n|---|---|---|---|---|---|---|---|---|---|---|---|", rows)
    rows = [f"| {date} | {p['nodes']} | {p['local_steps']} | {p['node_rounds_per_s']:.1f} | "
            f"{p['theirs_node_rounds_per_s']:.2f} (p2pfl {result['pypi_p2pfl']['version']}, recorded) | "
            f"{p['speedup']:.0f}x | {p['peak_rss_mib']:.0f} | {p['global']:.3f} | {source} |"
            for p in result.get("pypi_task", [])]
    add_rows(md, "<!-- bench_scale pypi -->",
             "Beside the PyPI p2pfl on its own task (fedavg, MLP 40-128-128-10, IID, ring, 10 rounds of one epoch; "
             "its figure is the one recorded in issue 18, on this machine):\n\n"
             "| date | nodes | steps per round (one epoch) | ours: node-rounds/s | PyPI p2pfl: node-rounds/s | "
             "ours / theirs | our peak RSS (MiB) | our global | JSON |\n|---|---|---|---|---|---|---|---|---|", rows)
    gemm = result["gemm_gflops"]
    rows = [f"| {date} | {s['arch']} | {s['params']} | {s['state_bytes'] / 1024:.0f} KiB | {s['ms_per_step']:.2f} | "
            f"{s['ms_per_step_fused_adam']:.2f} | {s['gflop_per_step'] * 1e3:.0f} | {s['effective_gflops']:.1f} | "
            f"{gemm['1_thread']:.0f} / {gemm['2_threads']:.0f} | {s['share_in_aten_ops']:.0%} | {source} |"
            for s in result["steps"]]
    add_rows(md, "<!-- bench_scale steps -->",
             "Where one training step's time goes (100 labelled + 200 reference rows, one thread):\n\n"
             "| date | arch | params | tensor bytes per node | ms per step | ms, fused Adam | MFLOP per step | "
             "effective GFLOPS | GEMM peak GFLOPS (1 / 2 threads) | time in aten ops | JSON |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|", rows)


if __name__ == "__main__":
    sys.exit(main())
