"""Real nodes over libp2p on 127.0.0.1: identity, PSK, checkpoints, hostile peers, many processes.

Every address is loopback; every process a test starts is stopped by `Launch.__exit__`.
"""

import dataclasses
import json
import math
import os
import signal
import struct
import sys

import multiaddr
import numpy as np
import pytest
import torch
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pfl import assemble, checkpoint, cli, codecs, wire
from p2pfl.codecs import Encoded
from p2pfl.config import ConfigError, TrainConfig, load_scenario
from p2pfl.launch import Launch, commands_by_host, merge, node_records, plan_nodes
from p2pfl.learner import Learner
from p2pfl.models import build_model
from p2pfl.realnode import RealNodeConfig, parse_shard, run_real_node
from p2pfl.topology import Topology, make_topology
from p2pfl.transport import PeerUnreachable
from p2pfl.transport.libp2p import (
    PROTOCOLS, Libp2pTransport, Policy, load_identity, new_psk, parse_peer, peer_id_of, query_status, read_allowlist,
    read_psk,
)

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
TINY = {
    "name": "tiny", "seed": 0, "profiles": ["mlp", "cnn1d"], "embed_dim": 16,
    "data.source": "synthetic", "data.samples": 800, "data.partition": "shards:2",
    "reference.source": "synthetic", "reference.size": 400, "reference.slice_size": 200,
    "train.warmup_steps": 20, "train.local_steps": 10, "train.batch_size": 32, "train.kd_batch_size": 100,
    "gossip.wait_timeout": 5.0,
}
TINY_SETS = tuple(f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TINY.items())  # as --set


# -- identity, keys, allowlists, shards (no network) -----------------------------------------------

def test_identity_persists_and_is_private(tmp_path):
    first = peer_id_of(load_identity(tmp_path))
    assert peer_id_of(load_identity(tmp_path)) == first and first.startswith("12D3KooW")
    assert (tmp_path / "identity.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "identity.key").write_bytes(b"short")
    with pytest.raises(ValueError, match="not a 32-byte Ed25519 key"):
        load_identity(tmp_path)


def test_psk_files(tmp_path):
    swarm = tmp_path / "swarm.key"
    swarm.write_text(new_psk())
    key = read_psk(swarm)
    assert len(key) == 64 and int(key, 16) >= 0
    bare = tmp_path / "bare.key"
    bare.write_text(key.upper() + "\n")
    assert read_psk(bare) == key
    bare.write_text("abc")
    with pytest.raises(ValueError, match="expected 64 hex characters.*p2pfl psk --out"):
        read_psk(bare)


def test_allowlist(tmp_path):
    pid = peer_id_of(load_identity(tmp_path / "a"))
    f = tmp_path / "allow.txt"
    f.write_text(f"# lab machines\n{pid}  # n0\n\n")
    assert read_allowlist(f) == {pid}
    f.write_text(f"{pid}\nnot-a-peer\n")
    with pytest.raises(ValueError, match=r"allow.txt:2: 'not-a-peer' is not a libp2p peer id"):
        read_allowlist(f)
    assert Policy(allow=frozenset({pid})).admits(pid, set())
    assert not Policy().admits(pid, set()) and Policy(accept_any=True).admits(pid, set())


@pytest.mark.parametrize("text", ["3", "8/8", "-1/4", "a/b", "2/0"])
def test_bad_shard(text):
    with pytest.raises(ConfigError, match="expected I/N"):
        parse_shard(text)


@pytest.mark.parametrize("addr, words", [
    ("/ip4/127.0.0.1/tcp/4001", ["has no /p2p/<peer id>"]),
    ("127.0.0.1:4001", ["has no /p2p/<peer id>"]),
    ("/ip4/127.0.0.1/tcp/4001/p2p/abc", ["'abc' is not a peer id"]),
    ("/p2p/{pid}", ["no address to dial"]),
])
def test_a_peer_address_without_its_id_names_the_expected_form(tmp_path, addr, words):
    pid = peer_id_of(load_identity(tmp_path))
    with pytest.raises(ValueError) as e:
        parse_peer(addr.format(pid=pid))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--peers '{addr.format(pid=pid)}'")
    for w in words + ["expected /ip4/127.0.0.1/tcp/4001/p2p/<peer id>", "'listening on /ip4/.../p2p/12D3KooW...'"]:
        assert w in msg, (w, msg)
    assert "P_P2P" not in msg and "CID" not in msg  # no multiaddr jargon
    good = f"/ip4/127.0.0.1/tcp/4001/p2p/{pid}"
    assert parse_peer(good) == (pid, multiaddr.Multiaddr(good))


def test_checkpoint_round_trip_and_refusal(tmp_path):
    def learner(seed):
        torch.manual_seed(seed)
        x = np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)
        return Learner(build_model("mlp", input_length=40, num_classes=10), x, np.arange(64) % 10,
                       num_classes=10, config=TrainConfig(batch_size=16), total_steps=100, seed=seed)

    a = learner(1)
    a.train(5)
    meta = {"arch": "mlp", "shard": "0/2"}
    path = tmp_path / checkpoint.FILENAME
    # a mode's state in its order (reputations forget the least recently heard first: order is state too)
    mode_state = {"mass": 0.75, "support:z": 0.2, "support:a": 0.9, "standing:m": 0.5}
    checkpoint.save(path, a, round=7, meta=meta, peers={"p": 6}, mode_state=mode_state)
    b = learner(2)
    resumed = checkpoint.load(path, b, meta=meta)
    assert resumed == checkpoint.Resumed(7, {"p": 6}, mode_state) and b.step == a.step == 5
    assert list(resumed.mode_state) == list(mode_state)
    assert np.array_equal(a.get_flat(), b.get_flat())
    a.train(3)
    b.train(3)  # same optimizer moments and random generator: the same next steps
    assert np.allclose(a.get_flat(), b.get_flat())
    with pytest.raises(ValueError, match="belongs to a different node \\(shard: saved '0/2', now '1/2'\\)"):
        checkpoint.load(path, learner(3), meta={"arch": "mlp", "shard": "1/2"})
    assert checkpoint.load(tmp_path / "none.pt", b, meta=meta) is None


