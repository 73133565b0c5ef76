"""Scenario events: the schedule (pure), each event kind in a tiny simulation on the memory transport with
the mock clock (what it changes, and that nothing else does), the churn process, and the node's patience
and catch-up rules."""

from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest
import trio

from p2pfl import events, wire
from p2pfl.config import ChurnConfig, ConfigError, EventConfig, load_scenario
from p2pfl.sim import EventRunner, Simulation
from p2pfl.transport.memory import LinkModel, MemoryNetwork
from tests.test_sim import TINY

ROUNDS = 6
SMALL = TINY | {"rounds": ROUNDS, "topology.nodes": 6}


def run(events_=(), **overrides):
    s = load_scenario(None, SMALL | overrides | ({"events": list(events_)} if events_ else {}))
    return Simulation(s, run_dir=None).run()


def rounds_of(result, node: str) -> list[int]:
    return [r["round"] for r in result.records if r["node"] == node]


# -- the schedule ----------------------------------------------------------------------------------------

def test_events_are_checked_against_the_topology_and_their_own_grammar():
    with pytest.raises(ConfigError, match=r"events\[0\]: nodes \[9\] are not node indices of a 6-node topology"):
        events.schedule(load_scenario(None, SMALL | {"events": [{"at": 2, "crash": [9]}]}), 6)
    with pytest.raises(ConfigError, match="give exactly one of leave, crash"):
        load_scenario(None, {"events": [{"at": 2, "crash": [1], "leave": [2]}]})
    with pytest.raises(ConfigError, match="join twice"):
        events.schedule(load_scenario(None, {"events": [{"at": 2, "join": [1]}, {"at": 4, "join": [1]}]}), 16)
    with pytest.raises(ConfigError, match="at = 2 .a round. or time = 1.0"):
        load_scenario(None, {"events": [{"at": 2, "time": 1.0, "heal": True}]})
    with pytest.raises(ConfigError, match="two or more groups, no node in two"):
        load_scenario(None, {"events": [{"at": 2, "partition": [[0, 1], [1, 2]]}]})
    with pytest.raises(ConfigError, match="events.speed = 0.0: must be greater than 0"):
        load_scenario(None, {"events": [{"at": 2, "slow": [1]}]})


def test_a_partition_cuts_exactly_the_links_between_groups():
    ring = nx.cycle_graph(6)
    assert sorted(events.partition_cuts(((0, 1, 2), (3, 4, 5)), ring)) == [(0, 5), (2, 3)]
    assert sorted(events.partition_cuts(((0,),), ring)) == [(0, 1), (0, 5)]  # the rest is one more group


def test_churn_is_seeded_keeps_its_rate_and_every_down_ends_before_the_last_round():
    c = ChurnConfig(rate=0.2, downtime=3.0, crash=0.5)
    a, b = events.churn(c, 200, 100, seed=1), events.churn(c, 200, 100, seed=1)
    assert a == b and a != events.churn(c, 200, 100, seed=2)
    down = np.zeros((200, 100), bool)
    open_at: dict[int, int] = {}
    for e in a:
        if e.rejoin:
            (node,) = e.rejoin
            down[node, open_at.pop(node):e.at] = True
            assert e.at <= 99  # back by the last round: every node finishes
        else:
            (node,) = e.leave or e.crash
            open_at[node] = e.at
    assert not open_at  # every down is followed by its rejoin
    assert down[:, 2:].mean() == pytest.approx(0.2, abs=0.04)
    crashes = sum(bool(e.crash) for e in a)
    assert 0.35 < crashes / (len(a) / 2) < 0.65
    assert events.churn(ChurnConfig(), 16, 50, 0) == []


# -- each event in a simulation ---------------------------------------------------------------------------

def test_a_crash_loses_the_round_sends_no_bye_and_a_rejoin_resumes_from_the_checkpoint():
    result = run([{"at": 3, "crash": [1]}])  # no rejoin: the neighbours never hear a bye
    assert max(rounds_of(result, "n1")) == 2  # its checkpoint's round; what it did of round 3 is gone
    for name in ("n0", "n2", "n3", "n4", "n5"):
        assert rounds_of(result, name) == list(range(1, ROUNDS + 1))  # nobody else is touched
    n0 = next(n for n in result.nodes if n.node_id == "n0")
    assert n0.peers["n1"].session.their_state is not wire.State.CLOSED  # no bye came

    back = run([{"at": 3, "crash": [1]}, {"at": 5, "rejoin": [1]}])
    ours = rounds_of(back, "n1")
    assert ours[:2] == [1, 2] and ours[-1] == ROUNDS and len(ours) == len(set(ours))  # resumed, no round twice
    assert back.summary["churn"]["restarts"] == 1
    assert [e["event"] for e in back.summary["events"]] == ["crash", "rejoin"]


