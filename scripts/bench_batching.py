"""Does training same-architecture nodes as one batched computation pay on this machine? (issue 18)

    python scripts/bench_batching.py                      # N = 5 and 20 nodes of each quickstart architecture
    python scripts/bench_batching.py --nodes 5 64 --device cuda

For each architecture of the quickstart (the zoo's MLP, CNN1D and GRU at its shapes: 40-value signals,
10 classes, 300 rows a step as a distillation step has) and each N: the forward and backward of N
nodes' losses, each node its own parameters and rows,
  loop     one node after the other (what the simulation does today),
  bmm      all N at once, each node's parameters stacked, the architecture written out as one batched
           matrix product (bmm over the nodes) per layer: per time step for the GRU, unfold + bmm for
           the CNN1D's convolutions; autograd's backward,
  vmap     torch.func.vmap over the stacked parameters (MLP and CNN1D, whose convolutions it turns into
           grouped ones; nn.GRU has no batching rule),
checked to give the loop's gradients (max relative difference printed and stored), then timed
interleaved (the machine's noise hits both) and the median kept. The optimizer step is left out: it is
per node in both. Writes scripts/results/bench_batching.json and a table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

ROOT = Path(__file__).resolve().parent.parent

from benchrows import add_rows, commit, machine  # noqa: E402  (scripts/ is on sys.path when a script runs)
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.models import build_model  # noqa: E402
from p2pfl.models.zoo import _tokens  # noqa: E402

LENGTH, CLASSES, ROWS = 40, 10, 300


def loop_grads(models, x, y) -> list[list[torch.Tensor]]:
    out = []
    for m, xi, yi in zip(models, x, y):
        m.zero_grad(set_to_none=True)
        F.cross_entropy(m(xi), yi).backward()
        out.append([p.grad for p in m.parameters()])
    return out


def vmap_step(models):
    """A function (x, y) -> each node's gradients, in `parameters()` order, from one vmapped call."""
    params, buffers = stack_module_state(models)
    base = models[0]

    def loss(p, b, xi, yi):
        return F.cross_entropy(functional_call(base, (p, b), (xi,)), yi)

    per_node = vmap(grad(loss))  # every argument batched over its first dimension: the nodes
    names = [name for name, _ in base.named_parameters()]

    def step(x, y):
        g = per_node(params, buffers, x, y)
        return [[g[name][i] for name in names] for i in range(len(models))]

    return step


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each node's linear layer on its own rows: (N, B, in) x (N, out, in) -> (N, B, out)."""
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def mlp_forward(x, w1, b1, w2, b2, w_o, b_o):
    return linear(F.relu(linear(F.relu(linear(x, w1, b1)), w2, b2)), w_o, b_o)


def conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, stride: int = 2, pad: int = 2) -> torch.Tensor:
    """Each node's Conv1d as unfold + one batched matrix product: (N, B, C, L) -> (N, B, out, L')."""
    n, rows, c, _ = x.shape
    out_c, _, k = w.shape[1:]
    cols = F.pad(x, (pad, pad)).unfold(3, k, stride)  # (N, B, C, L', k)
    length = cols.shape[3]
    cols = cols.permute(0, 1, 3, 2, 4).reshape(n, rows * length, c * k)
    y = linear(cols, w.reshape(n, out_c, c * k), b)  # (N, B * L', out)
    return y.reshape(n, rows, length, out_c).transpose(2, 3)


def cnn1d_forward(x, w1, b1, w2, b2, w3, b3, w_p, b_p, w_o, b_o):
    h = x.unsqueeze(2)  # (N, B, 1, L)
    for w, b in ((w1, b1), (w2, b2), (w3, b3)):
        h = F.relu(conv1d(h, w, b))
    e = F.relu(linear(h.reshape(*h.shape[:2], -1), w_p, b_p))  # flattened channel-major, as nn.Flatten
    return linear(e, w_o, b_o)


def gru_forward(x, w_ih, w_hh, b_ih, b_hh, w_p, b_p, w_o, b_o, *, chunk: int):
    """The zoo's GRU: tokens -> GRU (one bmm for every time step's input projection, one per time step
    for the hidden state) -> proj -> head."""
    n, b = x.shape[:2]
    tok = _tokens(x.reshape(n * b, -1), chunk).reshape(n, b, -1, chunk)  # (N, B, T, chunk)
    steps, hidden = tok.shape[2], w_hh.shape[2]
    gi = linear(tok.reshape(n, b * steps, chunk), w_ih, b_ih)
    gi = gi.reshape(n, b, steps, 3 * hidden).unbind(2)  # unbind: a cheap backward, unlike indexing per step
    h = x.new_zeros(n, b, hidden)
    for t in range(steps):
        i_r, i_z, i_n = gi[t].chunk(3, 2)
        h_r, h_z, h_n = linear(h, w_hh, b_hh).chunk(3, 2)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        cand = torch.tanh(i_n + r * h_n)
        h = cand + z * (h - cand)
    return linear(F.relu(linear(h, w_p, b_p)), w_o, b_o)


