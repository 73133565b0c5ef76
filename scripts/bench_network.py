"""Network benchmark: knowledge frames over the libp2p transport vs raw py-libp2p vs a raw TCP socket.

    python scripts/bench_network.py                       # throughput + small frames (loopback)
    python scripts/bench_network.py --launch-run runs/launch-ring-8   # + round times of a launcher run

All three carry the same bytes: K encoded knowledge frames of the quickstart size (2,000 reference
rows x 10 classes, fp32). "raw tcp" writes them to a trio socket, "raw libp2p" to one py-libp2p
stream (Noise + yamux), "transport" sends each through Libp2pTransport.send and the receiver takes
them from Libp2pTransport.receive and decodes them with wire.decode (every check a node makes).
"codec path" times wire.encode + frame + FrameDecoder + wire.decode in memory, without a network:
if it is much faster than the transport, framing and encoding are not the bottleneck.
Writes scripts/results/bench_network.json and a row in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from functools import partial
from pathlib import Path

import multiaddr
import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchrows import add_rows, commit, machine  # noqa: E402
from p2pfl import wire  # noqa: E402
from p2pfl.codecs import encode  # noqa: E402
from p2pfl.files import atomic_write_text  # noqa: E402
from p2pfl.metrics import read_metrics  # noqa: E402
from p2pfl.transport.libp2p import PROTOCOLS, Libp2pTransport, Policy, make_host  # noqa: E402
from libp2p.crypto.ed25519 import create_new_key_pair  # noqa: E402
from libp2p.peer.peerinfo import info_from_p2p_addr  # noqa: E402

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def knowledge_bodies(k: int, rows: int = 2000, classes: int = 10) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [wire.encode(wire.Knowledge(
        sender="bench", round=i, time=0.0, kind="logits", ref_start=0, ref_count=rows,
        payload=encode(rng.standard_normal((rows, classes)).astype(np.float32), "fp32"),
        label_counts=tuple(range(classes)), samples=100, val_acc=0.5)) for i in range(k)]


def codec_path(bodies: list[bytes]) -> float:
    """Seconds to frame and decode every body in memory (the receiver's whole parsing work)."""
    expect = wire.Expectations(num_classes=10, param_count=0, ref_size=100_000)
    start = time.perf_counter()
    stream = b"".join(wire.frame(b) for b in bodies)
    decoder = wire.FrameDecoder()
    decoder.feed(stream)
    while (body := decoder.next_frame()) is not None:
        wire.decode(body, expect=expect).array()
    return time.perf_counter() - start


class Sink:
    """The receiving end of a raw measurement: counts bytes until `total` arrived."""

    def __init__(self, total: int):
        self.total = total
        self.done = trio.Event()
        self.t0 = self.elapsed = 0.0

    async def drain(self, read) -> None:
        got = 0
        while got < self.total:
            got += len(await read(1 << 20))
        self.elapsed = time.perf_counter() - self.t0
        self.done.set()


async def raw_tcp(chunks: list[bytes]) -> float:
    sink = Sink(sum(map(len, chunks)))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, lambda s: sink.drain(s.receive_some), 0,
                                                host="127.0.0.1"))
        client = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
        sink.t0 = time.perf_counter()
        for c in chunks:
            await client.send_all(c)
        await sink.done.wait()
        await client.aclose()
        nursery.cancel_scope.cancel()
    return sink.elapsed


async def raw_libp2p(chunks: list[bytes]) -> float:
    sink = Sink(sum(map(len, chunks)))
    a, b = make_host(create_new_key_pair(), None), make_host(create_new_key_pair(), None)
    b.set_stream_handler(PROTOCOLS["knowledge"], lambda stream: sink.drain(stream.read))
    async with a.run([multiaddr.Multiaddr(LOOPBACK)]), b.run([multiaddr.Multiaddr(LOOPBACK)]):
        await a.connect(info_from_p2p_addr(b.get_addrs()[0]))
        stream = await a.new_stream(b.get_id(), [PROTOCOLS["knowledge"]])
        sink.t0 = time.perf_counter()
        for c in chunks:
            await stream.write(c)
        with trio.fail_after(120):
            await sink.done.wait()
    return sink.elapsed