def test_launch_plans_peers_from_the_graph(tmp_path):
    topo = Topology.from_graph("ring-4", make_topology("ring", 4))
    plans = plan_nodes(topo, tmp_path, rounds=3, base_port=5000)
    assert [p.port for p in plans] == [5000, 5001, 5002, 5003]
    peers_of_0 = plans[0].argv[plans[0].argv.index("--peers") + 1:]
    assert set(peers_of_0[:2]) == {plans[1].addr, plans[3].addr}
    assert all((tmp_path / p.name / "identity.key").exists() for p in plans)
    lines = commands_by_host(plans)["127.0.0.1"]
    assert len(lines) == 4 and lines[0].startswith("p2pfl node --shard 0/4")


def test_cli_status_of_an_unreachable_node_is_a_clear_error(tmp_path, capsys):
    pid = peer_id_of(load_identity(tmp_path))
    assert cli.main(["status", f"/ip4/127.0.0.1/tcp/1/p2p/{pid}", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: cannot reach" in err and "is the node running" in err


def test_a_checkpoint_of_another_model_shape_is_one_clear_error(tmp_path):
    x = np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)

    def learner(embed_dim):
        return Learner(build_model("mlp", input_length=40, num_classes=10, embed_dim=embed_dim), x, np.arange(64) % 10,
                       num_classes=10, config=TrainConfig(batch_size=16), total_steps=100, seed=0)

    path = tmp_path / checkpoint.FILENAME
    checkpoint.save(path, learner(32), round=3, meta={"arch": "mlp"}, peers={})
    with pytest.raises(ValueError, match="holds a model of another shape .* embed_dim, arch_options or adapter"):
        checkpoint.load(path, learner(64), meta={"arch": "mlp"})


def test_cli_node_refuses_another_nodes_checkpoint(cache, tmp_path, capsys):
    # --min-peers 0: alone, the first run would wait out start_timeout (60 s) for a neighbour
    args = ["node", "--state-dir", str(tmp_path), "--rounds", "1", "--listen", LOOPBACK, "--min-peers", "0"]
    for kv in TINY_SETS:
        args += ["--set", kv]
    assert cli.main(args + ["--shard", "0/2"]) == 0
    capsys.readouterr()
    assert cli.main(args + ["--shard", "1/2"]) == 2  # raised inside the node's nursery, still one line
    err = capsys.readouterr().err
    assert "Traceback" not in err and "belongs to a different node" in err and "shard: saved '0/2', now '1/2'" in err


# -- transports in one process ---------------------------------------------------------------------

async def test_frames_cross_and_a_wrong_psk_is_refused(tmp_path):
    psk, other = new_psk().split()[-1], new_psk().split()[-1]
    a_key, b_key, c_key = (load_identity(tmp_path / n) for n in "abc")
    async with Libp2pTransport.open(key_pair=b_key, listen=LOOPBACK, psk=psk, policy=Policy(accept_any=True)) as b:
        peers = [b.addrs[0]]
        async with Libp2pTransport.open(key_pair=a_key, listen=LOOPBACK, psk=psk, peers=peers) as a:
            # an adapter of 800k parameters in fp32: a 3.2 MB knowledge frame, several yamux windows
            adapter = np.random.default_rng(0).standard_normal(800_000).astype(np.float32)
            big = wire.encode(wire.Knowledge(sender="a", round=1, time=0.0, kind="params", ref_start=0, ref_count=0,
                                             payload=codecs.encode(adapter, "fp32"), label_counts=(), samples=0,
                                             val_acc=0.0))
            assert len(big) > 3 * 1024 * 1024
            await a.send(b.local_id, b"hello-bytes", "hello")  # returns once b has it (acknowledged)
            await a.send(b.local_id, big, "knowledge")
            with trio.fail_after(20):
                assert await b.receive() == (a.local_id, b"hello-bytes")
                assert await b.receive() == (a.local_id, big)
            np.testing.assert_array_equal(wire.decode(big).array(), adapter)
        async with Libp2pTransport.open(key_pair=c_key, listen=LOOPBACK, psk=other, peers=peers,
                                        dial_timeout=3) as c:
            with pytest.raises(PeerUnreachable, match="dial failed"):
                await c.send(b.local_id, b"x", "hello")
            with pytest.raises(PeerUnreachable, match="next dial in"):  # backing off, no new dial
                await c.send(b.local_id, b"x", "hello")


async def test_a_renewed_connection_carries_frames_again_and_none_is_cut_while_bytes_come(tmp_path):
    a_key, b_key = load_identity(tmp_path / "a"), load_identity(tmp_path / "b")
    async with Libp2pTransport.open(key_pair=b_key, listen=LOOPBACK, policy=Policy(accept_any=True)) as b:
        async with Libp2pTransport.open(key_pair=a_key, listen=LOOPBACK, peers=[b.addrs[0]]) as a:
            await a.send(b.local_id, b"hello-bytes", "hello")
            await b.send(a.local_id, b"hi back", "hello")
            with trio.fail_after(10):
                assert await a.receive() == (b.local_id, b"hi back")
            # bytes of b's came after the moment we call its silence's start: no reconnect
            assert not await a.reconnect(b.local_id, silent_since=trio.current_time() - 60)
            assert a.host.get_network().get_connections(ID.from_base58(b.local_id))
            # silent since now: the connection goes, and the next send dials a new one at once
            assert await a.reconnect(b.local_id, silent_since=trio.current_time())
            assert not a.host.get_network().get_connections(ID.from_base58(b.local_id))
            await a.send(b.local_id, b"after", "knowledge")
            with trio.fail_after(10):
                assert await b.receive() == (a.local_id, b"hello-bytes")
                assert await b.receive() == (a.local_id, b"after")


async def test_a_peer_outside_the_policy_is_refused(tmp_path):
    a_key, b_key = load_identity(tmp_path / "a"), load_identity(tmp_path / "b")
    async with Libp2pTransport.open(key_pair=b_key, listen=LOOPBACK) as b:  # no neighbours, no allowlist
        async with Libp2pTransport.open(key_pair=a_key, listen=LOOPBACK, peers=[b.addrs[0]]) as a:
            with pytest.raises(PeerUnreachable):
                await a.send(b.local_id, b"let me in", "hello")  # the stream is reset, no ack
            with trio.fail_after(10):
                peer, error = await b.receive()
            assert peer == a.local_id and isinstance(error, wire.RemoteProtocolError) and error.reason == "refused"


async def test_hostile_peer_is_counted_and_the_node_keeps_training(cache, tmp_path):
    scenario = load_scenario(None, TINY | {"rounds": 100_000, "gossip.wait_timeout": 1.0})
    cfg = RealNodeConfig(scenario, shard=0, shards=2, state_dir=tmp_path / "node", listen=LOOPBACK,
                         policy=Policy(accept_any=True), name="target")
    ready = trio.Event()
    addrs: list[str] = []

    def on_start(a, start):
        addrs.extend(a)
        ready.set()

    data, reference = assemble.data_and_reference(scenario)
    classes = data.num_classes
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_real_node(cfg, on_start=on_start))
        with trio.fail_after(60):
            await ready.wait()
        target = addrs[0]
        info = info_from_p2p_addr(multiaddr.Multiaddr(target))
        attacker_key = create_new_key_pair()
        me = peer_id_of(attacker_key)
        host = new_host(key_pair=attacker_key, muxer_preference="YAMUX")
        async with host.run([multiaddr.Multiaddr(LOOPBACK)]):
            await host.connect(info)

            async def stream(family, data, ack=False):
                s = await host.new_stream(info.peer_id, [PROTOCOLS[family]])
                await s.write(data)
                if ack:
                    assert await s.read(1) == b"\x06"
                return s

            await stream("knowledge", wire.frame(np.random.default_rng(0).bytes(200)))  # random bytes
            await stream("knowledge", struct.pack(">I", 100 * 1024 * 1024))  # a 100 MB length prefix
            hello = wire.Hello(node_id=me, version=wire.PROTOCOL_VERSION, arch="mlp", mode="logits",
                               num_classes=classes, ref_digest=reference.digest, codecs=("fp32",), param_count=0)
            await stream("hello", wire.frame(wire.encode(hello)), ack=True)

            def knowledge(rows, values):
                payload = Encoded("fp32", (rows, classes), np.full((rows, classes), values, np.float32).tobytes())
                return wire.frame(wire.encode(wire.Knowledge(
                    sender=me, round=1, time=0.0, kind="logits", ref_start=0, ref_count=rows, payload=payload,
                    label_counts=(), samples=0, val_acc=0.0)))

            s = await stream("knowledge", knowledge(4, math.nan))
            await s.write(knowledge(reference.size + 1, 0.0))  # more rows than the reference has
            await s.write(b"\x00\x00\x00\x05" + b"\xc1" * 5)  # a frame of msgpack's one unused byte

            want = {"malformed", "oversized", "non-finite", "shape"}  # and the random bytes' reason
            with trio.fail_after(60):
                while True:
                    status = await query_status(target)
                    if want <= set(status["rejected"]) and sum(status["rejected"].values()) >= 5:
                        break
                    await trio.sleep(0.5)
            first_round = status["round"]
            with trio.fail_after(60):
                while (await query_status(target))["round"] <= first_round + 2:
                    await trio.sleep(0.5)  # still training after all that

            # the CLI reads the same status
            proc = await trio.run_process([sys.executable, "-m", "p2pfl.cli", "status", "--json", target],
                                          capture_stdout=True, capture_stderr=True)
        shown = json.loads(proc.stdout)
        assert shown["name"] == "target" and want <= set(shown["rejected"])
        assert me in shown["neighbours"]  # --accept-any: its compatible hello made it a neighbour
        nursery.cancel_scope.cancel()


