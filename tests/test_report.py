"""`p2pfl report`: a tiny run's figures and page exist, are images, and a folder with no run is one line."""

import numpy as np
import pytest

from p2pfl import cli
from p2pfl.config import load_scenario
from p2pfl.sim import Simulation
from tests.test_sim import TINY

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    clean = Simulation(load_scenario(None, TINY | {"name": "clean"}), run_dir=root).run()
    lied = Simulation(load_scenario(None, TINY | {"name": "lied", "attack": [{"kind": "invert", "nodes": [1]}]}),
                      run_dir=root).run()
    return clean.run_dir, lied.run_dir


@pytest.fixture(scope="module")
def alone(cache, tmp_path_factory):
    return Simulation(load_scenario(None, TINY | {"name": "alone", "mode": "local"}),
                      run_dir=tmp_path_factory.mktemp("alone")).run().run_dir


def test_a_run_gets_its_figures_and_one_self_contained_page(two_runs, capsys):
    clean, _ = two_runs
    assert cli.main(["report", str(clean)]) == 0
    folder = clean / "report"
    for name in ("accuracy", "nodes", "bytes", "graph"):
        data = (folder / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000, name
    page = (folder / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "global accuracy" in page and "clean" in page
    assert "src=\"accuracy.png\"" not in page  # the page embeds its pictures: it travels alone


def test_two_runs_side_by_side(two_runs, tmp_path):
    clean, lied = two_runs
    assert cli.main(["report", str(clean), str(lied), "--compare", "--out", str(tmp_path / "cmp")]) == 0
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert "clean vs lied" in page and "honest nodes" in page
    assert (tmp_path / "cmp" / "nodes.png").read_bytes().startswith(PNG)
    graphs = [(tmp_path / "cmp" / f"graph-{name}.png").read_bytes() for name in ("clean", "lied")]
    assert all(g.startswith(PNG) for g in graphs) and graphs[0] != graphs[1]  # each run's own graph


def test_a_run_with_attackers_marks_them_on_the_page_and_the_per_node_figure(two_runs, tmp_path):
    from p2pfl import report

    _, lied = two_runs
    assert cli.main(["report", str(lied), "--out", str(tmp_path / "lied")]) == 0
    assert "n1 (invert)" in (tmp_path / "lied" / "index.html").read_text()
    fig = report.fig_nodes([report.load_run(lied)])
    ticks = [t.get_text().split()[0] for t in fig.axes[1].get_xticklabels()]
    assert "n1!" in ticks and sum(t.endswith("!") for t in ticks) == 1
    assert "(! = attacker)" in fig._suptitle.get_text()
    # compared after a clean run, the liar of the second run is still marked
    clean, _ = two_runs
    both = report.fig_nodes([report.load_run(clean), report.load_run(lied)])
    assert "n1!" in [t.get_text().split()[0] for t in both.axes[1].get_xticklabels()]
    assert "(! = attacker in a run)" in both._suptitle.get_text()


def test_the_refusals_on_the_page_are_the_honest_nodes_where_some_lied(two_runs):
    from p2pfl import report

    clean, lied = two_runs
    run = report.load_run(lied)
    assert "rejected" in run.summary["honest"]  # the simulation counts the honest nodes' refusals apart
    # a liar's own refusals of honest knowledge say nothing of the defence: only the honest nodes' are shown
    run.summary |= {"rejected": {"distrusted": 7, "stale": 2},
                    "honest": run.summary["honest"] | {"rejected": {"distrusted": 5}}}
    rows = dict(report._summary_rows(run))
    assert rows["rejected by honest nodes"] == "distrusted 5" and "rejected by all nodes" not in rows
    plain = report.load_run(clean)
    plain.summary |= {"rejected": {"stale": 3}}
    assert dict(report._summary_rows(plain))["rejected by all nodes"] == "stale 3"


def test_against_a_local_run_the_page_says_who_is_worse_off_than_alone(two_runs, alone, tmp_path):
    clean, _ = two_runs
    assert cli.main(["report", str(clean), str(alone), "--compare", "--out", str(tmp_path / "cmp")]) == 0
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert "negative transfer (vs alone)" in page and "nodes below their own accuracy alone" in page
    # a local run of other nodes: the page is still written, and says why the rate is missing
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("".join(line.replace('"node": "n', '"node": "m') + "\n" for line in
                                                 (alone / "metrics.jsonl").read_text().splitlines()))
    (other / "summary.json").write_text((alone / "summary.json").read_text())
    assert cli.main(["report", str(clean), str(other), "--compare", "--out", str(tmp_path / "cmp2")]) == 0
    assert "not computed: the two runs share no node id" in (tmp_path / "cmp2" / "index.html").read_text()


def test_negative_transfer_counts_nodes_below_their_own_accuracy_alone():
    from p2pfl.metrics import negative_transfer

    alone = {n: {"personal_acc": a} for n, a in (("a", 0.8), ("b", 0.6), ("c", 0.9), ("d", 0.5))}
    ours = {n: {"personal_acc": a} for n, a in (("a", 0.85), ("b", 0.5), ("c", 0.898), ("e", 0.1))}
    nt = negative_transfer(ours, alone)  # c is within the tolerance; d and e are in one run only
    assert nt == {"rate": 1 / 3, "worst_loss": pytest.approx(0.1), "nodes": 3, "below": ["b"]}
    assert negative_transfer(alone, alone)["rate"] == 0.0 and negative_transfer(alone, alone)["worst_loss"] == 0.0
    with pytest.raises(ValueError, match="share no node id"):
        negative_transfer({"x": {"personal_acc": 1.0}}, alone)


def test_negative_transfer_beyond_noise_takes_its_tolerance_from_two_local_runs():
    from p2pfl.metrics import NEGATIVE_TRANSFER_TOLERANCE, negative_transfer, noise_tolerance

    alone = {n: {"personal_acc": a} for n, a in (("a", 0.8), ("b", 0.6), ("c", 0.9), ("d", 0.5))}
    again = {n: {"personal_acc": a} for n, a in (("a", 0.78), ("b", 0.62), ("c", 0.88), ("d", 0.52))}
    tol = noise_tolerance(alone, again)
    assert tol == pytest.approx(2 * np.std([-0.02, 0.02, -0.02, 0.02], ddof=1))  # ~0.046
    ours = {n: {"personal_acc": a} for n, a in (("a", 0.77), ("b", 0.5), ("c", 0.9), ("d", 0.5))}
    assert negative_transfer(ours, alone)["below"] == ["a", "b"]  # 0.03 and 0.1 below
    assert negative_transfer(ours, alone, tolerance=tol)["below"] == ["b"]  # a's 0.03 is within the noise
    assert noise_tolerance(alone, alone) == NEGATIVE_TRANSFER_TOLERANCE  # identical runs: the plain floor
    with pytest.raises(ValueError, match="fewer than two node ids"):
        noise_tolerance(alone, {"a": {"personal_acc": 0.8}})


def test_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no metrics.jsonl here or in its sub-folders" in capsys.readouterr().err


def test_a_folder_of_runs_is_refused_not_read_as_one_launch(two_runs, capsys):
    """runs/ beside a launch folder: its sub-folders are simulation runs (each with a summary), not nodes."""
    root = two_runs[0].parent
    assert cli.main(["report", str(root)]) == 2
    message = capsys.readouterr().err
    assert "holds 2 run(s) (clean, lied)" in message and "--compare" in message
