"""Communication graphs: generators, topology files, connectivity, mixing weights (pure: no trio/torch)."""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import networkx as nx
import numpy as np

from p2pfl import shipped
from p2pfl.config import TOPOLOGY_GENERATORS
from p2pfl.files import atomic_write_bytes

# A random generator that keeps producing disconnected graphs is almost always asked for too
# sparse a graph; 100 tries make a spurious failure astronomically unlikely for sane parameters.
MAX_CONNECT_ATTEMPTS = 100

FILE_SUFFIXES = (".toml", ".graphml", ".edges", ".txt")


class TopologyError(ValueError):
    """A topology that can't be built or read; the message says how to fix it."""


# ---------------------------------------------------------------------------------------------
# parameter checks (values may arrive as strings from the CLI or a TOML file)


def _int_param(topo: str, key: str, value, lo: int, hi: int | None = None) -> int:
    v = value
    if isinstance(value, str):
        try:
            v = int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, float) and value.is_integer():
        v = int(value)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TopologyError(f"{topo}: {key} must be an integer, got {value!r}")
    if v < lo or (hi is not None and v > hi):
        allowed = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise TopologyError(f"{topo}: {key} must be {allowed}, got {v}")
    return v


def _prob_param(topo: str, key: str, value) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise TopologyError(f"{topo}: {key} must be a probability in [0, 1], got {value!r}") from None
    if isinstance(value, bool) or not 0.0 <= p <= 1.0:
        raise TopologyError(f"{topo}: {key} must be a probability in [0, 1], got {value!r}")
    return p


def _derived_seed(seed: int, attempt: int) -> int:
    # attempt 0 uses the seed itself, so seed s matches networkx's own graph for seed s when it
    # is connected; later attempts hash (seed, attempt), which str seeding does stably (sha512).
    if attempt == 0:
        return seed
    return random.Random(f"p2pfl-topology/{seed}/{attempt}").getrandbits(63)


def _connected(build: Callable[[int], nx.Graph], seed: int, what: str, fix: str) -> nx.Graph:
    for attempt in range(MAX_CONNECT_ATTEMPTS):
        g = build(_derived_seed(seed, attempt))
        if nx.is_connected(g):
            return g
    raise TopologyError(
        f"{what} was disconnected in all {MAX_CONNECT_ATTEMPTS} attempts from seed {seed}; {fix}"
    )


def _grid_shape(topo: str, n: int, rows) -> tuple[int, int]:
    if rows is None:
        # the most square factorization keeps the diameter (and so the mixing time) smallest
        rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
        return rows, n // rows
    rows = _int_param(topo, "rows", rows, 1, n)
    if n % rows:
        divisors = ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
        raise TopologyError(f"{topo}: rows={rows} does not divide n={n}; choose rows from: {divisors}")
    return rows, n // rows


def _lattice(n: int, rows: int, cols: int, periodic: bool) -> nx.Graph:
    g = nx.empty_graph(n)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for rr, cc in ((r + 1, c), (r, c + 1)):
                if periodic:
                    rr, cc = rr % rows, cc % cols
                if rr < rows and cc < cols and (rr, cc) != (r, c):
                    g.add_edge(i, rr * cols + cc)
    return g


# ---------------------------------------------------------------------------------------------
# generators: f(n, seed, **params) -> graph on 0..n-1; make_topology validates n and param names


def ring(n: int, seed: int) -> nx.Graph:
    return nx.cycle_graph(n) if n >= 3 else nx.path_graph(n)  # cycle_graph(1) is a self-loop


def line(n: int, seed: int) -> nx.Graph:
    return nx.path_graph(n)


def star(n: int, seed: int) -> nx.Graph:
    return nx.star_graph(n - 1)


def complete(n: int, seed: int) -> nx.Graph:
    return nx.complete_graph(n)


def grid(n: int, seed: int, rows: int | None = None) -> nx.Graph:
    return _lattice(n, *_grid_shape("grid", n, rows), periodic=False)


