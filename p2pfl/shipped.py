"""Where the shipped scenarios (sim/), node profiles (node/) and topologies (topologies/) are found, checkout or wheel.

The files live at the repository's top level. pyproject.toml maps each folder onto a data package,
p2pfl._shipped.<folder>, so a wheel carries them inside p2pfl/_shipped/. In a checkout (or an editable
install of one) the repository's folders win, so an edit to sim/quickstart.toml takes effect at once.

    find("sim", "two-widths")               # a shipped file by bare name ...
    find("sim", "sim/two-widths.toml")      # ... or by repository path, from any folder
    scenario(None)                          # the default scenario, sim/quickstart.toml
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path, PurePath

KINDS = {"sim": "scenarios", "node": "node profiles", "topologies": "topologies"}  # folder: what it holds
SUFFIXES = {"sim": (".toml",), "node": (".toml",), "topologies": (".toml", ".graphml", ".edges", ".txt")}
DEFAULT_SCENARIO = "quickstart"

_ROOT = Path(__file__).resolve().parent.parent  # the repository, when running from a checkout


def folder(kind: str) -> Path:
    """The checkout's top-level folder when this is a checkout (its files win), else the installed copy."""
    if kind not in KINDS:
        raise KeyError(f"{kind!r}: shipped folders are {', '.join(KINDS)}")
    if (_ROOT / "pyproject.toml").is_file() and (_ROOT / kind).is_dir():
        return _ROOT / kind
    return Path(str(resources.files("p2pfl").joinpath("_shipped", kind)))  # site-packages: a real folder


def files(kind: str) -> list[Path]:
    d = folder(kind)
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix in SUFFIXES[kind]) if d.is_dir() else []


def names(kind: str) -> list[str]:
    return [p.stem for p in files(kind)]


def listing(kind: str) -> str:
    """One line naming the shipped files of a kind, for error messages."""
    return f"shipped {KINDS[kind]}: {', '.join(names(kind)) or f'none (no {kind}/ found; reinstall p2pfl)'}"


def find(kind: str, spec: str | Path) -> Path | None:
    """An existing file as given; else a shipped one named `name`, `name.toml` or `<kind>/name.toml`; else None."""
    path = Path(spec)
    if path.is_file():
        return path
    pure = PurePath(spec)
    if pure.is_absolute() or pure.parts[:-1] not in ((), (kind,)) or not pure.name:
        return None  # another folder: not ours to guess
    candidates = [pure.name] if pure.suffix in SUFFIXES[kind] else [pure.name + s for s in SUFFIXES[kind]]
    for name in candidates:
        if (folder(kind) / name).is_file():
            return folder(kind) / name
    return None


def scenario(spec: str | Path | None) -> Path:
    """The scenario file for `p2pfl sim [SPEC]`: a path, a shipped scenario's name or repository path; None: the default."""
    from p2pfl.config import ConfigError  # config pulls in the codecs; topology imports this module too

    found = find("sim", spec if spec is not None else DEFAULT_SCENARIO)
    if found is None and spec is not None and Path(spec).is_dir():
        raise ConfigError(f"{spec} is a folder; pass a scenario TOML file in it, or a name ({listing('sim')})")
    if found is None:
        what = f"scenario {spec}" if spec is not None else f"default scenario {DEFAULT_SCENARIO}.toml"
        raise ConfigError(f"{what} not found; pass a path to a scenario TOML, or a name ({listing('sim')})")
    return found
