"""An emulated LAN for real nodes: one network namespace per node, joined by a bridge, with netem.

    with EmulatedLan(8, netem=Netem(delay_ms=50, jitter_ms=10, loss_pct=2, rate="10mbit")) as lan:
        subprocess.run([*lan.prefix(0), "p2pfl", "node", ...])      # runs inside node 0's namespace
        lan.cut(3); ...; lan.restore(3)                             # node 3's cable out, then back in

Everything lives in namespaces made here, named p2pfl-lan-<tag>-*: the bridge sits in a namespace of its
own, and each veth pair is created with one end in a node's namespace and the other in the bridge's,
so no interface, address or route of the host's own namespace is created or touched, and multicast
(mDNS) stays on the bridge. Exit removes every namespace made (with them their interfaces), also after
an error or Ctrl-C; `remove_stale` clears what a killed run left. Needs root and iproute2 (`ip`, `tc`).

Delay, jitter and loss need the kernel's netem qdisc (sch_netem). A kernel without it (this project's CI
machine: `tc qdisc add ... netem` says "Specified qdisc kind is unknown") can still limit the rate, with
tbf: `EmulatedLan(..., partial=True)` applies what the kernel can and says what it could not in
`applied`; without `partial` it refuses, naming the module.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

PREFIX = "p2pfl-lan-"
SUBNET = "10.77.0"  # node i is 10.77.0.(i + 1)/24; nothing outside the namespaces routes to it


@dataclass(frozen=True)
class Netem:
    """What each node's link does to its outgoing packets (tc netem on the node's side of its veth)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate: str = ""  # e.g. "10mbit"; "" = unlimited

    @property
    def shapes_time(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct)

    def tbf_args(self) -> list[str]:
        """The rate alone, as a token bucket (for kernels without netem)."""
        return ["rate", self.rate, "burst", "32kbit", "latency", "400ms"] if self.rate else []

    def args(self) -> list[str]:
        out = []
        if self.delay_ms or self.jitter_ms:
            out += ["delay", f"{self.delay_ms}ms"] + ([f"{self.jitter_ms}ms", "distribution", "normal"]
                                                     if self.jitter_ms else [])
        if self.loss_pct:
            out += ["loss", f"{self.loss_pct}%"]
        if self.rate:
            out += ["rate", self.rate]
        return out


def parse_ms(text: str) -> float:
    """'50ms' / '0.05s' / '50' -> 50.0 (milliseconds)."""
    t = text.strip().lower()
    try:
        return float(t[:-2]) if t.endswith("ms") else float(t[:-1]) * 1000 if t.endswith("s") else float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration; write it as 50ms or 0.05s") from None


def parse_pct(text: str) -> float:
    """'2%' / '2' -> 2.0 (percent)."""
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise ValueError(f"{text!r} is not a percentage; write it as 2%") from None
    if not 0 <= value <= 100:
        raise ValueError(f"{text!r}: a loss between 0% and 100%")
    return value


def available() -> str | None:
    """None if namespaces can be made here, else why not (for skipping tests and refusing scripts)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found (install iproute2)"
    return None


class NetemMissing(RuntimeError):
    """The kernel has no netem qdisc, and delay, jitter or loss were asked for."""


class EmulatedLan:
    def __init__(self, nodes: int, *, netem: Netem = Netem(), tag: str | None = None, partial: bool = False):
        if not 1 <= nodes <= 250:
            raise ValueError(f"{nodes} nodes: an emulated LAN holds 1 to 250 (one /24)")
        self.nodes = nodes
        self.netem = netem
        self.tag = tag or secrets.token_hex(3)
        self.bridge_ns = f"{PREFIX}{self.tag}-br"
        self.partial = partial
        self.made: list[str] = []  # namespaces created, removed on exit
        self.applied = "none"  # what shapes each link: "netem ...", "tbf ... (no netem: ...)", "none"

    def ns(self, i: int) -> str:
        return f"{PREFIX}{self.tag}-{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program inside node i's namespace."""
        return ["ip", "netns", "exec", self.ns(i)]

    def __enter__(self) -> EmulatedLan:
        why = available()
        if why:
            raise RuntimeError(f"cannot emulate a LAN here: {why}")
        try:
            self._netns("add", self.bridge_ns)
            self._ip(self.bridge_ns, "link", "add", "br0", "type", "bridge")
            self._ip(self.bridge_ns, "link", "set", "br0", "up")
            for i in range(self.nodes):
                self._add_node(i)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_node(self, i: int) -> None:
        ns, side = self.ns(i), f"v{i}"
        self._netns("add", ns)
        # both ends made where they live: eth0 in the node's namespace, its peer in the bridge's
        self._ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", side, "netns", self.bridge_ns)
        self._ip(self.bridge_ns, "link", "set", side, "master", "br0")
        self._ip(self.bridge_ns, "link", "set", side, "up")
        self._ip(ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
        self._ip(ns, "link", "set", "lo", "up")
        self._ip(ns, "link", "set", "eth0", "up")
        self._ip(ns, "route", "add", "224.0.0.0/4", "dev", "eth0")  # multicast (mDNS) onto the segment
        if self.netem.args():
            self._shape(ns)

    def _shape(self, ns: str) -> None:
        tc = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root"]
        try:
            _run([*tc, "netem", *self.netem.args()])
            self.applied = "netem " + " ".join(self.netem.args())
            return
        except subprocess.CalledProcessError as e:
            if "unknown" not in (e.stderr or "").lower():
                raise
        lost = "delay, jitter and loss" if self.netem.shapes_time else ""
        if lost and not self.partial:
            raise NetemMissing("this kernel has no netem qdisc (sch_netem; `tc qdisc add ... netem` says the kind "
                               "is unknown), so delay, jitter and loss cannot be emulated; load the module "
                               "(modprobe sch_netem) or ask for the rate alone")
        if self.netem.rate:
            _run([*tc, "tbf", *self.netem.tbf_args()])
        self.applied = (f"tbf rate {self.netem.rate}" if self.netem.rate else "none") + \
                       (f" (no netem in this kernel: {lost} not applied)" if lost else "")

    def cut(self, i: int) -> None:
        """Node i's cable out: its bridge port goes down (its process and addresses stay as they are)."""
        self._ip(self.bridge_ns, "link", "set", f"v{i}", "down")

    def restore(self, i: int) -> None:
        self._ip(self.bridge_ns, "link", "set", f"v{i}", "up")

    def close(self) -> None:
        for ns in reversed(self.made):
            try:
                _run(["ip", "netns", "del", ns])
            except subprocess.CalledProcessError as e:
                log.warning("could not remove network namespace %s: %s", ns, e.stderr.strip())
        self.made.clear()

    def _netns(self, verb: str, ns: str) -> None:
        _run(["ip", "netns", verb, ns])
        if verb == "add":
            self.made.append(ns)

    @staticmethod
    def _ip(ns: str, *args: str) -> None:
        _run(["ip", "-n", ns, *args])


def existing() -> list[str]:
    """The p2pfl-lan-* namespaces there are now."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def remove_stale() -> list[str]:
    """Remove every p2pfl-lan-* namespace (what a killed emulation left behind); returns their names."""
    stale = existing()
    for ns in stale:
        _run(["ip", "netns", "del", ns])
    return stale


def _run(argv: list[str]) -> None:
    log.debug("$ %s", " ".join(argv))
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        log.debug("%s failed: %s", " ".join(argv), (e.stderr or "").strip())
        raise