def torus(n: int, seed: int, rows: int | None = None) -> nx.Graph:
    return _lattice(n, *_grid_shape("torus", n, rows), periodic=True)


def erdos_renyi(n: int, seed: int, p: float | None = None) -> nx.Graph:
    # 2 ln(n)/n is twice the connectivity threshold ln(n)/n: connected with high probability
    p = min(1.0, 2 * math.log(n) / n) if p is None else _prob_param("erdos-renyi", "p", p)
    return _connected(
        lambda s: nx.gnp_random_graph(n, p, seed=s),
        seed, f"erdos-renyi graph with n={n}, p={p:.3g}", "raise p (about 2*ln(n)/n connects)",
    )


def small_world(n: int, seed: int, k: int = 4, p: float = 0.2) -> nx.Graph:
    k = _int_param("small-world", "k", k, 2)
    p = _prob_param("small-world", "p", p)
    if k >= n:
        raise TopologyError(f"small-world: k={k} needs n > k, got n={n}; lower k or use 'complete'")
    if k % 2:
        raise TopologyError(f"small-world: k must be even (k/2 neighbours on each side), got k={k}")
    return _connected(
        lambda s: nx.watts_strogatz_graph(n, k, p, seed=s),
        seed, f"small-world graph with n={n}, k={k}, p={p:g}", "raise k or lower p",
    )


def barabasi_albert(n: int, seed: int, m: int = 2) -> nx.Graph:
    if n < 2:
        raise TopologyError(f"barabasi-albert: needs n >= 2, got n={n}")
    m = _int_param("barabasi-albert", "m", m, 1, n - 1)
    return _connected(
        lambda s: nx.barabasi_albert_graph(n, m, seed=s),
        seed, f"barabasi-albert graph with n={n}, m={m}", "raise m",
    )


def random_regular(n: int, seed: int, d: int = 3) -> nx.Graph:
    if n < 2:
        raise TopologyError(f"random-regular: needs n >= 2, got n={n}")
    d = _int_param("random-regular", "d", d, 1, n - 1)
    if n * d % 2:
        raise TopologyError(
            f"random-regular: n*d must be even (every edge has two ends), got n={n}, d={d}; "
            f"change d to {d + 1 if d + 1 < n else d - 1} or n to {n + 1}"
        )
    return _connected(
        lambda s: nx.random_regular_graph(d, n, seed=s),
        seed, f"random-regular graph with n={n}, d={d}", "raise d (d >= 3 is almost surely connected)",
    )


GENERATORS: dict[str, Callable[..., nx.Graph]] = {
    "ring": ring,
    "line": line,
    "star": star,
    "complete": complete,
    "grid": grid,
    "torus": torus,
    "erdos-renyi": erdos_renyi,
    "small-world": small_world,
    "watts-strogatz": small_world,
    "barabasi-albert": barabasi_albert,
    "random-regular": random_regular,
}
assert tuple(GENERATORS) == TOPOLOGY_GENERATORS, "config.TOPOLOGY_GENERATORS must name topology.GENERATORS"


def _generator_params(fn: Callable) -> list[str]:
    return list(inspect.signature(fn).parameters)[2:]  # after (n, seed)


def _canonical(g: nx.Graph, n: int) -> nx.Graph:
    # nodes 0..n-1 in order and sorted edges, so iteration order is the same for every caller
    assert sorted(g.nodes) == list(range(n)), f"generator returned nodes {sorted(g.nodes)[:10]}..."
    out = nx.Graph()
    out.add_nodes_from(range(n))
    out.add_edges_from(sorted((min(u, v), max(u, v)) for u, v in g.edges if u != v))
    return out


