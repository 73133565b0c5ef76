"""Tests for p2pfl.config (scenario loading, errors that name the key) and p2pfl.cli (sim, topo)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from p2pfl import cli
from p2pfl.config import ConfigError, Scenario, _set_dotted, flat_keys, load_scenario, parse_value, run_name
from p2pfl.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "sim" / "quickstart.toml"

TINY_TOML = """\
name = "cli-tiny"
rounds = 2
profiles = ["mlp"]
embed_dim = 16
workers = 1

[data]
source = "synthetic"
samples = 400
partition = "shards:2"

[reference]
source = "synthetic"
size = 200
slice_size = 100

[topology]
name = "ring"
nodes = 4
params = {}

[train]
warmup_steps = 10
local_steps = 5
batch_size = 32
kd_batch_size = 50
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("P2PFL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


# --------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("path", sorted((REPO / "sim").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_scenario_loads_and_is_named_after_its_file(path):
    # loading validates every key and codec; the name is what run directories and benchmark rows use
    assert load_scenario(path).name == path.stem


def test_low_bandwidth_differs_from_quickstart_only_where_it_says():
    lean, quick = load_scenario(REPO / "sim" / "low-bandwidth.toml"), load_scenario(QUICKSTART)
    assert lean.gossip.codec == "topk:1+int3+ans"
    assert dataclasses.replace(lean, name=quick.name, gossip=quick.gossip) == quick

def test_quickstart_is_the_embedded_default():
    loaded = load_scenario(QUICKSTART)
    if loaded != Scenario():
        a, b = dataclasses.asdict(loaded), dataclasses.asdict(Scenario())
        diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        pytest.fail(f"sim/quickstart.toml differs from Scenario(): {diff}")
    assert load_scenario(None) == Scenario()


@pytest.mark.parametrize("key, suggestion", [("train.lrr", "lr"), ("gossip.consensu", "consensus"),
                                             ("trian.lr", "train"), ("round", "rounds")])
def test_unknown_key_names_it_and_suggests_the_close_match(key, suggestion):
    with pytest.raises(ConfigError) as e:
        load_scenario(None, {key: 1})
    msg = str(e.value)
    assert repr(key.split(".")[0] if key.startswith("trian") else key) in msg
    assert f"did you mean {suggestion!r}" in msg


def test_unknown_key_in_a_file_names_the_file_and_the_dotted_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nlrr = 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_scenario(path)
    assert str(path) in str(e.value) and "'train.lrr'" in str(e.value) and "did you mean 'lr'" in str(e.value)


@pytest.mark.parametrize("key, value, expected", [
    ("train.lr", "fast", "a number"),
    ("rounds", 2.5, "an integer"),
    ("rounds", True, "an integer"),  # a bool is never an int
    ("train.balanced", 1, "true or false"),
    ("gossip.codec", 8, "a string"),
    ("topology.params", 3, "a table"),
    ("profiles", "mlp", 'a list, e.g. ["a", "b"]'),
])
def test_wrong_type_names_the_key_and_the_expected_type(key, value, expected):
    with pytest.raises(ConfigError) as e:
        load_scenario(None, {key: value})
    assert key in str(e.value) and expected in str(e.value) and repr(value) in str(e.value)


def test_ints_are_accepted_for_floats_and_lists_for_tuples():
    s = load_scenario(None, {"train.lr": 1, "profiles": ["mlp"]})
    assert s.train.lr == 1.0 and isinstance(s.train.lr, float)
    assert s.profiles == ("mlp",)


def test_invalid_values_name_the_choices():
    with pytest.raises(ConfigError, match="logits, local, fedavg"):
        load_scenario(None, {"mode": "turbo"})
    with pytest.raises(ConfigError, match="rounds = 0"):
        load_scenario(None, {"rounds": 0})
    for key in ("train.augment_shift", "train.augment_reference"):
        with pytest.raises(ConfigError, match=f"{key} = -1: a shift in steps, >= 0"):
            load_scenario(None, {key: -1})


def test_set_dotted_builds_nested_tables():
    raw: dict = {}
    _set_dotted(raw, "gossip.consensus", "mean", Scenario)
    _set_dotted(raw, "topology.params.k", 6, Scenario)
    _set_dotted(raw, "seed", 3, Scenario)
    assert raw == {"gossip": {"consensus": "mean"}, "topology": {"params": {"k": 6}}, "seed": 3}
    with pytest.raises(ConfigError, match="did you mean 'gossip'"):
        _set_dotted({}, "gosip.consensus", "mean", Scenario)


def test_overrides_apply_over_a_file():
    s = load_scenario(QUICKSTART, {"gossip.consensus": "mean", "topology.params.k": 6, "train.lr": 0.01})
    assert s.gossip.consensus == "mean" and s.train.lr == 0.01
    assert s.topology.params == {"k": 6, "p": 0.2}  # merged into the file's table
    assert s.gossip.codec == "auto" and s.rounds == 50  # the rest stays


def test_parse_value_reads_like_toml():
    assert parse_value("3") == 3 and parse_value("0.1") == 0.1 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("ring") == "ring"


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(bad)


# ------------------------------------------------------------------------------------------ cli

def test_cli_overrides_collect_every_form():
    args = cli.build_parser().parse_args([
        "sim", "--set", "train.lr=0.001", "--nodes", "8", "--alpha", "0.3",
        "--gossip.consensus", "mean", "--profiles", "cnn1d,mlp", "--topology.params", "{k = 2}"])
    out = cli.scenario_overrides(args)
    assert out == {"train.lr": 0.001, "topology.nodes": 8, "data.partition": "dirichlet:0.3",
                   "profiles": ["cnn1d", "mlp"], "gossip.consensus": "mean", "topology.params": {"k": 2}}
    both = cli.build_parser().parse_args(["sim", "--archs", "mlp,gru", "--profiles", "cnn1d"])
    with pytest.raises(cli.UsageError, match=r"profiles is given twice \(--archs and --profiles\)"):
        cli.scenario_overrides(both)


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert captured.err.startswith("error: "), captured.err
    return captured.err


@pytest.mark.parametrize("argv, words", [
    (["sim", "--set", "train.lrr=0.1"], ["train.lrr", "did you mean 'lr'"]),
    (["sim", "--rounds", "many"], ["rounds", "'many'", "int"]),
    (["sim", "--mode", "turbo"], ["turbo", "logits"]),
    (["sim", "--set", "rounds"], ["KEY=VALUE"]),
    (["sim", "--alpha", "lots"], ["--alpha", "'lots'"]),
    (["sim", "no/such/scenario.toml"], ["no/such/scenario.toml", "not found"]),
    (["sim", "--data.source", "nope.npz", "--rounds", "1"], ["data.source", "no such file 'nope.npz'", "np.savez"]),
    (["topo", "ring"], ["--nodes"]),
    (["topo", "moebius", "--nodes", "4"], ["moebius", "ring"]),
    (["node", "--shard", "9/8", "--state-dir", "unused"], ["--shard", "'9/8'", "I/N"]),
    (["node", "--shard", "-1/8", "--state-dir", "unused"], ["--shard", "'-1/8'", "I/N"]),  # not "expected one argument"
    (["node", "--shar", "-1/8", "--state-dir", "unused"], ["--shard", "'-1/8'", "I/N"]),  # argparse's prefix of it
    (["sim", "--train.lr", "-1e-3"], ["train.lr = -0.001", "greater than 0"]),  # argparse's negative numbers lack e
    (["sim", "--gossip.codec", "int5"], ["gossip.codec", "'int5'", "topk:K"]),
    (["sim", "--gossip.adaptive_bits", "2"], ["gossip.adaptive_bits", "between 0 (off) and 1"]),
    (["sim", "--gossip.logit_range", "-1"], ["gossip.logit_range", ">= 0"]),
    (["sim", "--gossip.reliability", "votes"], ["gossip.reliability", "'votes'", "agreement:P"]),
    (["sim", "--gossip.select", "changed:0"], ["gossip.select", "changed:T"]),
    (["node", "--psk-file", "no/such.key", "--state-dir", "unused"], ["--psk-file", "no/such.key", "cannot read"]),
    (["node", "--allow", "no/such.txt", "--state-dir", "unused"], ["--allow", "no/such.txt"]),
    (["node", "--profile", "no/such.toml", "--state-dir", "unused"], ["no/such.toml", "not found", "cnn1d"]),
    (["node", "--state-dir", "unused", "--peers", "/ip4/127.0.0.1/tcp/4001"],
     ["--peers '/ip4/127.0.0.1/tcp/4001' has no /p2p/<peer id>", "/ip4/127.0.0.1/tcp/4001/p2p/<peer id>",
      "listening on"]),
    (["status", "/ip4/127.0.0.1/tcp/4001"], ["address '/ip4/127.0.0.1/tcp/4001' has no /p2p/<peer id>"]),
    (["node", "--state-dir", "unused", "--listen", "tcp:4001"], ["--listen 'tcp:4001' is not a multiaddr",
                                                                  "/ip4/0.0.0.0/tcp/4001"]),
    (["sim", "--mode", "fedavg", "--archs", "mlp", "--attack", "shift:2"],
     ["attack.kind = 'shift'", "cannot lie in mode 'fedavg'", "its attacks: alie, dissensus"]),
    # in range for the type, not for the meaning: the config refuses it, naming the key
    (["sim", "--train.lr", "-1"], ["train.lr = -1.0", "greater than 0"]),
    (["sim", "--nodes", "0"], ["topology.nodes = 0", "at least 1"]),
    (["sim", "--network.loss", "1.5"], ["network.loss = 1.5", "between 0 and 1"]),
    (["sim", "--network.latency", "-0.1"], ["network.latency = -0.1", "at least 0"]),
    (["sim", "--gossip.wait_timeout", "0"], ["gossip.wait_timeout = 0.0", "greater than 0"]),
    (["sim", "--gossip.key_every", "0"], ["gossip.key_every = 0", "at least 1"]),
    (["sim", "--gossip.consensus", "vote"], ["gossip.consensus = 'vote'", "class-weighted"]),
    (["sim", "--train.batch_size", "0"], ["train.batch_size = 0", "at least 1"]),
    (["sim", "--reference.slice_size", "30000"], ["reference.slice_size = 30000", "reference.size = 20000"]),
    (["sim", "--eval_every", "0"], ["eval_every = 0", "at least 1"]),
])
def test_cli_bad_input_exits_2_with_an_error_and_no_traceback(argv, words, capsys):
    assert cli.main(argv) == 2
    err = " ".join(_error_line(capsys).split())
    for w in words:
        assert w in err, (w, err)


def test_cli_error_is_one_line(capsys, monkeypatch):
    # cli.err as the module builds it, with the width of a default terminal whatever $COLUMNS says
    monkeypatch.setattr(cli, "err", Console(stderr=True, width=80))
    assert cli.main(["sim", "--set", "train.lrr=0.1"]) == 2
    assert _error_line(capsys).count("\n") == 1


def test_cli_error_keeps_bracketed_text(tmp_path, capsys, monkeypatch):
    """Rich reads "[n3, n4]" as a markup tag and drops it: the disconnected part's names must be printed."""
    monkeypatch.setattr(cli, "err", Console(stderr=True, width=200))
    path = tmp_path / "split.toml"
    path.write_text('name = "split"\nnodes = ["n0", "n1", "n2", "n3", "n4"]\nedges = [["n0", "n1"], ["n1", "n2"], ["n3", "n4"]]\n')
    assert cli.main(["topo", str(path)]) == 2
    err = _error_line(capsys)
    assert "[n0, n1, n2] (3 nodes)" in err and "[n3, n4] (2 nodes)" in err, err
    cli.print_error(ValueError("[red]x[/red] [3, 4] [b] [/]"))  # markup-looking text is printed as it is, too
    assert capsys.readouterr().err == "error: [red]x[/red] [3, 4] [b] [/]\n"


def test_cli_bad_data_file_exits_2_with_the_expected_format(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    assert cli.main(["sim", "--data.source", str(bad), "--rounds", "1", "--runs", str(tmp_path / "runs")]) == 2
    err = " ".join(_error_line(capsys).split())
    assert f"data.source: {bad} is not an .npz archive" in err and "np.savez(path, x=inputs, y=labels" in err, err
    assert "pickle" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cli_unknown_option_is_an_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sim", "--train.lrr", "3"])
    assert e.value.code == 2
    assert "unrecognized arguments: --train.lrr" in capsys.readouterr().err


def test_cli_sim_writes_json(tiny, tmp_path, capsys):
    out = tmp_path / "out" / "summary.json"
    assert cli.main(["sim", str(tiny), "--json", str(out), "--runs", str(tmp_path / "runs")]) == 0
    summary = json.loads(out.read_text())
    assert summary["name"] == "cli-tiny" and summary["nodes"] == 4 and summary["rounds"] == 2
    for what in ("global", "personal"):
        assert 0.0 <= summary[what]["mean"] <= 1.0
    assert (tmp_path / "runs" / "cli-tiny" / "metrics.jsonl").exists()
    assert "cli-tiny" in capsys.readouterr().out  # the summary table


def test_cli_sim_json_never_writes_over_a_scenario(tiny, capsys):
    before = tiny.read_text()
    assert cli.main(["sim", "--json", str(tiny)]) == 2
    assert "put the scenario first" in capsys.readouterr().err and tiny.read_text() == before
    # a shipped scenario's name there would run the default scenario and write its summary to ./spoken-digits
    assert cli.main(["sim", "--json", "spoken-digits"]) == 2
    assert "`p2pfl sim spoken-digits --json`" in capsys.readouterr().err and not Path("spoken-digits").exists()


def test_console_script_runs_a_sim(tiny, tmp_path):
    exe = Path(sys.executable).parent / "p2pfl"
    env = os.environ | {"P2PFL_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    proc = subprocess.run([str(exe), "sim", str(tiny), "--json", "--runs", str(tmp_path / "runs"),  # bare: stdout
                           "--rounds", "1"], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # stdout is only the JSON: progress and tables went to stderr
    assert summary["rounds"] == 1 and "global" in summary and "personal" in summary


def test_cli_topo_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "tmp" / "ring.toml"
    assert cli.main(["topo", "ring", "--nodes", "8", "--out", str(out)]) == 0
    topo = load_topology(out)
    assert topo.n == 8 and topo.graph.number_of_edges() == 8
    assert all(d == 2 for _, d in topo.graph.degree)
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["topo", str(out), "--json"]) == 0  # an existing file is checked and described
    described = json.loads(capsys.readouterr().out)
    assert described["name"] == "ring-8" and described["nodes"] == 8 and described["connected"] is True


def test_ctrl_c_during_a_simulation_is_one_line_exit_130_and_a_partial_summary(tmp_path):
    import signal
    import time

    runs = tmp_path / "runs"
    # far more rounds than the test waits for: Ctrl-C must land in a running simulation, however slow this
    # process is to see the first records (a busy CI machine once saw them after a 500-round run had ended)
    rounds = 100_000
    cmd = [sys.executable, "-m", "p2pfl.cli", "sim", "--runs", str(runs), "--rounds", str(rounds), "--nodes", "4",
           "--topology", "ring", "--archs", "mlp", "--data.source", "synthetic", "--data.samples", "400",
           "--reference.size", "200", "--reference.slice_size", "100", "--train.warmup_steps", "5",
           "--train.local_steps", "5", "--workers", "1"]
    env = os.environ | {"P2PFL_CACHE": str(tmp_path / "cache")}
    inherited = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def as_from_a_terminal() -> None:
        # the child gets SIGINT as a shell gives it: default disposition, not blocked. Twice in the full suite
        # (never alone) a child ignored it; a disposition or mask inherited from this process is the suspect
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=as_from_a_terminal)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = list(runs.glob("*/metrics.jsonl")) if runs.exists() else []
        if files and len(files[0].read_text().splitlines()) >= 8:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"no metrics after 120 s: {proc.communicate()}")
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it ignored the signal: it must not outlive the test (100,000 rounds)
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 130, (out[-500:], err[-2000:], inherited)
    assert "Traceback" not in err and "Traceback" not in out
    (run_dir,) = runs.iterdir()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted at round ") and lines[-1].endswith(f"partial results in {run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["partial"] is True and len(records) >= 8
    assert summary["rounds_reached"] == max(r["round"] for r in records) < rounds
    assert f"interrupted at round {summary['rounds_reached']};" in lines[-1]
    assert run_dir.name.startswith("quickstart-") and f"rounds{rounds}" in run_dir.name  # says what differs


def test_help_fits_a_screen_and_points_to_every_key(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sim", "--help"])
    text = capsys.readouterr().out
    assert len(text.splitlines()) <= 45, text
    assert "--help-keys" in text and "(default 50)" in text and "logits | local" in text
    assert "--train.lr" not in text  # the long tail is listed by --help-keys, not here
    with pytest.raises(SystemExit):
        cli.main(["sim", "--help-keys"])
    keys = " ".join(capsys.readouterr().out.split())
    for key, _ in flat_keys():
        assert f" {key} " in keys, key
    assert "topk:K" in keys and "dirichlet-node:A" in keys and "agreement:P" in keys


def test_topo_help_lists_the_generators_and_the_shipped_files(capsys):
    with pytest.raises(SystemExit):
        cli.main(["topo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "small-world" in text and "barabasi-albert" in text and "ring-8" in text


def test_a_topology_file_brings_its_node_count(tmp_path):
    args = ["sim", "--topology", "topologies/ring-8.toml", "--rounds", "1", "--runs", str(tmp_path),
            "--data.source", "synthetic", "--archs", "mlp", "--train.warmup_steps", "2", "--train.local_steps", "2",
            "--reference.source", "synthetic", "--reference.size", "100", "--reference.slice_size", "50"]
    assert cli.main(args) == 0
    summary = json.loads((next(tmp_path.iterdir()) / "summary.json").read_text())
    assert summary["nodes"] == 8 and summary["topology"]["nodes"] == 8
    assert "ring-8" in summary["name"] and "nodes8" not in summary["name"]


def test_a_large_run_s_summary_shows_the_deciles_not_a_line_per_node():
    from rich.console import Console

    from p2pfl.metrics import summarize

    def summary(n: int) -> dict:
        records = [{"node": f"n{i:02d}", "round": 1, "arch": "mlp", "bytes_out": 0, "global_acc": i / n,
                    "personal_acc": 1 - i / n} for i in range(n)]
        return summarize(records, rounds=1, wire_bytes=0) | {"name": "big", "mode": "logits", "seed": 0,
                                                             "wall_time_s": 1.0}

    big = summary(40)
    assert big["global"]["deciles"] == pytest.approx([0.975 * k / 10 for k in range(1, 10)])  # of 0, 1/40 .. 39/40
    console = Console(record=True, width=200)
    cli.print_summary(console, big, None)
    text = console.export_text()
    assert "global deciles (10% .. 90% of nodes): 0.098 0.195" in text
    assert "n07" not in text  # no line per node
    console = Console(record=True, width=200)
    cli.print_summary(console, summary(8), None)
    assert "deciles" not in console.export_text()  # a small run's table says it all


def test_the_summary_line_counts_the_honest_nodes_refusals_where_some_lied():
    from rich.console import Console

    from p2pfl.metrics import summarize

    records = [{"node": f"n{i}", "round": 1, "arch": "mlp", "bytes_out": 0, "global_acc": 0.5, "personal_acc": 0.5,
                "rejected": {"distrusted": i}} for i in range(4)]
    plain = summarize(records, rounds=1, wire_bytes=0) | {"name": "r", "mode": "logits", "seed": 0, "wall_time_s": 1.0}
    console = Console(record=True, width=200)
    cli.print_summary(console, plain, None)
    assert "rejected by all nodes {'distrusted': 6}" in console.export_text()
    # n3 lies: what it refused of the honest nodes' knowledge is not the defence at work
    honest = summarize(records[:3], rounds=1, wire_bytes=0)
    console = Console(record=True, width=200)
    cli.print_summary(console, plain | {"attackers": {"n3": "shift"}, "honest": honest}, None)
    assert "rejected by honest nodes {'distrusted': 3}" in console.export_text()


def test_a_misspelled_option_gets_the_nearest_one(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["sim", "--train.lrr", "0.1"])
    assert stop.value.code == 2 and "--train.lrr: did you mean --train.lr?" in capsys.readouterr().err


def test_bad_paths_and_doubly_given_keys_are_one_line_before_anything_runs(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("")
    for argv, says in ((["sim", "--runs", str(a_file)], "is a file, not a folder"),
                       (["sim", "--json", str(tmp_path)], "is a folder; give the summary a file name"),
                       (["sim", "--rounds", "1", "--set", "rounds=3"], "rounds is given twice"),
                       (["sim", "--name", "../escaped"], "a run's name is its folder under --runs"),
                       (["sim", "--attack", "shift:inf"], "expected KIND:N"),
                       (["sim", "--privacy.epsilon", "0"], "no privacy at all"),
                       (["node", "--state-dir", str(tmp_path / "st"), "--set", "privacy.epsilon=0"],
                        "privacy.epsilon = 0 (--set privacy.epsilon=...)"),
                       (["node", "--state-dir", str(a_file)], "--state-dir"),
                       (["sim", "--attack", "shift:1", "--attack", "sign-flip:1"], "--attack given more than once"),
                       (["sim", "--nodes", "4", "--nodes=5"], "--nodes given more than once"),
                       (["node", "--state-dir", str(tmp_path / "st"), "--set", "mode=prototypes", "--attack", "shift",
                         "--attack-drill"], "shift cannot lie in mode 'prototypes'"),  # a drill that never lies
                       (["sim", str(tmp_path)], "is a folder; pass a scenario TOML")):
        assert cli.main(argv) == 2, argv
        assert says in capsys.readouterr().err, argv
    assert cli.main(["psk", "--out", str(a_file / "k.key")]) == 1  # the OS's refusal, as one line naming the file
    assert f"cannot write {a_file / 'k.key'}" in capsys.readouterr().err


def test_run_names_keep_decimals_and_a_nameless_file_runs_under_its_own(tmp_path):
    assert run_name("q", {"data.partition": "dirichlet:0.5"}) != run_name("q", {"data.partition": "dirichlet:0.1"})
    assert run_name("q", {"topology.name": "topologies/ring8.toml"}) == "q-ring8"
    (tmp_path / "my-test.toml").write_text("rounds = 2\n")
    assert load_scenario(tmp_path / "my-test.toml").name == "my-test"