async def transport(bodies: list[bytes], *, decode: bool) -> float:
    """Seconds from the first send to the last body received (and decoded, if asked)."""
    expect = wire.Expectations(num_classes=10, param_count=0, ref_size=100_000)
    async with Libp2pTransport.open(key_pair=create_new_key_pair(), listen=LOOPBACK, policy=Policy(accept_any=True),
                                    flood_frames=len(bodies) + 1) as b:  # the flood guard would stop a benchmark
        async with Libp2pTransport.open(key_pair=create_new_key_pair(), listen=LOOPBACK, peers=[b.addrs[0]]) as a:
            await a.send(b.local_id, bodies[0], "knowledge")  # connection and stream set up outside the timing
            await b.receive()
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                async def sender():
                    for body in bodies:
                        await a.send(b.local_id, body, "knowledge")
                nursery.start_soon(sender)
                for _ in bodies:
                    _, body = await b.receive()
                    if decode:
                        wire.decode(body, expect=expect)
            return time.perf_counter() - t0


def launch_round_times(run_dir: Path) -> dict:
    """Per-round wall time of every node of a launcher run (metrics 'time' is each process's clock)."""
    gaps, waits = [], []
    node_dirs = sorted(p for p in run_dir.iterdir() if (p / "metrics.jsonl").exists())
    for node_dir in node_dirs:
        records = read_metrics(node_dir / "metrics.jsonl")
        times = [r["time"] for r in records]
        gaps += [b - a for a, b in zip(times, times[1:]) if b > a]
        waits += [r["waited"] for r in records[1:]]
    return {"nodes": len(node_dirs), "round_s_median": statistics.median(gaps),
            "round_s_p90": float(np.percentile(gaps, 90)), "waited_s_median": statistics.median(waits)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200, help="knowledge frames per measurement")
    ap.add_argument("--small", type=int, default=2000, help="small frames for the messages/s measurement")
    ap.add_argument("--repeats", type=int, default=3, help="best of N for each measurement")
    ap.add_argument("--launch-run", type=Path, help="a launch_local.py run dir to report round times from")
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_network.json"))
    ap.add_argument("--no-markdown", action="store_true")
    args = ap.parse_args()

    bodies = knowledge_bodies(args.frames)
    framed = [wire.frame(b) for b in bodies]
    mb = sum(map(len, framed)) / 1e6
    best = lambda f: min(f() for _ in range(args.repeats))  # noqa: E731
    res = {
        "frame_bytes": len(framed[0]), "frames": args.frames, "megabytes": mb,
        "raw_tcp_MBps": mb / best(lambda: trio.run(raw_tcp, framed)),
        "raw_libp2p_MBps": mb / best(lambda: trio.run(raw_libp2p, framed)),
        "transport_MBps": mb / best(lambda: trio.run(lambda: transport(bodies, decode=False))),
        "transport_decoded_MBps": mb / best(lambda: trio.run(lambda: transport(bodies, decode=True))),
        "codec_path_MBps": mb / best(lambda: codec_path(bodies)),
    }
    small = [wire.encode(wire.StatusRequest(i)) for i in range(args.small)]
    res["small_frame_bytes"] = len(small[0]) + 4
    res["small_frames_per_s"] = args.small / best(lambda: trio.run(lambda: transport(small, decode=True)))
    res["transport_vs_raw_libp2p"] = res["transport_MBps"] / res["raw_libp2p_MBps"]
    if args.launch_run:
        res["launch"] = {"run": str(args.launch_run)} | launch_round_times(args.launch_run)
    res |= {"machine": machine(), "commit": commit(),
            "date": date.today().isoformat(), "command": "python scripts/bench_network.py " + " ".join(sys.argv[1:])}
    atomic_write_text(args.out, json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    if not args.no_markdown:
        launch = res.get("launch")
        row = (f"| {res['date']} | {res['machine']} | `{res['command']}` | {res['frame_bytes'] / 1e3:.0f} KB frames: "
               f"raw TCP {res['raw_tcp_MBps']:.0f} MB/s, raw libp2p {res['raw_libp2p_MBps']:.0f} MB/s, transport "
               f"{res['transport_MBps']:.0f} MB/s ({100 * res['transport_vs_raw_libp2p']:.0f}% of raw libp2p), "
               f"transport + decode {res['transport_decoded_MBps']:.0f} MB/s, codec path alone "
               f"{res['codec_path_MBps']:.0f} MB/s; {res['small_frames_per_s']:.0f} small frames/s"
               + (f"; {launch['nodes']}-process round {launch['round_s_median']:.2f} s median "
                  f"(p90 {launch['round_s_p90']:.2f} s, waiting {launch['waited_s_median']:.2f} s)" if launch else "")
               + " |\n")
        add_rows(ROOT / "BENCHMARKS.md", "<!-- bench_network rows -->",
                 "## bench_network\n\n| date | machine | command | result |\n|---|---|---|---|", [row.rstrip("\n")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