def make_topology(name: str, n: int, *, seed: int = 0, **params) -> nx.Graph:
    """A simple undirected graph on nodes 0..n-1 from a named generator; random ones are connected."""
    key = name.strip().lower().replace("_", "-")
    if key not in GENERATORS:
        raise TopologyError(f"unknown topology {name!r}; choose one of: {', '.join(GENERATORS)}")
    fn = GENERATORS[key]
    n = _int_param(key, "n", n, 1)
    seed = _int_param(key, "seed", seed, -(2**63), 2**63 - 1)
    allowed = _generator_params(fn)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        choices = f"allowed: {', '.join(allowed)}" if allowed else f"{key} takes no parameters"
        raise TopologyError(f"unknown parameter {', '.join(map(repr, unknown))} for {key}; {choices}")
    g = _canonical(fn(n, seed, **params), n)
    g.graph["name"] = f"{key}-{n}"
    return g


# ---------------------------------------------------------------------------------------------
# graph properties


def check_connected(graph: nx.Graph, *, names: Sequence[str] | None = None) -> None:
    """Raise TopologyError when the graph is empty or disconnected, showing its components."""
    if graph.number_of_nodes() == 0:
        raise TopologyError("topology has no nodes; it needs at least 1 node")
    if nx.is_connected(graph):
        return
    comps = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: (-len(c), c))
    label = (lambda v: names[v]) if names is not None else str
    shown = []
    for c in comps[:4]:
        head = ", ".join(label(v) for v in c[:5]) + (", ..." if len(c) > 5 else "")
        shown.append(f"[{head}] ({len(c)} nodes)")
    more = f" and {len(comps) - 4} more" if len(comps) > 4 else ""
    raise TopologyError(
        f"topology is disconnected: {len(comps)} components: {'; '.join(shown)}{more}; "
        "add edges between them or choose a denser topology"
    )


def _index_nodes(graph: nx.Graph) -> int:
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise TopologyError("graph nodes must be 0..n-1; relabel with Topology.from_graph(name, graph)")
    return n


def neighbors(graph: nx.Graph, i: int) -> list[int]:
    """Node i's neighbours, sorted, never including i itself."""
    return sorted(v for v in graph.neighbors(i) if v != i)


def metropolis_hastings_weights(graph: nx.Graph) -> np.ndarray:
    """(n, n) symmetric doubly stochastic mixing matrix: W_ij = 1/(1+max(d_i, d_j)) on edges."""
    n = _index_nodes(graph)
    deg = np.array([len(neighbors(graph, i)) for i in range(n)], dtype=np.float64)  # (n,)
    w = np.zeros((n, n))
    for u, v in graph.edges:
        if u != v:
            w[u, v] = w[v, u] = 1.0 / (1.0 + max(deg[u], deg[v]))
    # each row's off-diagonal sum is < 1 since every term is < 1/d_i, so the diagonal stays > 0
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    return w


def describe(graph: nx.Graph) -> dict:
    """Size, degrees, diameter and the spectral gap of the MH matrix (larger gap, faster mixing)."""
    n = _index_nodes(graph)
    deg = [d for _, d in graph.degree] or [0]
    connected = n > 0 and nx.is_connected(graph)
    if n > 1:
        eig = np.sort(np.abs(np.linalg.eigvalsh(metropolis_hastings_weights(graph))))[::-1]
        gap = float(1.0 - eig[1])
    else:
        gap = 1.0 if n == 1 else 0.0
    return {
        "nodes": n,
        "edges": graph.number_of_edges(),
        "connected": connected,
        "components": nx.number_connected_components(graph) if n else 0,
        "min_degree": int(min(deg)),
        "mean_degree": float(np.mean(deg)),
        "max_degree": int(max(deg)),
        "diameter": nx.diameter(graph) if connected else None,
        "spectral_gap": max(gap, 0.0),
    }


# ---------------------------------------------------------------------------------------------
# named topologies and files

_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


def _natural_key(s: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t]