# -- many processes ---------------------------------------------------------------------------------

ROUNDS = 6


@pytest.fixture(scope="module")
def ring_run(cache, tmp_path_factory):
    """Three `p2pfl node` processes on a triangle; node n1 is SIGKILLed after round 2 and restarted."""
    run_dir = tmp_path_factory.mktemp("launch")
    topo = Topology.from_graph("ring-3", make_topology("ring", 3))
    port = 20_000 + os.getpid() % 20_000
    plans = plan_nodes(topo, run_dir, rounds=ROUNDS, overrides=TINY_SETS, base_port=port)
    victim = plans[1]
    killed = []

    def chaos(launch):
        if not killed and node_records(victim) and node_records(victim)[-1]["round"] >= 2:
            launch.kill(victim.name)
            killed.append(node_records(victim)[-1]["round"])
            launch.start(victim)

    with Launch(plans) as launch:
        launch.wait(on_tick=chaos, tick=0.2, timeout=240)
    return plans, launch, killed


def test_processes_finish_cleanly(ring_run):
    plans, launch, killed = ring_run
    assert launch.exit_codes() == {p.name: 0 for p in plans}, [
        (p.state_dir / "node.log").read_text()[-2000:] for p in plans]
    assert killed and [e["event"] for e in launch.events].count("kill") == 1


