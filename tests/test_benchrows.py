"""scripts/benchrows: when a benchmark may reuse a run folder instead of running it again (same_scenario), and
which code a result came from (commit)."""

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from benchrows import commit, same_scenario, table_defaults  # noqa: E402


def test_a_key_added_since_the_run_is_the_same_only_at_its_default():
    defaults = {"train": {"lr": 0.01, "idle_steps": 0}, "rounds": 50}
    wanted = {"train": {"lr": 0.01, "idle_steps": 0}, "rounds": 20}
    assert same_scenario({"train": {"lr": 0.01}, "rounds": 20}, wanted, defaults)  # idle_steps came later
    assert not same_scenario({"train": {"lr": 0.01}, "rounds": 20},
                             {"train": {"lr": 0.01, "idle_steps": 30}, "rounds": 20}, defaults)  # asked for more
    assert not same_scenario({"train": {"lr": 0.02, "idle_steps": 0}, "rounds": 20}, wanted, defaults)
    assert not same_scenario({"train": {"lr": 0.01, "gone": 1}, "rounds": 20}, wanted, defaults)  # a key removed


def test_tables_of_a_list_are_compared_one_by_one_against_a_tables_defaults():
    defaults = table_defaults()
    attack = dict(defaults["attack"][0], kind="shift", count=3)
    old = {k: v for k, v in attack.items() if k != "place"}  # a run from before attack.place existed
    assert same_scenario({"attack": [old]}, {"attack": [attack]}, defaults)
    assert not same_scenario({"attack": [old]}, {"attack": [attack | {"place": "bottleneck"}]}, defaults)
    assert not same_scenario({"attack": [old]}, {"attack": [attack, attack]}, defaults)  # another number of tables
    assert not same_scenario({"attack": [old | {"count": 2}]}, {"attack": [attack]}, defaults)
    assert same_scenario({"profiles": ["mlp", "gru"]}, {"profiles": ["mlp", "gru"]}, {"profiles": ["mlp"]})
    assert not same_scenario({"profiles": ["mlp"]}, {"profiles": ["gru"]}, {"profiles": ["mlp"]})


def test_a_result_names_the_commit_it_came_from():
    import re

    if (REPO / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?", commit())
    else:  # an unpacked copy, or no git to ask: nothing to name, and no error
        assert commit() == ""


def test_a_reused_robustness_row_keeps_the_commit_it_ran_at(tmp_path):
    import json

    from bench_robustness import reusable

    def saved(name, command, commit, rows):
        path = tmp_path / name
        path.write_text(json.dumps({"label": "quickstart", "rounds": 30, "command": command, "commit": commit,
                                    "rows": rows}))
        return str(path)

    row = {"attack": "shift", "share": 0.2, "defence": "auto", "seed": 0}
    fresh = saved("a.json", "python scripts/bench_robustness.py --out a.json", "aaa1111", [row])
    reusing = saved("b.json", "python scripts/bench_robustness.py --reuse a.json --out b.json", "bbb2222",
                    [row | {"defence": "none"}, row | {"defence": "clip", "commit": "ccc3333"}])
    this = {"label": "quickstart", "rounds": 30}
    assert [r["commit"] for r in reusable([fresh], this).values()] == ["aaa1111"]
    # b.json's own commit is not its reused rows' one: unknown unless the row says
    assert [r["commit"] for r in reusable([reusing], this).values()] == [None, "ccc3333"]