@dataclass(frozen=True, eq=False)
class Topology:
    """A named graph on nodes 0..len(names)-1, node i called names[i], optional name -> host:port."""

    name: str
    graph: nx.Graph
    names: tuple[str, ...]
    hosts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.names)
        if len(set(self.names)) != n:
            dup = sorted({x for x in self.names if self.names.count(x) > 1})
            raise TopologyError(f"topology {self.name!r}: duplicate node names {dup}; names must be unique")
        if set(self.graph.nodes) != set(range(n)):
            raise TopologyError(f"topology {self.name!r}: graph nodes must be 0..{n - 1}, one per name")
        loops = [self.names[u] for u, v in self.graph.edges if u == v]
        if loops:
            raise TopologyError(f"topology {self.name!r}: self-loop on {loops[0]!r}; remove that edge")
        for node, addr in self.hosts.items():
            if node not in self.names:
                raise TopologyError(f"topology {self.name!r}: hosts names unknown node {node!r}")
            _check_host(addr, f"topology {self.name!r}: hosts.{node}")

    @property
    def n(self) -> int:
        return len(self.names)

    def edge_names(self) -> list[tuple[str, str]]:
        return [(self.names[u], self.names[v]) for u, v in sorted(tuple(sorted(e)) for e in self.graph.edges)]

    def __eq__(self, other):
        # by content: the generated eq would compare nx.Graph objects by identity
        if not isinstance(other, Topology):
            return NotImplemented
        return (self.name, self.names, self.edge_names(), self.hosts) == (
            other.name, other.names, other.edge_names(), other.hosts)

    @classmethod
    def from_graph(cls, name: str, graph: nx.Graph, hosts: dict[str, str] | None = None) -> "Topology":
        """Relabel any networkx graph to 0..n-1; int graphs get names n0.., others keep str(label)."""
        if graph.is_directed() or graph.is_multigraph():
            graph = nx.Graph(graph)  # links in p2pfl are bidirectional and unweighted
        n = graph.number_of_nodes()
        if set(graph.nodes) == set(range(n)):
            order, names = list(range(n)), tuple(f"n{i}" for i in range(n))
        else:
            order, names = list(graph.nodes), tuple(str(v) for v in graph.nodes)
        index = {v: i for i, v in enumerate(order)}
        g = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_edges_from(sorted((min(index[u], index[v]), max(index[u], index[v])) for u, v in graph.edges))
        return cls(name, g, names, dict(hosts or {}))


def _check_host(addr, where: str) -> str:
    m = _HOST_RE.match(addr) if isinstance(addr, str) else None
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise TopologyError(f'{where} = {addr!r} is not "host:port" (port 1-65535), e.g. "192.168.1.20:4001"')
    return addr


def _build(name: str, declared: list[str], edges: list[tuple[str, str]], hosts: dict, where: str,
           strict_nodes: bool) -> Topology:
    """Names = declared ones in order, then edge-only names in natural order (n2 before n10)."""
    seen = set()
    for i, x in enumerate(declared):
        if x in seen:
            raise TopologyError(f"{where}: nodes has duplicate name {x!r} (entry {i}); names must be unique")
        seen.add(x)
    extra = sorted({x for e in edges for x in e} - seen, key=_natural_key)
    if strict_nodes and extra:
        raise TopologyError(f"{where}: edges name unknown node {extra[0]!r}; add it to nodes or fix the edge")
    names = tuple(declared) + tuple(extra)
    if not names:
        raise TopologyError(f"{where}: no nodes; add edges like [\"n0\", \"n1\"]")
    index = {x: i for i, x in enumerate(names)}
    g = nx.Graph()
    g.add_nodes_from(range(len(names)))
    for u, v in edges:
        if u == v:
            raise TopologyError(f"{where}: edges has a self-loop on {u!r}; remove it")
        g.add_edge(index[u], index[v])
    for node in hosts:
        if node not in index:
            raise TopologyError(f"{where}: hosts names unknown node {node!r}; choose from the node names")
        _check_host(hosts[node], f"{where}: hosts.{node}")
    return Topology(name, g, names, dict(hosts))