def test_a_leave_says_bye_and_a_rejoin_comes_back_as_a_new_session():
    result = run([{"at": 3, "leave": [1]}])
    assert max(rounds_of(result, "n1")) == 2
    n0 = next(n for n in result.nodes if n.node_id == "n0")
    assert n0.peers["n1"].session.their_state is wire.State.CLOSED  # it said bye
    assert not n0.peers["n1"].up
    back = run([{"at": 3, "leave": [1]}, {"at": 4, "rejoin": [1]}])
    assert rounds_of(back, "n1")[-1] == ROUNDS
    n0 = next(n for n in back.nodes if n.node_id == "n0")
    assert n0.peers["n1"].session.epoch == 1  # a new session after the bye, whose knowledge flows again
    assert newest(back, "n0", "n1") >= ROUNDS - 1


def test_a_late_joiner_is_absent_until_it_joins_then_catches_up_with_the_network():
    result = run([{"at": 4, "join": [2]}], rounds=8)
    first = min(r["time"] for r in result.records if r["node"] == "n2")
    joined = next(e for e in result.summary["events"] if e["event"] == "join")
    assert first > joined["time"]  # nothing from it before
    ours = [r for r in result.records if r["node"] == "n2"]
    assert ours[0]["round"] >= 3 and ours[-1]["round"] == 8  # it jumped to the network's round ...
    assert sum(r["skipped"] for r in ours) >= 2  # ... and says how many rounds it skipped
    for name in ("n0", "n1", "n3", "n4", "n5"):
        assert rounds_of(result, name) == list(range(1, 9))
    (joiner,) = result.summary["churn"]["joiners"]
    assert joiner["node"] == "n2" and joiner["joined_round"] == 4


def test_a_late_joiner_makes_up_the_steps_of_the_rounds_it_jumped_over_only_with_make_up():
    steps = TINY["train.local_steps"]
    made = run([{"at": 4, "join": [2]}], rounds=12, **{"train.make_up": 0.5})
    ours = [r for r in made.records if r["node"] == "n2"]
    skipped = sum(r["skipped"] for r in ours)
    assert skipped >= 2
    # half a round's steps more per round (rounded) until the rounds jumped over are paid for
    assert max(r["made_up"] for r in ours) == round(0.5 * steps)
    assert sum(r["made_up"] for r in ours) == min(skipped * steps, round(0.5 * steps) * len(ours))
    assert all(r["made_up"] == 0 for r in made.records if r["node"] != "n2")  # nobody else owes
    plain = run([{"at": 4, "join": [2]}], rounds=12)
    assert all(r["made_up"] == 0 for r in plain.records)  # off by default


def test_a_slow_node_that_skips_rounds_owes_nothing():
    result = run([{"at": 0, "slow": [1], "speed": 0.25}], rounds=10, **{"gossip.patience": 0.25, "train.make_up": 1.0})
    assert sum(r["skipped"] for r in result.records if r["node"] == "n1") > 0
    assert all(r["made_up"] == 0 for r in result.records)  # more work would only put it further behind


def test_a_node_waiting_for_a_crashed_neighbour_trains_while_it_waits_only_with_idle_steps():
    crash = [{"at": 3, "crash": [1]}, {"at": 6, "rejoin": [1]}]  # back behind the others: they wait for it
    idle = run(crash, rounds=8, **{"train.idle_steps": 15, "gossip.wait_timeout": 5.0})
    waited = [r for r in idle.records if r["node"] in ("n0", "n2") and r["waited"] > 1.0]
    assert waited and all(r["idle_steps"] > 0 for r in waited)  # n1's neighbours trained while they waited
    assert max(r["idle_steps"] for r in idle.records) == 15  # the whole budget (10 + 5), never past it
    assert all(r["idle_steps"] == 0 for r in idle.records if r["waited"] == 0.0)  # no wait, nothing extra
    assert idle.summary["churn"]["idle_steps"] == sum(r["idle_steps"] for r in idle.records)
    plain = run(crash, rounds=8, **{"gossip.wait_timeout": 5.0})
    assert all(r["idle_steps"] == 0 for r in plain.records)  # off by default: a wait is idle