def test_knowledge_crosses_the_wire_and_accuracy_rises(ring_run):
    plans, _, _ = ring_run
    summary = merge(plans, ROUNDS)
    assert summary["nodes"] == 3
    for p in plans:
        records = node_records(p)
        assert records[-1]["round"] == ROUNDS
        assert sum(r["bytes_in"] for r in records) > 0
        assert max(r["contributors"] for r in records) >= 2  # taught by both neighbours at some round
    curve = summary["curve"]
    assert curve[-1]["global"] > curve[0]["global"] + 0.05, curve


def test_a_liar_joins_a_ring_of_real_processes_and_nobody_crashes(cache, tmp_path):
    # four `p2pfl node` processes on a ring; n2 is a drill liar (a confident wrong class on every row,
    # claimed with 10,000 samples per class) that the honest nodes running the claims defence hear
    topo = Topology.from_graph("ring-4", make_topology("ring", 4))
    port = 20_000 + (os.getpid() + 7) % 20_000
    sets = TINY_SETS + ("gossip.defence=claims",)
    plans = plan_nodes(topo, tmp_path, rounds=4, overrides=sets, base_port=port)
    liar = plans[2]
    plans[2] = dataclasses.replace(liar, argv=liar.argv + ("--attack", "shift+inflate", "--attack-drill"))
    with Launch(plans) as launch:
        launch.wait(timeout=240)
    assert launch.exit_codes() == {p.name: 0 for p in plans}, [
        (p.state_dir / "node.log").read_text()[-2000:] for p in plans]
    assert all(r["attacker"] == "shift+inflate" for r in node_records(liar))
    for honest in (plans[1], plans[3]):  # the liar's neighbours heard it and went on
        records = node_records(honest)
        assert records[-1]["round"] == 4 and "attacker" not in records[-1]
        assert max(r["contributors"] for r in records) >= 2


