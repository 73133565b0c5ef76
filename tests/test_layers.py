"""The layers of docs/architecture.md, checked from the source: imports point down, one recipe builds nodes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "p2pfl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, *, top_level_only: bool) -> set[str]:
    """The p2pfl modules `name` imports (`from p2pfl import wire` counts as p2pfl.wire)."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("p2pfl")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("p2pfl"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            out |= subs or {node.module}
    return out - {name}


def _external(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_module_level_imports_have_no_cycle():
    graph = {m: _imports(m, top_level_only=True) & MODULES.keys() for m in MODULES}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, f"import cycle: {' -> '.join(path + [m])}"
        state[m] = 1
        for d in sorted(graph[m]):
            visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


RUNTIME = ("p2pfl.modes", "p2pfl.consensus", "p2pfl.learner", "p2pfl.models", "p2pfl.node", "p2pfl.sim",
           "p2pfl.gossip", "p2pfl.assemble", "p2pfl.data", "p2pfl.transport", "p2pfl.realnode")


@pytest.mark.parametrize("module, forbidden", [
    ("p2pfl.config", RUNTIME),  # a leaf: it owns its grammars and names no module above it
    ("p2pfl.mode_facts", ("p2pfl.",)),
    ("p2pfl.checkpoint", ("p2pfl.learner", "p2pfl.models")),
    ("p2pfl.realnode", ("p2pfl.sim",)),  # a real node is not built from a simulation
    ("p2pfl.modes", ("p2pfl.gossip", "p2pfl.node", "p2pfl.assemble", "p2pfl.sim")),
    ("p2pfl.gossip", ("p2pfl.node", "p2pfl.assemble", "p2pfl.sim", "p2pfl.transport")),
    ("p2pfl.node", ("p2pfl.assemble", "p2pfl.sim", "p2pfl.realnode")),
    ("p2pfl.launch", ("p2pfl.sim", "p2pfl.node", "p2pfl.learner")),
    ("p2pfl.events", RUNTIME),  # the schedule is data: only the simulation applies it
    ("p2pfl.lan", ("p2pfl.",)),  # namespaces and tc, nothing of the runtime
])
def test_imports_point_down(module, forbidden):
    bad = {m for m in _imports(module, top_level_only=False) if m.startswith(forbidden)}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(("p2pfl.wire", "p2pfl.gossip", "p2pfl.knowledge",
                                                                          "p2pfl.config", "p2pfl.mode_facts",
                                                                          "p2pfl.events"))])
def test_protocol_and_stream_logic_never_touch_io_or_torch(module):
    bad = {m for m in _external(module) if m.split(".")[0] in ("trio", "torch", "libp2p", "socket")}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_the_runtime_holds_no_mock_clock_machinery():
    source = MODULES["p2pfl.node"].read_text()
    assert "trio.testing" not in _external("p2pfl.node")
    assert "MockClock" not in source and "autojump" not in source


def test_nodes_are_built_in_one_place():
    builders = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Node":
                builders.append(str(path.relative_to(REPO)))
    assert builders == ["p2pfl/assemble.py"], builders


def test_the_sans_io_layers_load_no_io_or_torch_even_indirectly():
    import subprocess
    import sys

    code = ("import sys, p2pfl.wire, p2pfl.gossip, p2pfl.knowledge, p2pfl.config, p2pfl.mode_facts; "
            "print(sorted(m for m in ('torch', 'trio', 'libp2p') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