def newest(result, node: str, peer: str) -> int:
    """The newest round `node` holds of `peer`'s knowledge at the end of the run."""
    return next(n for n in result.nodes if n.node_id == node).peers[peer].inbox.newest_round


def test_a_cut_link_carries_nothing_until_healed_and_other_links_are_untouched():
    cut = run([{"at": 3, "cut": [[0, 1]]}])
    assert newest(cut, "n0", "n1") <= 2 and newest(cut, "n1", "n0") <= 2  # nothing since the cut
    # elsewhere to the end (a neighbour may finish first)
    assert newest(cut, "n0", "n5") >= ROUNDS - 1 and newest(cut, "n3", "n2") >= ROUNDS - 1
    healed = run([{"at": 3, "cut": [[0, 1]]}, {"at": 5, "heal": True}])
    assert min(newest(healed, "n0", "n1"), newest(healed, "n1", "n0")) >= ROUNDS - 1
    (heal,) = healed.summary["churn"]["recovery"]
    assert heal["split_round"] == 3 and heal["heal_round"] == 5


def test_a_partition_splits_the_graph_into_its_groups():
    result = run([{"at": 3, "partition": [[0, 1, 2], [3, 4, 5]]}])  # ring 0-...-5: links 2-3 and 5-0 cut
    assert newest(result, "n2", "n3") <= 2 and newest(result, "n0", "n5") <= 2
    assert min(newest(result, "n2", "n1"), newest(result, "n4", "n3")) >= ROUNDS - 1


def test_a_slow_node_computes_slower_and_catches_up_without_holding_the_others():
    result = run([{"at": 0, "slow": [1], "speed": 0.25}], rounds=10, **{"gossip.patience": 0.25})
    def round_time(node):
        times = [r["time"] for r in result.records if r["node"] == node]
        return (times[-1] - times[0]) / max(1, len(times) - 1)
    assert round_time("n1") > 2.0 * round_time("n3")
    assert sum(r["skipped"] for r in result.records if r["node"] == "n1") > 0  # it jumps to the network's round
    fast = run(rounds=10, **{"gossip.patience": 0.25})
    end = {n: max(r["time"] for r in result.records if r["node"] == n) for n in ("n0", "n2", "n3")}
    undisturbed = {n: max(r["time"] for r in fast.records if r["node"] == n) for n in ("n0", "n2", "n3")}
    assert all(end[n] < 1.3 * undisturbed[n] for n in end), (end, undisturbed)  # its neighbours are not held


async def test_a_link_event_changes_that_link_only(autojump_clock):
    async with MemoryNetwork(LinkModel(latency=0.1, jitter=0.0)) as net:
        ends = {n: net.endpoint(n) for n in ("n0", "n1", "n2")}
        hosts = [SimpleNamespace(name=n) for n in ends]
        runner = EventRunner([events.Scheduled(EventConfig(at=1, link=((0, 1),), latency=2.0, loss=0.0), "t")],
                             hosts, net, nx.path_graph(3))
        runner._apply(runner._by_round[0])
        assert net.link_model("n1", "n0").latency == 2.0 and net.link_model("n0", "n1").jitter == 0.0
        assert net.link_model("n1", "n2").latency == 0.1
        t0 = trio.current_time()
        await ends["n0"].send("n1", b"x")
        await ends["n1"].receive()
        assert trio.current_time() - t0 == pytest.approx(2.0, abs=1e-3)


def test_churn_takes_nodes_down_and_every_node_still_finishes():
    result = run(rounds=10, **{"churn.rate": 0.3, "churn.downtime": 2.0})
    churn = result.summary["churn"]
    assert churn["restarts"] > 0 and min(churn["up_share"].values()) < 1.0
    for name in (f"n{i}" for i in range(6)):
        assert rounds_of(result, name)[-1] == 10  # every down ended before the last round
    assert result.summary["up_by_round"]


def test_a_node_down_for_the_whole_run_is_in_the_churn_summary_at_zero():
    from p2pfl.metrics import churn_summary

    records = [{"node": n, "round": r, "time": float(r), "waited": 0.0, "bytes_out": 0} for n in ("n0", "n1") for r in (1, 2)]
    churn = churn_summary(records, [], {1: ["n0", "n1"], 2: ["n0", "n1"]}, ["n0", "n1", "n2"])
    assert churn["up_share"] == {"n0": 1.0, "n1": 1.0, "n2": 0.0} and churn["never_up"] == ["n2"]
    assert "never_up" not in churn_summary(records, [], {1: ["n0", "n1"]}, ["n0", "n1"])