def test_a_node_lies_only_in_a_drill(capsys, tmp_path):
    assert cli.main(["node", "--attack", "shift", "--state-dir", str(tmp_path / "unused")]) == 2
    assert "add --attack-drill to confirm" in capsys.readouterr().err


def test_restarted_node_resumes_from_its_checkpoint(ring_run):
    plans, _, killed = ring_run
    victim = plans[1]
    log = (victim.state_dir / "node.log").read_text()
    assert "resuming after round" in log
    resumed_after = int(log.split("resuming after round ")[1].split()[0])
    # at most the round in flight is redone: its metrics line is written just before its checkpoint,
    # so a kill between the two (the kill waits for that line) resumes one round earlier
    assert resumed_after >= 1 and resumed_after >= killed[0] - 1
    rounds = [r["round"] for r in node_records(victim)]
    assert rounds[0] == 1 and rounds[-1] == ROUNDS and 1 not in rounds[resumed_after:]  # no restart from 0


def test_sigint_says_bye_and_exits_zero(cache, tmp_path):
    topo = Topology.from_graph("ring-2", make_topology("ring", 2))
    plans = plan_nodes(topo, tmp_path, rounds=100_000, overrides=TINY_SETS, base_port=21_000 + os.getpid() % 20_000)
    sent = []

    def interrupt_once_training(launch):
        if not sent and all(node_records(p) for p in plans):
            for proc in launch.procs.values():
                proc.send_signal(signal.SIGINT)
            sent.append(True)

    with Launch(plans) as launch:
        launch.wait(on_tick=interrupt_once_training, tick=0.2, timeout=120)
    assert launch.exit_codes() == {p.name: 0 for p in plans}
    assert all("SIGINT: saying bye" in (p.state_dir / "node.log").read_text() for p in plans)


def test_hybrid_mode_sends_both_kinds_between_processes(cache, tmp_path):
    # unlike models (mlp, cnn1d, mlp) share a bottleneck adapter and logits; real nodes average with push-sum
    topo = Topology.from_graph("ring-3", make_topology("ring", 3))
    sets = TINY_SETS + ("mode=hybrid", "gossip.codec=int8")
    plans = plan_nodes(topo, tmp_path, rounds=4, overrides=sets, base_port=22_000 + os.getpid() % 20_000)
    with Launch(plans) as launch:
        launch.wait(tick=0.2, timeout=180)
    assert launch.exit_codes() == {p.name: 0 for p in plans}, [
        (p.state_dir / "node.log").read_text()[-2000:] for p in plans]
    for p in plans:
        records = node_records(p)
        assert [r["round"] for r in records] == [1, 2, 3, 4]
        assert all(r["rejected"] == {} for r in records)
        # both kinds (logits on a reference slice, the adapter) from both neighbours in some round
        assert {"logits": 2, "params": 2} in [r["inbox"] for r in records]
