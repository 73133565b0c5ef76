"""`p2pfl` for people: sim | node | status | psk | topo. Rich progress and tables on the terminal, --json for machines."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from p2pfl import shipped
from p2pfl.config import (
    TOPOLOGY_GENERATORS, AttackConfig, ConfigError, Scenario, accepted, check_attack, flat_keys, load_scenario,
    parse_key_value, parse_sets, parse_value, run_name,
)
from p2pfl.files import atomic_write_text
from p2pfl.metrics import refusals
from p2pfl.mode_facts import MODES

DEFAULT_SCENARIO = shipped.folder("sim") / f"{shipped.DEFAULT_SCENARIO}.toml"  # checkout or installed copy

# Friendly names for the overrides people reach for most; each maps onto a scenario key.
SHORTCUTS = {
    "nodes": ("topology.nodes", int, "number of nodes"),
    "topology": ("topology.name", str, "generator name (ring, small-world, erdos-renyi, ...) or a topology file"),
    "alpha": ("data.partition", lambda a: f"dirichlet:{float(a)}", "Dirichlet label skew (sets data.partition)"),
    "archs": ("profiles", lambda a: a.split(","), "comma-separated profiles/architectures, round-robin"),
    "attack": ("attack", lambda a: parse_key_value("attack", a, {}),
               "KIND:N: N nodes (or a share F < 1) lie, e.g. shift:3 (or [[attack]] tables, see --help-keys)"),
    "defence": ("gossip.defence", str, "auto (claims+reputation) | none | claims, reputation, clip joined by +: "
                                       "what is done about lying peers"),
    "churn": ("churn.rate", float, "each node is down this share of rounds, back after churn.downtime (3) on average"),
}

err = Console(stderr=True)


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _glue_dashed_values(parser, sys.argv[1:] if argv is None else list(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unknown_arguments(parser, unknown, argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _repeated_options(parser, argv)
        return args.func(args)
    except (ConfigError, UsageError, ValueError) as e:  # every bad-input error derives from ValueError
        print_error(e)
        return 2
    except OSError as e:  # a file or folder the command was pointed at (it names it): one line, not a traceback
        print_error(e)
        return 1
    except BaseExceptionGroup as group:  # raised inside a trio nursery (p2pfl node): same rule
        bad, rest = group.split((ConfigError, UsageError, ValueError))
        if bad is None or rest is not None:
            raise
        for e in _leaves(bad):
            print_error(e)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


def _glue_dashed_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """A value that starts with "-" after an option of one value (--shard -1/8, --train.lr -1e-3), glued to
    it (--shard=-1/8): argparse reads such a value as an option and says only "expected one argument";
    glued, it reaches the option's own check, which says what is wrong. An option string of the command
    (-v, --json) is never taken as a value; a unique prefix of an option (--shar) counts as the option."""
    sub = _subcommand(parser, argv) or parser
    single = {o for a in sub._actions if a.option_strings and a.nargs is None and a.const is None  # noqa: SLF001
              for o in a.option_strings if o.startswith("--")}
    flags = {o for a in sub._actions for o in a.option_strings}  # noqa: SLF001

    def takes_one(token: str) -> bool:
        if "=" in token or not token.startswith("--"):
            return False
        if token in flags:
            return token in single
        prefixed = [o for o in flags if o.startswith(token)]
        return len(prefixed) == 1 and prefixed[0] in single

    out: list[str] = []
    for token in argv:
        if out and takes_one(out[-1]) and token.startswith("-") and not token.startswith("--") and token not in flags:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _unknown_arguments(parser: argparse.ArgumentParser, unknown: list[str], argv: list[str]) -> None:
    """argparse's exit for arguments no command takes, with the nearest option of the command given
    (--train.lrr: did you mean --train.lr?)."""
    import difflib

    command = next((a for a in argv if not a.startswith("-")), "")
    sub = _subcommand(parser, argv)
    known = [o for a in (sub or parser)._actions for o in a.option_strings if o.startswith("--")]
    hints = [f"{u}: did you mean {close[0]}?" for u in unknown if u.startswith("--")
             and (close := difflib.get_close_matches(u.split("=", 1)[0], known, n=1, cutoff=0.7))]
    more = f" ({'; '.join(hints)})" if hints else ""
    keys = "; every scenario key: p2pfl sim --help-keys" if command in ("sim", "node") else ""
    (sub or parser).error(f"unrecognized arguments: {' '.join(unknown)}{more}{keys}")


def _subcommand(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser | None:
    command = next((a for a in argv if not a.startswith("-")), "")
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return subs.choices.get(command)


def _repeated_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """UsageError for an option of one value given twice (--attack shift:1 --attack sign-flip:1): argparse
    keeps the last one silently, as it would a key given two ways (refused in scenario_overrides)."""
    sub = _subcommand(parser, argv)
    single = {o for a in (sub or parser)._actions if type(a) is argparse._StoreAction  # noqa: SLF001
              for o in a.option_strings}
    given: dict[str, int] = {}
    for token in argv[:argv.index("--")] if "--" in argv else argv:
        if (option := token.split("=", 1)[0]) in single:
            given[option] = given.get(option, 0) + 1
    if twice := [o for o, n in given.items() if n > 1]:
        raise UsageError(f"{', '.join(twice)} given more than once (only the last would count); give each once"
                         + ("; several attacks: --set 'attack=[{kind=\"shift\", count=1}, {kind=\"sign-flip\", "
                            "count=1}]'" if "--attack" in twice else ""))


def print_error(e: BaseException) -> None:
    """One red line; the message is escaped, so "[3, 4]" (a component, a list of names) is printed, not read as markup."""
    err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    return [leaf for e in group.exceptions for leaf in (_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pfl", description="Peer-to-peer federated learning by knowledge gossip.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    sim = sub.add_parser("sim", help="simulate N nodes in one process", description=(
        "Run a scenario (default: the quickstart). Every scenario key can be overridden: "
        "--SECTION.KEY VALUE or --set SECTION.KEY=VALUE; `p2pfl sim --help-keys` lists them all with their "
        "defaults and what they accept."), formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="p2pfl sim [SCENARIO] [--mode M] [--rounds N] [--nodes N] [--topology T] [--archs A,B] ... "
              "[--SECTION.KEY V] [--set K=V]")
    sim.add_argument("scenario", nargs="?", help="scenario TOML, or a shipped one's name: "
                     f"{', '.join(shipped.names('sim'))} (default: {shipped.DEFAULT_SCENARIO})")
    common = sim.add_argument_group("common (defaults: the quickstart's)")
    quick = _default_scenario()
    common.add_argument("--mode", dest="key_mode", metavar="M",
                        help=f"{' | '.join(MODES)} (default {quick.mode})")
    common.add_argument("--rounds", dest="key_rounds", metavar="N", help=f"rounds to run (default {quick.rounds})")
    common.add_argument("--seed", dest="key_seed", metavar="N", help=f"partition, models, network (default {quick.seed})")
    for name, (key, _, text) in SHORTCUTS.items():
        common.add_argument(f"--{name}", dest=f"short_{name}", metavar="X", help=f"{text} [{key}]")
    common.add_argument("--ray", dest="key_ray", metavar="ADDR",
                        help="train the learners on a Ray cluster: auto (a running one, else a new local one) | "
                             "local | HOST:PORT of `ray start --head`; needs pip install 'p2pfl[ray]' [ray]")
    common.add_argument("--name", dest="key_name", metavar="NAME",
                        help="the run's name and folder (default: the scenario's, plus what the overrides change)")
    output = sim.add_argument_group("output")
    output.add_argument("--runs", default="runs", metavar="DIR", help="where runs/<name>/ goes (default: runs)")
    output.add_argument("--json", metavar="PATH", nargs="?", const="-",
                        help="write the summary as JSON to PATH (alone, or '-': stdout; progress goes to stderr)")
    more = sim.add_argument_group("any other scenario key")
    more.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set train.lr=0.001")
    more.add_argument("--help-keys", action=_HelpKeys, help="list every key with its default and accepted values")
    for key, _hint in flat_keys():  # --SECTION.KEY for every key, listed by --help-keys rather than here
        if key not in ("mode", "rounds", "seed", "name", "ray", *SHORTCUTS):  # those are in the common group above
            sim.add_argument(f"--{key}", dest=f"key_{key}", metavar="V", help=argparse.SUPPRESS)
    sim.set_defaults(func=cmd_sim)

    node = sub.add_parser("node", help="run one real node over libp2p", description=(
        "Train one node of a scenario (its shard of the data, its profile's model) and gossip with "
        "neighbours over libp2p. Prints its address, then one line per round; writes metrics.jsonl "
        "and a checkpoint per round into --state-dir, and resumes from it after a restart."))
    node.add_argument("--scenario", help="scenario TOML for data, reference, training and gossip (default: the quickstart)")
    node.add_argument("--profile", help="node profile (node/NAME.toml, a path, or an architecture); "
                                        "default: the scenario's profiles, round-robin by shard")
    node.add_argument("--shard", default="0/1", metavar="I/N", help="this node's part of the data: 3/8 = the 4th of 8 (default 0/1)")
    node.add_argument("--data", metavar="SOURCE", help="mnist1d | digits | fsdd | mnist5k | synthetic | a .npz with x, "
                                                       "y[, x_test, y_test] [data.source]")
    node.add_argument("--partition", metavar="SPEC", help="iid | dirichlet:A | dirichlet-node:A | shards:K | quantity:S [data.partition]")
    node.add_argument("--rounds", type=int, help="rounds to train [rounds]")
    node.add_argument("--listen", default="/ip4/0.0.0.0/tcp/0", metavar="MULTIADDR", help="default /ip4/0.0.0.0/tcp/0 (any free port)")
    node.add_argument("--peers", nargs="*", default=[], metavar="MULTIADDR", help="neighbours, each /ip4/.../tcp/PORT/p2p/ID")
    node.add_argument("--discover", choices=["mdns"], help="also find neighbours on this LAN segment by mDNS "
                      "(multicast on every interface of this machine; --allow and --psk-file apply)")
    node.add_argument("--degree", type=int, default=None, metavar="N", help="with --discover: discovered neighbours "
                      "to keep (default 4: a ring lattice over peer ids, connected with any one node down)")
    node.add_argument("--min-peers", type=int, metavar="N", help="wait before the first round until N neighbours "
                      "answered (default: all of --peers, at least 1)")
    node.add_argument("--start-timeout", type=float, default=60.0, metavar="S",
                      help="... for at most S seconds, then train with whoever answers (default 60)")
    node.add_argument("--attack", metavar="KIND", help="a drill: this node lies to its neighbours (kinds as in "
                      "[[attack]], e.g. shift+inflate); refused without --attack-drill")
    node.add_argument("--attack-drill", action="store_true", help="confirm --attack: this node is a test liar")
    node.add_argument("--state-dir", required=True, metavar="DIR", help="identity, checkpoint and metrics (reuse it to resume)")
    node.add_argument("--psk-file", metavar="PATH", help="pre-shared key of a private network (make one with `p2pfl psk`)")
    node.add_argument("--allow", metavar="PATH", help="file of peer ids (one per line) that may connect besides --peers")
    node.add_argument("--accept-any", action="store_true", help="let any peer that dials in become a neighbour")
    node.add_argument("--name", default="", help="label in logs and metrics (default: the peer id)")
    node.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; 1 when many nodes share a host)")
    node.add_argument("--json", action="store_true", help="print one JSON object per round instead of a text line")
    node.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any scenario key")
    node.set_defaults(func=cmd_node)

    status = sub.add_parser("status", help="ask a running node for its live state")
    status.add_argument("addr", help="the node's multiaddr, ending in /p2p/<peer id>")
    status.add_argument("--psk-file", metavar="PATH", help="the network's pre-shared key, if it has one")
    status.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the answer (default 10)")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.set_defaults(func=cmd_status)

    psk = sub.add_parser("psk", help="create a pre-shared key file for a private network")
    psk.add_argument("--out", required=True, help="where to write it (refuses to overwrite)")
    psk.set_defaults(func=cmd_psk)

    rep = sub.add_parser("report", help="pictures of a run: PNGs and one HTML page", description=(
        "Figures of one or more runs (accuracy per round, per node, bytes, staleness and refusals, the graph) "
        "and a self-contained HTML page; RUN is a run folder of p2pfl sim or of scripts/launch_local.py."))
    rep.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s), e.g. runs/quickstart")
    rep.add_argument("--compare", action="store_true", help="the runs side by side (two: the difference per node)")
    rep.add_argument("--out", metavar="DIR", help="where the files go (default: RUN/report/, or RUN/compare/)")
    rep.set_defaults(func=cmd_report)

    topo = sub.add_parser("topo", help="write or check a topology file", description=(
        f"Generate a topology (generators: {', '.join(TOPOLOGY_GENERATORS)}) and print or write it, or check a topology "
        f"file (shipped: {', '.join(shipped.names('topologies'))})."))
    topo.add_argument("name", help="generator name, or an existing file to check")
    topo.add_argument("--nodes", type=int, help="number of nodes")
    topo.add_argument("--seed", type=int, default=0)
    topo.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="generator parameter, e.g. k=4")
    topo.add_argument("--out", help="write the topology here (.toml, .edges or .graphml)")
    topo.add_argument("--json", action="store_true", help="print the description as JSON")
    topo.set_defaults(func=cmd_topo)
    return parser


def _default_scenario() -> Scenario:
    """The quickstart as shipped (its values are what `p2pfl sim` runs with no flags)."""
    try:
        return load_scenario(shipped.scenario(None))
    except ConfigError:  # an edited, broken quickstart: `p2pfl sim` itself will say what is wrong
        return Scenario()


class _HelpKeys(argparse.Action):
    """`p2pfl sim --help-keys`: every scenario key, its default (the quickstart's) and what it accepts."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        quick = dataclasses.asdict(_default_scenario())
        table = Table(title="scenario keys: --KEY VALUE or --set KEY=VALUE (defaults: the quickstart's)")
        for column in ("key", "default", "accepts"):
            table.add_column(column, overflow="fold")
        for key, hint in flat_keys():
            value = quick
            for part in key.split("."):
                value = value[part]
            table.add_row(key, escape(repr(value) if isinstance(value, str) else str(value)),
                          escape(accepted(key, _hint_name(hint))))
        Console(soft_wrap=False).print(table)
        parser.exit()


def _hint_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "comma-separated list"
    return getattr(hint, "__name__", str(hint))


def scenario_overrides(args: argparse.Namespace, flags: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """Collect --set, shortcut and --section.key overrides, and a command's own `flags` ((attribute, scenario
    key): `p2pfl node --rounds`), into {dotted key: value}; one key given two ways (--rounds 1 --set
    rounds=3) is refused rather than one of them silently winning."""
    hints = dict(flat_keys())
    out = parse_sets(args.set)
    given = {key: f"--set {key}=..." for key in out}

    def put(key: str, value: Any, flag: str) -> None:
        if key in given:
            raise UsageError(f"{key} is given twice ({given[key]} and {flag}); keep one")
        out[key], given[key] = value, flag

    for name, (key, convert, _) in SHORTCUTS.items():
        value = getattr(args, f"short_{name}", None)
        if value is not None:
            try:
                put(key, convert(value), f"--{name}")
            except ConfigError:  # it names the flag and the fix itself
                raise
            except ValueError:
                raise UsageError(f"--{name} {value!r}: not a valid value ({SHORTCUTS[name][2]})") from None
    for key in hints:
        value = getattr(args, f"key_{key}", None)
        if value is not None:
            put(key, parse_key_value(key, value, hints), f"--{key}")
    for flag, key in flags:
        if (value := getattr(args, flag)) is not None:
            put(key, value, f"--{flag}")
    if out.get("privacy.epsilon") == 0:  # 0 means off in a file's defaults; asked for, it reads as "the most"
        raise UsageError(f"privacy.epsilon = 0 ({given['privacy.epsilon']}) is no privacy at all (0 and inf mean "
                         "off); for strong privacy give a small positive epsilon, e.g. --privacy.epsilon 1, or "
                         "leave the key out")
    return out


# -- sim ----------------------------------------------------------------------------------------

def cmd_sim(args: argparse.Namespace) -> int:
    from p2pfl.ray_learners import ShardLost
    from p2pfl.sim import Interrupted, Simulation  # torch import: only when simulating

    # `--json X` takes X as where the summary goes: a scenario named there would run the default scenario and
    # write the summary over (or beside) X
    if args.json not in (None, "-") and (args.json.endswith(".toml") or args.json in shipped.names("sim")):
        raise UsageError(f"--json {args.json}: that is a scenario, not where the summary goes; put the "
                         f"scenario first (`p2pfl sim {args.json} --json`) or give --json a .json path")
    path = shipped.scenario(args.scenario)  # a path, or a shipped scenario's name from any folder
    overrides = scenario_overrides(args)
    from p2pfl.topology import load_topology

    named = {} if "name" in overrides or not overrides else {"name": run_name(load_scenario(path).name, overrides)}
    topology_file = shipped.find("topologies", overrides.get("topology.name", ""))
    if topology_file is not None and "topology.nodes" not in overrides:  # the file says how many nodes it has
        overrides["topology.nodes"] = load_topology(topology_file).n
    scenario = load_scenario(path, overrides | named)  # the name says what this run changes
    # where the results go, checked once the settings are (a bad setting leaves no folder behind) and before
    # anything trains (a bad path must not cost the run)
    _writable_folder(Path(args.runs), "--runs")
    if args.json not in (None, "-"):
        if Path(args.json).is_dir():
            raise UsageError(f"--json {args.json} is a folder; give the summary a file name, e.g. {Path(args.json) / 'summary.json'}")
        _writable_folder(Path(args.json).parent, f"--json {args.json}: its folder")
    out = Console(stderr=args.json == "-")
    n = scenario.topology.nodes
    total = n * scenario.rounds
    latest: dict[str, float] = {}
    sent = [0]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=out, transient=False) as progress:
        task = progress.add_task(f"{scenario.name} ({scenario.mode})", total=total, status="preparing data")

        def on_record(record: dict) -> None:
            if "global_acc" in record:
                latest[record["node"]] = record["global_acc"]
            sent[0] += record["bytes_out"]
            acc = sum(latest.values()) / len(latest) if latest else float("nan")
            progress.update(task, advance=1, status=(
                f"round {record['round']}/{scenario.rounds}  global acc {acc:.3f}  "
                f"{_bytes(sent[0] / max(len(latest), 1))}/node sent so far"))

        try:
            result = Simulation(scenario, run_dir=args.runs, on_record=on_record).run()
        except Interrupted as stop:
            progress.stop()
            where = f"partial results in {stop.result.run_dir}" if stop.result.run_dir else "nothing written"
            err.print(f"interrupted at round {stop.result.summary.get('rounds_reached', 0)}; {where}",
                      highlight=False, soft_wrap=True)
            return 130
        except ShardLost as e:  # a Ray worker went away under the nodes it trained (--ray): before the loop...
            progress.stop()
            print_error(e)
            return 1
        except BaseExceptionGroup as group:  # ... or inside it
            lost, rest = group.split(ShardLost)
            if lost is None or rest is not None:
                raise
            progress.stop()
            print_error(_leaves(lost)[0])
            return 1
    print_summary(out, result.summary, result.run_dir)
    if args.json:
        text = json.dumps(result.summary, indent=2, default=str)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            atomic_write_text(args.json, text + "\n")
            out.print(f"summary as JSON: {args.json}", highlight=False)
    return 0


def _writable_folder(path: Path, what: str) -> None:
    """`path` is a folder (made if missing) that takes a file, or a UsageError that says which is not."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        raise UsageError(f"{what} {path} is a file, not a folder; give a folder") from None
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be written ({e.strerror}); give a folder you can write to") from None


DECILES_FROM = 32  # nodes: from here the summary prints the deciles too


def print_summary(console: Console, s: dict, run_dir: Path | None) -> None:
    table = Table(title=f"{s['name']}: mode {s['mode']}, {s['nodes']} nodes, {s['rounds']} rounds, seed {s['seed']}")
    table.add_column("group")
    table.add_column("nodes", justify="right")
    for what in ("personal", "global"):
        table.add_column(f"{what}\nmean / worst / worst 10%", justify="center")
    rows = [("all", s)] + ([("honest (attackers apart)", s["honest"])] if "honest" in s else [])
    rows += [(arch, v) for arch, v in s["per_arch"].items()]
    rows += [(f"profile {name}", v) for name, v in s.get("per_profile", {}).items()]
    for name, v in rows:
        cells = [" / ".join(f"{v[w][k]:.3f}" for k in ("mean", "worst", "worst_decile")) for w in ("personal", "global")]
        table.add_row(name, str(v["nodes"]), *cells)
    console.print(table)
    if s["nodes"] >= DECILES_FROM:
        for what in ("personal", "global"):
            console.print(f"{what} deciles (10% .. 90% of nodes): "
                          + " ".join(f"{q:.3f}" for q in s[what]["deciles"]), highlight=False)
    weights = s.get("fedavg_fp32_bytes_per_node_per_round")  # simulations know every model's size
    simulated = s.get("simulated_time_s")
    refused, by = refusals(s)
    console.print(
        f"bytes sent per node per round: {_bytes(s['bytes_per_node_per_round'])} "
        + (f"(full fp32 weights to every neighbour would be {_bytes(weights)})  " if weights else "")
        + f"wall time {s['wall_time_s']:.1f} s"
        + (f"  simulated {simulated:.1f} s" if simulated is not None else "")
        + (f"  rejected by {by} {refused}" if refused else ""), highlight=False)
    if "churn" in s:
        print_churn(console, s)
    if "epsilon_spent" in s:
        console.print(f"privacy: epsilon spent per node at most {s['epsilon_spent']['max']:.3f} (opacus's RDP accountant)",
                      highlight=False)
    if run_dir is not None:
        console.print(f"metrics: {run_dir / 'metrics.jsonl'}  summary: {run_dir / 'summary.json'}", highlight=False)


def print_churn(console: Console, s: dict) -> None:
    """What the run's events did: one line per event, then how the nodes came through them."""
    events = Table(title="events", show_edge=False)
    for col in ("round", "time", "event", "nodes", "from"):
        events.add_column(col)
    for e in s["events"]:
        events.add_row(str(e["round"]), f"{e['time']:.1f} s", e["event"] + (f" x{e['speed']}" if "speed" in e else ""),
                       " ".join(e["nodes"]) or "-", e["source"])
    console.print(events)
    c = s["churn"]
    up = list(c["up_share"].values())
    lines = [f"nodes up {min(up):.0%}-{max(up):.0%} of rounds (mean {sum(up) / len(up):.0%}), {c['restarts']} restarts, "
             f"waiting {c['waiting_share']:.1%} of the time, {c['skipped_rounds']} rounds skipped to catch up"
             + (f" ({c['made_up_steps']} steps made up)" if c.get("made_up_steps") else "")
             + (f", {c['alone_rounds']} rounds with no neighbour up" if c["alone_rounds"] else "")]
    if c.get("never_up"):
        lines.append(f"never up, so not in the accuracies above: {' '.join(c['never_up'])}")
    for h in c.get("recovery", []):
        back = h["rounds_to_recover"]
        lines.append(f"split at round {h['split_round']}, healed at {h['heal_round']}: "
                     + (f"back within 0.01 of its level before the split after {back} rounds" if back is not None
                        else "not back to its level before the split by the end"))
    for j in c.get("joiners", []):
        n, m = j["rounds_to_median"], j["rounds_to_profile_median"]
        lines.append(f"{j['node']} joined at round {j['joined_round']}: "
                     + (f"reached the median node after {n} rounds" if n is not None else "never reached the median node")
                     + (f", its profile's median after {m}" if m is not None else ", nor its profile's median"))
    console.print("\n".join(lines), highlight=False)


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# -- node, status, psk --------------------------------------------------------------------------

def cmd_node(args: argparse.Namespace) -> int:
    import signal

    import torch
    import trio

    from p2pfl.realnode import RealNodeConfig, parse_shard, run_real_node
    from p2pfl.transport.mdns import DEFAULT_DEGREE
    from p2pfl.assemble import resolve_profile
    import multiaddr

    from p2pfl.transport.libp2p import Policy, parse_peer, read_allowlist, read_psk

    for addr in args.peers:
        parse_peer(addr)  # a bad address is an error now, not after the data is loaded
    try:
        multiaddr.Multiaddr(args.listen)
    except Exception as e:  # multiaddr raises its own error types for every malformed part
        raise UsageError(f"--listen {args.listen!r} is not a multiaddr ({e}); expected e.g. /ip4/0.0.0.0/tcp/4001 "
                         f"(any interface, port 4001) or /ip4/127.0.0.1/tcp/0 (this machine, any free port)") from None
    overrides = scenario_overrides(args, (("data", "data.source"), ("partition", "data.partition"), ("rounds", "rounds")))
    path = shipped.scenario(args.scenario)  # a path, or a shipped scenario's name from any folder
    scenario = load_scenario(path, overrides)
    _writable_folder(Path(args.state_dir).expanduser(), "--state-dir")  # after the settings, before the data loads
    shard, shards = parse_shard(args.shard)
    if args.profile:
        resolve_profile(args.profile)  # a bad profile is an error now, not inside the running node
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.attack and not args.attack_drill:
        raise UsageError(f"--attack {args.attack}: this node would lie to its neighbours; it is for testing "
                         f"defences: add --attack-drill to confirm")
    if args.attack:  # a lie its mode cannot tell would leave a drill that silently sends honest frames
        check_attack(scenario.mode, args.attack, "--attack")
    cfg = RealNodeConfig(
        scenario=scenario, shard=shard, shards=shards, state_dir=Path(args.state_dir).expanduser(),
        listen=args.listen, peers=tuple(args.peers), profile=args.profile,
        psk=read_psk(Path(args.psk_file)) if args.psk_file else None,
        policy=Policy(allow=read_allowlist(Path(args.allow)) if args.allow else frozenset(), accept_any=args.accept_any),
        name=args.name, min_peers=args.min_peers, start_timeout=args.start_timeout,
        attack=AttackConfig(kind=args.attack, count=1) if args.attack else None,
        discover=args.discover or "", degree=args.degree or DEFAULT_DEGREE,
    )
    if args.degree is not None and (args.degree < 1 or not args.discover):
        raise UsageError(f"--degree {args.degree}: discovered neighbours to keep, >= 1, with --discover mdns")
    if args.min_peers is not None and args.min_peers < 0 or args.start_timeout <= 0:
        raise UsageError(f"--min-peers {args.min_peers} / --start-timeout {args.start_timeout}: need N >= 0 and S > 0, "
                         f"e.g. --min-peers 1 --start-timeout 60")
    out = Console(highlight=False, soft_wrap=True)  # an address split over two lines can't be copied

    def on_start(addrs: list[str], start: int) -> None:
        for a in addrs:
            out.print(f"listening on {a}")
        out.print(f"resuming after round {start}" if start else "starting at round 0", style="dim")

    def on_record(r: dict) -> None:
        if args.json:
            print(json.dumps(r, default=str), flush=True)
            return
        acc = (f"global {r['global_acc']:.3f}  personal {r['personal_acc']:.3f}" if "global_acc" in r else "")
        rejected = sum(r["rejected"].values())
        out.print(f"round {r['round']}/{scenario.rounds}  {acc}  out {_bytes(r['bytes_out'])}  in {_bytes(r['bytes_in'])}  "
                  f"neighbours {r['neighbours_up']}  teachers {r['contributors']}" + (f"  rejected {rejected}" if rejected else ""))

    async def main() -> None:
        # SIGINT/SIGTERM: cancel the node, which says bye to its neighbours (bounded) and returns
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                async def stop_on_signal() -> None:
                    async for sig in signals:
                        err.print(f"{signal.Signals(sig).name}: saying bye and stopping")
                        nursery.cancel_scope.cancel()
                nursery.start_soon(stop_on_signal)
                await run_real_node(cfg, on_start=on_start, on_record=on_record,
                                    say=lambda line: out.print(line, style="dim"))
                nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import trio

    from p2pfl.transport.libp2p import query_status, read_psk

    if not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout}: seconds to wait for the node's answer, > 0, e.g. --timeout 10")
    psk = read_psk(Path(args.psk_file)) if args.psk_file else None
    hint = "is the node running, and (for a private network) is --psk-file the network's key?"
    try:
        st = trio.run(lambda: query_status(args.addr, psk=psk, timeout=args.timeout))
    except trio.TooSlowError:
        raise UsageError(f"no status from {args.addr} within {args.timeout:.0f}s: {hint}") from None
    except ValueError:
        raise
    except Exception as e:  # libp2p's dial errors arrive wrapped in exception groups
        leaves = _leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
        raise UsageError(f"cannot reach {args.addr} ({type(leaves[0]).__name__}: {leaves[0]}): {hint}") from None
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    console = Console(highlight=False)
    console.print(f"[bold]{st.get('name', st.get('node'))}[/bold]  {st.get('arch')}  mode {st.get('mode')}  "
                  f"round {st.get('round')}/{st.get('rounds')}  shard {st.get('shard', '-')}  "
                  f"out {_bytes(st.get('bytes_out', 0))}  in {_bytes(st.get('bytes_in', 0))}")
    table = Table("neighbour", "up", "last round", "trust", "weight kept")
    for pid, p in sorted(st.get("neighbours", {}).items()):
        trust, kept = p.get("trust"), p.get("reputation")
        table.add_row(pid, "yes" if p.get("up") else "no", str(p.get("round")), "-" if trust is None else f"{trust:.2f}",
                      "-" if kept is None else f"{kept:.2f}")
    console.print(table)
    if "epsilon" in st:
        console.print(f"privacy: epsilon {st['epsilon']:.3f} spent (the accountant's, at the run's delta)")
    rejected = st.get("rejected", {})
    console.print("rejected: " + (", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) if rejected else "none"))
    if st.get("delta_behind"):
        console.print(f"delta frames dropped while waiting for a key frame: {st['delta_behind']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from p2pfl.report import report  # matplotlib: only when drawing

    out = Console(highlight=False, soft_wrap=True)
    for page in report(args.runs, out=args.out, compare=args.compare):
        out.print(f"wrote {page} and its figures in {page.parent}")
    return 0


def cmd_psk(args: argparse.Namespace) -> int:
    from p2pfl.files import atomic_write_bytes
    from p2pfl.transport.libp2p import new_psk

    if Path(args.out).exists():
        raise UsageError(f"{args.out} exists; a network's key is not overwritten (delete it first if you mean to)")
    atomic_write_bytes(args.out, new_psk().encode(), mode=0o600)
    Console().print(f"wrote {args.out}; give every node of the network the same file with --psk-file {args.out}")
    return 0


# -- topo ---------------------------------------------------------------------------------------

def cmd_topo(args: argparse.Namespace) -> int:
    from p2pfl.topology import Topology, check_connected, describe, load_topology, make_topology, save_topology

    path = shipped.find("topologies", args.name) if args.nodes is None or Path(args.name).exists() else None
    if path is not None:
        topo = load_topology(path)
        check_connected(topo.graph, names=topo.names)
    else:
        if args.nodes is None:
            raise UsageError(f"--nodes is required to generate {args.name!r} "
                             f"(or pass a topology file; {shipped.listing('topologies')})")
        params = {}
        for item in args.param:
            if "=" not in item:
                raise UsageError(f"--param {item!r}: expected KEY=VALUE, e.g. --param k=4")
            k, v = item.split("=", 1)
            params[k] = parse_value(v)
        graph = make_topology(args.name, args.nodes, seed=args.seed, **params)
        topo = Topology.from_graph(f"{args.name}-{args.nodes}", graph)
    info = describe(topo.graph)
    if args.out:
        save_topology(topo, args.out)
    if args.json:
        print(json.dumps({"name": topo.name, **info}, indent=2))
    else:
        table = Table(title=topo.name, show_header=False)
        for k, v in info.items():
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
        Console().print(table)
        if args.out:
            Console().print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