def bmm_step(models, arch: str):
    """The architecture written out with the nodes' parameters stacked (in `parameters()` order) and
    one batched matrix product per layer; autograd's backward."""
    leaves = [torch.stack([p.detach() for p in ps]).requires_grad_() for ps in zip(*(m.parameters() for m in models))]
    forward = functools.partial(gru_forward, chunk=models[0].chunk) if arch == "gru" else \
        {"mlp": mlp_forward, "cnn1d": cnn1d_forward}[arch]

    def step(x, y):
        out = forward(x, *leaves)
        n, b = y.shape
        # the sum over nodes of each node's mean loss: each node's gradients are its own loss's
        F.cross_entropy(out.reshape(n * b, -1), y.reshape(-1), reduction="sum").div(b).backward()
        grads = [t.grad for t in leaves]
        for t in leaves:
            t.grad = None
        return [[g[i] for g in grads] for i in range(n)]

    return step


@torch.no_grad()
def max_rel_diff(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> float:
    return max(float((u - v).abs().max() / (v.abs().max() + 1e-12))
               for ua, ub in zip(a, b) for u, v in zip(ua, ub))


def measure(arch: str, n: int, device: str, repeats: int, calls: int) -> dict:
    torch.manual_seed(0)
    models = [build_model(arch, input_length=LENGTH, num_classes=CLASSES).to(device) for _ in range(n)]
    x = torch.randn(n, ROWS, LENGTH, device=device)
    y = torch.randint(0, CLASSES, (n, ROWS), device=device)
    ways = {"loop": lambda x, y: loop_grads(models, x, y), "bmm": bmm_step(models, arch)}
    if arch != "gru":  # vmap has no batching rule for nn.GRU's fused kernel
        ways["vmap"] = vmap_step(models)
    reference = loop_grads(models, x, y)
    diffs = {name: max_rel_diff(fn(x, y), reference) for name, fn in ways.items() if name != "loop"}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):  # interleaved: the machine's noise hits every way alike
        for name, fn in ways.items():
            fn(x, y)
            sync()
            t = time.perf_counter()
            for _ in range(calls):
                fn(x, y)
            sync()
            times[name].append((time.perf_counter() - t) / calls)
    ms = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    best = min((name for name in ms if name != "loop"), key=ms.get)
    return {"arch": arch, "nodes": n, "device": device, "ms": ms, "ms_loop_per_node": ms["loop"] / n,
            "best": best, "speedup": ms["loop"] / ms[best], "max_rel_grad_diff": diffs}


def table_row(out: dict, r: dict, source: str) -> str:
    ms = r["ms"]
    vmap_ms = f"{ms['vmap']:.1f}" if "vmap" in ms else "-"
    diff = max(r["max_rel_grad_diff"].values())
    return (f"| {out['date']} | {r['device']}, {out['threads']} | {r['arch']} | {r['nodes']} | {ms['loop']:.1f} "
            f"| {ms['bmm']:.1f} | {vmap_ms} | {r['speedup']:.2f}x ({r['best']}) | {diff:.1e} | {source} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--archs", nargs="+", default=["mlp", "cnn1d", "gru"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the simulation trains on one)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_batching.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for arch in args.archs:
        for n in args.nodes:
            rows.append(measure(arch, n, args.device, args.repeats, args.calls))
            print(json.dumps(rows[-1]), flush=True)
    out = {"command": "python scripts/bench_batching.py " + shlex.join(sys.argv[1:]),
           "date": dt.date.today().isoformat(), "machine": machine(), "commit": commit(), "threads": args.threads, "rows": rows}
    atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")
    add_rows(ROOT / "BENCHMARKS.md", "<!-- bench_batching rows -->",
             "Same-architecture nodes batched (`scripts/bench_batching.py`): forward + backward of N nodes' "
             "losses, 300 rows each, one after the other against one batched computation\n\n"
             "| date | device, threads | arch | nodes | ms, one after the other | ms, bmm | ms, vmap "
             "| best speedup | max relative gradient difference | JSON |\n|---|---|---|---|---|---|---|---|---|---|",
             [table_row(out, r, Path(args.out).name) for r in rows])
    print(f"wrote {args.out} and a table in BENCHMARKS.md")


if __name__ == "__main__":
    main()
