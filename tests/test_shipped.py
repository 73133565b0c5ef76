"""Shipped scenarios, node profiles and topologies: found by name or repository path from any folder, and packaged.

Building and installing a real wheel is scripts/check_wheel.sh (minutes); these checks need no network.
"""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from p2pfl import shipped
from p2pfl.cli import main
from p2pfl.config import ConfigError, load_scenario
from p2pfl.assemble import resolve_profile
from p2pfl.topology import GENERATORS, TopologyError, resolve_topology

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
REPO_FILES = [(kind, p) for kind in shipped.KINDS for p in sorted((REPO / kind).iterdir()) if p.is_file()]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from a folder outside the repository, as an installed p2pfl would be."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_checkout_uses_its_own_folders():
    for kind in shipped.KINDS:
        assert shipped.folder(kind) == REPO / kind  # edits to sim/quickstart.toml take effect at once


@pytest.mark.parametrize("kind,path", REPO_FILES, ids=lambda x: getattr(x, "name", x))
def test_every_shipped_file_by_name_and_repository_path(kind, path, elsewhere):
    assert path.suffix in shipped.SUFFIXES[kind], f"{kind}/{path.name}: not a shipped suffix; the wheel won't carry it"
    assert shipped.find(kind, path.stem) == path
    assert shipped.find(kind, path.name) == path
    assert shipped.find(kind, f"{kind}/{path.name}") == path
    assert path.stem in shipped.names(kind)


def test_an_existing_path_is_used_as_given(elsewhere):
    own = elsewhere / "quickstart.toml"  # shadows the shipped one: the user's file wins
    own.write_text('name = "mine"\n')
    assert shipped.find("sim", "quickstart.toml") == Path("quickstart.toml")
    assert load_scenario(shipped.scenario("quickstart.toml")).name == "mine"
    assert shipped.scenario("quickstart") == REPO / "sim" / "quickstart.toml"  # a bare name is the shipped one


def test_other_folders_are_not_guessed(elsewhere):
    assert shipped.find("sim", "other/quickstart.toml") is None
    assert shipped.find("sim", "/nowhere/quickstart.toml") is None
    assert shipped.find("sim", "node/quickstart.toml") is None
    assert shipped.find("node", "sim/cnn1d.toml") is None


def test_scenarios_by_name(elsewhere):
    assert shipped.scenario(None) == REPO / "sim" / "quickstart.toml"
    assert load_scenario(shipped.scenario("two-widths")).name == "two-widths"
    assert load_scenario(shipped.scenario("sim/low-bandwidth.toml")).name == "low-bandwidth"


def test_unknown_names_list_the_shipped_ones(elsewhere):
    with pytest.raises(ConfigError) as e:
        shipped.scenario("no-such")
    msg = str(e.value)
    assert "\n" not in msg and "no-such" in msg and all(n in msg for n in shipped.names("sim"))
    for spec in ("no-such", "node/no-such.toml"):
        with pytest.raises(ConfigError) as e:
            resolve_profile(spec)
        assert spec in str(e.value) and all(n in str(e.value) for n in shipped.names("node"))
    for spec in ("no-such", "topologies/no-such.toml"):
        with pytest.raises(TopologyError) as e:
            resolve_topology(spec, 8)
        assert spec in str(e.value) and all(n in str(e.value) for n in shipped.names("topologies"))


def test_profiles_and_topologies_from_any_folder(elsewhere):
    assert resolve_profile("cnn1d-wide").arch_options["embed_dim"] == 64
    assert resolve_profile("node/cnn1d.toml").name == "cnn1d"
    assert resolve_profile("gru").arch == "gru"
    assert resolve_topology("ring-8", 8).n == resolve_topology("topologies/ring-8.toml", None).n == 8
    assert resolve_topology("ring", 5).n == 5  # generator names stay generators
    with pytest.raises(TopologyError, match="--nodes 8"):  # the scenario's 16 nodes: the fix is named
        resolve_topology("ring-8", 16)
    assert not set(shipped.names("topologies")) & set(GENERATORS), "a shipped topology named like a generator"


def test_cli_from_any_folder(elsewhere, capsys):
    assert main(["topo", "ring-8", "--json"]) == 0
    assert '"nodes": 8' in capsys.readouterr().out
    assert main(["sim", "no-such"]) == 2
    assert "two-widths" in capsys.readouterr().err


# -- packaging: pyproject maps each folder onto p2pfl._shipped.<folder> and carries all its files ----------

def test_pyproject_lists_every_subpackage_and_maps_the_folders():
    st = PYPROJECT["tool"]["setuptools"]
    packages = set(st["packages"])
    subpackages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "p2pfl").rglob("__init__.py")}
    assert subpackages <= packages, f"add {sorted(subpackages - packages)} to [tool.setuptools] packages in pyproject.toml"
    for kind in shipped.KINDS:
        assert f"p2pfl._shipped.{kind}" in packages
        assert st["package-dir"][f"p2pfl._shipped.{kind}"] == kind


@pytest.mark.parametrize("kind,path", REPO_FILES, ids=lambda x: getattr(x, "name", x))
def test_package_data_covers_every_file(kind, path):
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"][f"p2pfl._shipped.{kind}"]
    assert any(fnmatch(path.name, p) for p in patterns), f"{kind}/{path.name}: add its pattern to package-data"


@pytest.mark.filterwarnings("ignore")
def test_setuptools_would_put_every_file_in_the_wheel(monkeypatch):
    """setuptools' own reading of pyproject.toml: the files build_py copies into p2pfl/_shipped/."""
    pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(REPO)
    dist = apply_configuration(Distribution(), "pyproject.toml")
    build_py = dist.get_command_obj("build_py")
    build_py.ensure_finalized()
    carried = {(pkg, name) for pkg, _, _, names in build_py.get_data_files_without_manifest() for name in names}
    assert carried == {(f"p2pfl._shipped.{kind}", p.name) for kind, p in REPO_FILES}
