"""scripts/launch_local.py and the run folders of p2pfl.launch: fresh by default, --resume on request (no process started)."""

import importlib.util
import json
from pathlib import Path

import pytest

from p2pfl.launch import choose_run_dir, earlier_runs, rounds_done

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def launch_local():
    spec = importlib.util.spec_from_file_location("launch_local", REPO / "scripts" / "launch_local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(run_dir: Path, node: str, rounds: int) -> None:
    (run_dir / node).mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"node": node, "round": r, "bytes_out": 0}) for r in range(1, rounds + 1)]
    (run_dir / node / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def test_a_rerun_gets_a_fresh_folder_and_resume_takes_the_latest(tmp_path):
    first, done = choose_run_dir(tmp_path, "launch-ring-8")
    assert (first, done) == (tmp_path / "launch-ring-8", None) and first.is_dir()
    _log(first, "n0", 5)
    second, done = choose_run_dir(tmp_path, "launch-ring-8")
    assert (second, done) == (tmp_path / "launch-ring-8-2", None) and second.is_dir()
    assert (first / "n0" / "metrics.jsonl").exists()  # the first run is untouched
    for n in range(3, 11):
        choose_run_dir(tmp_path, "launch-ring-8")
    (tmp_path / "launch-ring-8-x").mkdir()  # not a run of this name
    (tmp_path / "launch-ring-8-02").mkdir()
    (tmp_path / "launch-ring-80").mkdir()  # another topology's name
    assert [p.name for p in earlier_runs(tmp_path, "launch-ring-8")][-3:] == [
        "launch-ring-8-8", "launch-ring-8-9", "launch-ring-8-10"]  # by number, not by text
    _log(tmp_path / "launch-ring-8-10", "n0", 4)
    _log(tmp_path / "launch-ring-8-10", "n1", 3)
    assert choose_run_dir(tmp_path, "launch-ring-8", resume=True) == (tmp_path / "launch-ring-8-10", 3)


def test_resume_with_no_earlier_run_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^--resume: no earlier run .*launch-ring-8 to continue; leave out --resume"):
        choose_run_dir(tmp_path, "launch-ring-8", resume=True)
    assert not (tmp_path / "launch-ring-8").exists()


def test_rounds_done_reads_a_line_cut_by_a_kill(tmp_path):
    _log(tmp_path, "n0", 3)
    with open(tmp_path / "n0" / "metrics.jsonl", "a") as f:
        f.write('{"node": "n0", "round": 4, "byt')
    (tmp_path / "n1").mkdir()  # started, logged nothing yet
    assert rounds_done(tmp_path) == 0
    _log(tmp_path, "n1", 6)
    assert rounds_done(tmp_path) == 3


def test_launcher_says_fresh_then_resuming(launch_local, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["ring", "--nodes", "2", "--rounds", "4", "--run-dir", "runs/launch-ring-2", "--print"]
    assert launch_local.main(args) == 0
    assert capsys.readouterr().out.startswith("fresh run in runs/launch-ring-2\n")
    assert launch_local.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("fresh run in runs/launch-ring-2-2\n") and "--state-dir runs/launch-ring-2-2/n0" in out
    _log(tmp_path / "runs" / "launch-ring-2-2", "n0", 2)
    _log(tmp_path / "runs" / "launch-ring-2-2", "n1", 2)
    assert launch_local.main(args + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resuming runs/launch-ring-2-2 after round 2\n") and "--state-dir runs/launch-ring-2-2/n1" in out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["launch-ring-2", "launch-ring-2-2"]


@pytest.mark.parametrize("extra, words", [
    (["--set", "rounds"], ["--set 'rounds': expected KEY=VALUE", "--set train.lr=0.001"]),
    (["--set", "train.lrr=1"], ["train.lrr", "did you mean 'lr'"]),
    (["--resume"], ["--resume: no earlier run", "leave out --resume"]),
])
def test_launcher_bad_input_is_one_line_exit_2(launch_local, tmp_path, capsys, extra, words):
    args = ["ring", "--nodes", "2", "--run-dir", str(tmp_path / "runs" / "x"), "--print", *extra]
    assert launch_local.main(args) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.startswith("error: ") and captured.out == ""
    err = " ".join(captured.err.split())
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "runs").exists()  # nothing made for a run that did not start