def _load_toml(path: Path) -> Topology:
    where = str(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{where}: invalid TOML: {e}") from None
    unknown = sorted(set(doc) - {"name", "nodes", "edges", "hosts"})
    if unknown:
        raise TopologyError(f"{where}: unknown key {unknown[0]!r}; allowed keys: name, nodes, edges, hosts")
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise TopologyError(f"{where}: name must be a non-empty string, got {name!r}")
    if "edges" not in doc:
        raise TopologyError(
            f'{where}: missing key \'edges\'; add edges = [["n0", "n1"], ...] (edges = [] for one node)'
        )

    def node_name(x, key: str) -> str:
        if not isinstance(x, str) or not x:
            raise TopologyError(f'{where}: {key} must be a node name string like "n0", got {x!r}')
        return x

    nodes = doc.get("nodes", [])
    if not isinstance(nodes, list):
        raise TopologyError(f'{where}: nodes must be a list of names like ["n0", "n1"], got {nodes!r}')
    declared = [node_name(x, f"nodes[{i}]") for i, x in enumerate(nodes)]
    if not isinstance(doc["edges"], list):
        got = doc["edges"]
        raise TopologyError(f'{where}: edges must be a list of pairs like [["n0", "n1"]], got {got!r}')
    edges = []
    for i, e in enumerate(doc["edges"]):
        if not isinstance(e, list) or len(e) != 2:
            raise TopologyError(f'{where}: edges[{i}] must be a pair like ["n0", "n1"], got {e!r}')
        edges.append((node_name(e[0], f"edges[{i}][0]"), node_name(e[1], f"edges[{i}][1]")))
    hosts = doc.get("hosts", {})
    if not isinstance(hosts, dict):
        raise TopologyError(f'{where}: hosts must be a table [hosts] of n0 = "host:port", got {hosts!r}')
    return _build(name, declared, edges, hosts, where, strict_nodes="nodes" in doc)


def _load_edges(path: Path) -> Topology:
    declared, edges = [], []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        tokens = raw.split("#", 1)[0].split()
        if len(tokens) == 1:  # a lone name declares a node (keeps order and isolated nodes)
            if tokens[0] not in declared:
                declared.append(tokens[0])
        elif len(tokens) == 2:
            edges.append((tokens[0], tokens[1]))
        elif tokens:
            got = raw.strip()
            raise TopologyError(f"{path}: line {lineno}: expected 'u v' (one edge per line), got {got!r}")
    return _build(path.stem, declared, edges, {}, f"{path}", strict_nodes=False)


def _load_graphml(path: Path) -> Topology:
    try:
        g = nx.read_graphml(path)
    except Exception as e:  # noqa: BLE001 - XML and networkx errors alike mean a bad file
        raise TopologyError(f"{path}: not a readable GraphML file: {e}") from None
    g = nx.Graph(g)
    names = [str(v) for v in g.nodes]
    hosts = {str(v): a["host"] for v, a in g.nodes(data=True) if "host" in a}
    edges = [(str(u), str(v)) for u, v in g.edges]
    return _build(str(g.graph.get("name") or path.stem), names, edges, hosts, f"{path}", strict_nodes=True)


def _suffix_error(path: Path) -> TopologyError:
    return TopologyError(f"{path}: unsupported suffix {path.suffix!r}; use one of: {', '.join(FILE_SUFFIXES)}")


def load_topology(path: str | os.PathLike) -> Topology:
    """Read a .toml, .graphml or .edges/.txt topology file; errors name the file, key and fix."""
    path = Path(path)
    loader = {".toml": _load_toml, ".graphml": _load_graphml, ".edges": _load_edges, ".txt": _load_edges}.get(
        path.suffix.lower()
    )
    if loader is None:
        raise _suffix_error(path)
    if not path.is_file():
        raise TopologyError(f"topology file {str(path)!r} not found")
    return loader(path)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _toml_key(s: str) -> str:
    return s if re.fullmatch(r"[A-Za-z0-9_-]+", s) else _toml_str(s)


def _dump_toml(t: Topology) -> str:
    out = [f"# p2pfl topology: {t.n} nodes, {t.graph.number_of_edges()} edges", f"name = {_toml_str(t.name)}"]
    out.append("nodes = [")
    for i in range(0, t.n, 8):
        out.append("  " + ", ".join(_toml_str(x) for x in t.names[i:i + 8]) + ",")
    out.append("]")
    out.append("edges = [")
    out += [f"  [{_toml_str(u)}, {_toml_str(v)}]," for u, v in t.edge_names()]
    out.append("]")
    if t.hosts:
        out += ["", "[hosts]"]
        out += [f"{_toml_key(k)} = {_toml_str(t.hosts[k])}" for k in t.names if k in t.hosts]
    return "\n".join(out) + "\n"


def _dump_edges(t: Topology) -> str:
    out = [f"# p2pfl topology {t.name}: {t.n} nodes, {t.graph.number_of_edges()} edges", "# nodes"]
    out += list(t.names) + ["# edges"] + [f"{u} {v}" for u, v in t.edge_names()]
    return "\n".join(out) + "\n"


def _dump_graphml(t: Topology) -> bytes:
    g = nx.Graph(name=t.name)
    for x in t.names:
        g.add_node(x, **({"host": t.hosts[x]} if x in t.hosts else {}))
    g.add_edges_from(t.edge_names())
    return ("\n".join(nx.generate_graphml(g)) + "\n").encode("utf-8")


def save_topology(topology: Topology, path: str | os.PathLike) -> None:
    """Write atomically (see files.atomic_write_bytes); the format comes from the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data = _dump_toml(topology).encode("utf-8")
    elif suffix == ".graphml":
        data = _dump_graphml(topology)
    elif suffix in (".edges", ".txt"):
        if topology.hosts:
            raise TopologyError(f"{path}: edge lists can't hold [hosts]; save as .toml or .graphml")
        bad = [x for x in topology.names if not x or any(c.isspace() or c == "#" for c in x)]
        if bad:
            raise TopologyError(f"{path}: node name {bad[0]!r} has whitespace or '#'; save as .toml")
        data = _dump_edges(topology).encode("utf-8")
    else:
        raise _suffix_error(path)
    atomic_write_bytes(path, data)


def resolve_topology(spec: str, n: int | None, seed: int = 0, **params) -> Topology:
    """A topology file path or a generator name (then n is required); the result is connected."""
    spec = os.fspath(spec)
    path = Path(spec)
    if not path.is_file() and spec.strip().lower().replace("_", "-") not in GENERATORS:
        path = shipped.find("topologies", spec) or path  # topologies/ring-8.toml or ring-8, from any folder
    if path.is_file():
        if params:
            given = ", ".join(sorted(params))
            raise TopologyError(f"{spec}: parameters {given} only apply to generated topologies, not files")
        topo = load_topology(path)
        if n is not None and n != topo.n:
            raise TopologyError(
                f"topology file {spec!r} has {topo.n} nodes but n={n} was requested; "
                f"set topology.nodes = {topo.n} (p2pfl sim --nodes {topo.n}) or use a file with {n} nodes"
            )
    else:
        if path.suffix.lower() in FILE_SUFFIXES or os.sep in spec:
            raise TopologyError(f"topology file {spec!r} not found; {shipped.listing('topologies')}")
        key = spec.strip().lower().replace("_", "-")
        if key not in GENERATORS:
            raise TopologyError(
                f"unknown topology {spec!r}; choose one of: {', '.join(GENERATORS)}, a shipped topology "
                f"({', '.join(shipped.names('topologies'))}), or a path to a {'/'.join(FILE_SUFFIXES)} file"
            )
        if n is None:
            raise TopologyError(f"topology {spec!r} needs n, the number of nodes")
        topo = Topology.from_graph(f"{key}-{n}", make_topology(key, n, seed=seed, **params))
    check_connected(topo.graph, names=topo.names)
    return topo
