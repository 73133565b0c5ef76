"""Tests for p2pfl.transport.memory: delays, ordering, loss, faults and byte counts, on trio's mock clock."""

import pytest
import trio

from p2pfl.transport import PeerUnreachable
from p2pfl.transport.memory import LinkModel, MemoryNetwork


async def _receive_all(endpoint, limit: float = 100.0) -> list[tuple[float, str, bytes]]:
    """Everything that arrives within `limit` simulated seconds, stamped with the arrival time."""
    got = []
    with trio.move_on_after(limit):
        while True:
            peer, data = await endpoint.receive()
            got.append((trio.current_time(), peer, data))
    return got


async def test_messages_arrive_after_the_latency(autojump_clock):
    async with MemoryNetwork(LinkModel(latency=0.5, jitter=0.0)) as net:
        a, b = net.endpoint("a"), net.endpoint("b")
        t0 = trio.current_time()
        await a.send("b", b"hello")
        peer, data = await b.receive()
        assert (peer, data) == ("a", b"hello")
        assert trio.current_time() - t0 == pytest.approx(0.5, abs=1e-3)


async def test_jitter_stays_within_its_bounds(autojump_clock):
    async with MemoryNetwork(LinkModel(latency=1.0, jitter=0.2), seed=3) as net:
        a, b = net.endpoint("a"), net.endpoint("b")
        t0 = trio.current_time()
        for i in range(20):
            await a.send("b", bytes([i]))
        got = await _receive_all(b, limit=10)
    delays = [t - t0 for t, _, _ in got]
    assert len(delays) == 20
    assert all(0.8 - 1e-3 <= d <= 1.2 + 1e-3 for d in delays), delays
    assert max(delays) - min(delays) > 0.05  # the jitter is really there


@pytest.mark.parametrize("latency, jitter", [(0.1, 0.1), (0.05, 5.0)])  # jitter far beyond the latency too
async def test_each_link_is_fifo_even_with_large_jitter(autojump_clock, latency, jitter):
    async with MemoryNetwork(LinkModel(latency=latency, jitter=jitter), seed=1) as net:
        a, b, c = net.endpoint("a"), net.endpoint("b"), net.endpoint("c")
        for i in range(100):
            await a.send("c", b"a%d" % i)
            await b.send("c", b"b%d" % i)
            if i % 7 == 0:
                await trio.sleep(0.01)
        got = await _receive_all(c)
    for src in ("a", "b"):
        seq = [data for _, peer, data in got if peer == src]
        assert seq == [src.encode() + b"%d" % i for i in range(100)]


async def test_full_loss_drops_everything_and_counts_it(autojump_clock):
    async with MemoryNetwork(LinkModel(latency=0.01, loss=1.0)) as net:
        a, b = net.endpoint("a"), net.endpoint("b")
        for _ in range(25):
            await a.send("b", b"xyz")
        assert await _receive_all(b, limit=5) == []
        assert net.dropped == 25


async def test_partial_loss_is_reproducible_for_a_seed(autojump_clock):
    async def delivered(seed):
        async with MemoryNetwork(LinkModel(latency=0.01, jitter=0.0, loss=0.5), seed=seed) as net:
            a, b = net.endpoint("a"), net.endpoint("b")
            for i in range(200):
                await a.send("b", b"%d" % i)
            got = [data for _, _, data in await _receive_all(b, limit=5)]
            assert len(got) + net.dropped == 200
            return got

    first = await delivered(7)
    assert 50 < len(first) < 150
    assert await delivered(7) == first
    assert await delivered(8) != first


async def test_down_and_cut_raise_peer_unreachable(autojump_clock):
    async with MemoryNetwork(LinkModel(latency=0.01, jitter=0.0)) as net:
        a, b, c = net.endpoint("a"), net.endpoint("b"), net.endpoint("c")
        net.set_down("b")
        with pytest.raises(PeerUnreachable):
            await a.send("b", b"x")
        with pytest.raises(PeerUnreachable):
            await b.send("a", b"x")  # a node that is down can't send either
        await a.send("c", b"still fine")
        net.set_down("b", False)
        await a.send("b", b"back")
        assert (await b.receive())[1] == b"back"

        net.cut("a", "c")
        with pytest.raises(PeerUnreachable):
            await c.send("a", b"x")  # a cut is both directions
        await b.send("c", b"other links work")
        net.cut("a", "c", False)
        await a.send("c", b"healed")
        got = [(peer, data) for _, peer, data in await _receive_all(c, limit=1)]
        assert sorted(got) == [("a", b"healed"), ("a", b"still fine"), ("b", b"other links work")]
        assert net.bytes_sent[("a", "b")] == len(b"back")  # refused sends cost nothing


async def test_a_message_in_flight_is_lost_when_the_link_goes_down(autojump_clock):
    async with MemoryNetwork(LinkModel(latency=1.0, jitter=0.0)) as net:
        a, b = net.endpoint("a"), net.endpoint("b")
        await a.send("b", b"doomed")
        await trio.sleep(0.5)
        net.set_down("b")
        await trio.sleep(1.0)
        net.set_down("b", False)
        assert await _receive_all(b, limit=2) == []
        assert net.dropped == 1


async def test_bytes_sent_counts_exact_lengths(autojump_clock):
    async with MemoryNetwork(LinkModel(latency=0.01)) as net:
        a, b, c = net.endpoint("a"), net.endpoint("b"), net.endpoint("c")
        for size in (0, 1, 1000, 4097):
            await a.send("b", b"\x01" * size)
        await a.send("c", b"12345")
        await c.send("a", b"")
        assert net.bytes_sent[("a", "b")] == 5098
        assert net.bytes_sent[("a", "c")] == 5
        assert net.bytes_sent[("c", "a")] == 0
        assert [len(d) for _, _, d in await _receive_all(b, limit=1)] == [0, 1, 1000, 4097]


async def test_bandwidth_serializes_a_link(autojump_clock):
    async with MemoryNetwork(LinkModel(latency=0.1, jitter=0.0, bandwidth=1000.0)) as net:
        a, b = net.endpoint("a"), net.endpoint("b")
        t0 = trio.current_time()
        await a.send("b", b"x" * 1000)  # 1 s on the wire
        await a.send("b", b"y" * 500)  # waits for the first, then 0.5 s
        got = await _receive_all(b, limit=5)
    assert [t - t0 for t, _, _ in got] == [pytest.approx(1.1, abs=1e-3), pytest.approx(1.6, abs=1e-3)]


async def test_unknown_peer_is_unreachable(autojump_clock):
    async with MemoryNetwork() as net:
        a = net.endpoint("a")
        with pytest.raises(PeerUnreachable, match="nobody"):
            await a.send("nobody", b"x")
        assert net.bytes_sent[("a", "nobody")] == 0


async def test_duplicate_endpoint_name_raises():
    async with MemoryNetwork() as net:
        net.endpoint("a")
        with pytest.raises(ValueError, match="'a'"):
            net.endpoint("a")
        assert net.endpoint("b").local_id == "b"
