"""The README's two set-up commands and .ci/run cannot drift apart: CI runs exactly what a newcomer types."""

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> tuple[list[str], list[str]]:
    """(command 1 split on &&, command 2) from the README's set-up block, each as shell words."""
    block = re.search(r"## Set-up: two commands\s+```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    lines = [line.strip() for line in block.splitlines()]
    one = lines[lines.index(next(l for l in lines if l.startswith("# 1)"))) + 1]
    two = lines[lines.index(next(l for l in lines if l.startswith("# 2)"))) + 1]
    return [shlex.split(part) for part in one.split(" && ")], shlex.split(two)


def ci_commands() -> list[list[str]]:
    """.ci/run's commands as shell words, without --quiet (CI's only difference: less output)."""
    words = [shlex.split(line, comments=True) for line in (REPO / ".ci" / "run").read_text().splitlines()]
    return [[w for w in cmd if w != "--quiet"] for cmd in words if cmd]


def test_ci_runs_the_readme_install_and_test_commands_in_order_after_a_clean_venv():
    install, test = readme_commands()
    torch_line = next(c for c in install if c[:2] == ["pip", "install"] and any(w.startswith("torch==") for w in c))
    project_line = next(c for c in install if c[:3] == ["pip", "install", "-e"])
    ci = ci_commands()
    assert test == ["python", "-m", "pytest"]
    assert ["python3", "-m", "venv", ".ci/venv"] in ci and [".", ".ci/venv/bin/activate"] in ci
    for c in (torch_line, project_line, test):
        assert c in ci, f".ci/run does not run the README's {shlex.join(c)!r}"
    positions = [ci.index(c) for c in ([".", ".ci/venv/bin/activate"], torch_line, project_line, test)]
    assert positions == sorted(positions), ci  # a fresh venv, then torch, the project and the tests
    assert install.index(torch_line) < install.index(project_line)


def test_the_torch_line_asks_for_the_cpu_build_and_bounds_the_unreachable_index():
    install, _ = readme_commands()
    torch_line = next(c for c in install if any(w.startswith("torch==") for w in c))
    pin = next(w for w in torch_line if w.startswith("torch=="))
    assert pin.endswith("+cpu")  # PyPI has no local versions: never a CUDA build, even with PyPI visible
    assert torch_line[torch_line.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert int(torch_line[torch_line.index("--retries") + 1]) <= 1
    assert float(torch_line[torch_line.index("--timeout") + 1]) <= 10


def test_the_readme_results_are_what_the_benchmarks_json_gives():
    import runpy

    page = runpy.run_path(str(REPO / "scripts" / "results_page.py"))
    text = (REPO / "README.md").read_text()
    assert page["replaced"](text) == text, "README.md's Results section is stale: run python scripts/results_page.py"
