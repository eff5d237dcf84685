"""`slimlm experiment temperature --online-control`: one control arm at --temperature with the teacher run
online, beside swept arms that read the teacher cache; resumed like any arm, and reported apart from the
sweep (its own row, its own marker, never matched with the paper's point at its τ)."""

from __future__ import annotations

import json

import pytest

from slimlm.cli import main
from slimlm.errors import SlimlmError
from slimlm.experiments import plots
from slimlm.experiments.layout import load_run, result_file
from slimlm.experiments.sweeps import experiment
from test_experiments import TINY, _mtimes

ARGS = dict(values=[1.0, 2.0], online_control=True, **{**TINY, "seeds": [0]})


@pytest.fixture(scope="module")
def control_run(tiny_teacher, text_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("control") / "temperature"
    experiment("temperature", out=str(out), teacher=str(tiny_teacher), data=str(text_dir), **ARGS)
    return out


def _record(run_dir, arm):
    return json.loads((run_dir / "arms" / f"{arm}-seed0" / "slimlm.json").read_text())


def test_the_control_arm_runs_the_teacher_online_and_the_swept_arms_read_the_cache(control_run):
    spec = load_run(control_run)["spec"]
    assert [a["name"] for a in spec["arms"]] == ["t1", "t2", "t2-online"]
    control = spec["arms"][-1]
    assert control["settings"] == {"temperature": 2.0, "teacher_cache": False} and control["control"]
    assert not any("control" in a for a in spec["arms"][:-1])
    online, cached = _record(control_run, "t2-online"), _record(control_run, "t2")
    assert online["training"]["teacher_cache"] is False and online["settings"]["teacher_cache"] is False
    assert online["training"]["teacher_cache_storage"] is None
    for arm in ("t1", "t2"):
        record = _record(control_run, arm)
        assert record["training"]["teacher_cache"] is True and record["settings"]["cache_mode"] == "sample"
    # the same τ, start, blocks and budget as the cached τ=2 arm: only the teacher signal differs
    assert online["settings"]["temperature"] == cached["settings"]["temperature"] == 2.0
    assert online["training"]["tokens"] == cached["training"]["tokens"]
    assert {k: v for k, v in online["settings"].items() if k != "teacher_cache"} == {
        k: v for k, v in cached["settings"].items() if k != "teacher_cache"
    }


def test_a_rerun_skips_the_control_arm_and_an_interrupted_one_reruns_only_it(
    control_run, tiny_teacher, text_dir, tmp_path, capsys
):
    import shutil

    before = _mtimes(control_run)
    capsys.readouterr()
    experiment("temperature", out=str(control_run), teacher=str(tiny_teacher), data=str(text_dir), **ARGS)
    assert capsys.readouterr().err.count("finished earlier, skipped") == 3 and _mtimes(control_run) == before

    out = tmp_path / "copy"
    shutil.copytree(control_run, out)
    result_file(out, "t2-online", 0).unlink()
    shutil.rmtree(out / "arms" / "t2-online-seed0")
    experiment("temperature", out=str(out), teacher=str(tiny_teacher), data=str(text_dir), **ARGS)
    err = capsys.readouterr().err
    assert err.count("finished earlier, skipped") == 2 and "t2-online seed 0: training" in err
    assert err.count(": training") == 1 and result_file(out, "t2-online", 0).exists()


def test_the_report_names_the_control_and_keeps_it_off_the_paper_comparison(control_run):
    report = json.loads((control_run / "report.json").read_text())
    markdown = (control_run / "report.md").read_text()
    assert [a.get("control") for a in report["arms"]] == [None, None, "online teacher"]
    assert "| t2-online | τ=2, online teacher (control) | 1 |" in markdown  # its own row in the results
    assert "read by the arms t1, t2" in markdown and "the teacher run live every step): t2-online" in markdown
    rows = {r["arm"]: r for r in report["paper"]["rows"]}
    assert rows["t2"]["paper"]["temperature"] == 2.0  # the swept τ=2 arm is the one matched with Table 1
    assert rows["t2-online"]["paper"] is None and rows["t2-online"]["control"] == "online teacher"
    assert "τ=2 (online teacher, control: not matched with the paper)" in markdown
    sentences = report["paper"]["sentences"]
    assert not any("online" in s for s in sentences if not s.startswith("Control"))
    control = [s for s in sentences if s.startswith("Control")]
    assert len(control) == 1 and "online vs" in control[0] and "cached arm τ=2" in control[0]
    assert all((control_run / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report["plots"])
    # every arm compared seed by seed with the study's own τ, the control among them
    assert report["paired"]["against"] == "t2" and set(report["paired"]["arms"]) == {"t1", "t2-online"}
    first = report["paired"]["arms"]["t1"]["perplexity"]
    assert first["n"] == 1 and first["std"] is None and first["signs"] in ("+", "−")
    assert "t2-online" in (control_run / "report.html").read_text()


def test_the_temperature_plot_draws_the_control_as_its_own_marker(control_run, monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, folder, name: figures.append(fig) or name)
    report = json.loads((control_run / "report.json").read_text())
    plots.plot_temperature(report, load_run(control_run)["spec"], tmp_path)
    (fig,) = figures
    ax = fig.axes[0]  # accuracy against τ
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    swept = [line for line in lines if line.get_linestyle() == "-"]
    assert [list(line.get_xdata()) for line in swept] == [[1.0, 2.0]]  # the τ line joins the swept arms only
    marker = [line for line in lines if line.get_marker() == "D"]
    assert len(marker) == 1 and marker[0].get_linestyle() == "None"
    assert marker[0].get_xdata()[0] == pytest.approx(2.0, rel=0.1)  # at its τ, drawn just beside the swept point
    legends = [t.get_text() for a in fig.axes if a.get_legend() for t in a.get_legend().get_texts()]
    assert "online teacher (control)" in legends


def test_online_control_is_an_option_of_the_temperature_study_only(tiny_teacher, tmp_path, capsys):
    with pytest.raises(SlimlmError) as error:
        experiment("feature-layer", out=str(tmp_path / "x"), teacher=str(tiny_teacher), online_control=True)
    assert "--online-control" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SystemExit) as stop:  # not a flag of the other kinds at all
        main(["experiment", "finetune", "--online-control", "--teacher", str(tiny_teacher), "--out", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1] == "slimlm: error: unrecognized arguments: --online-control"
    assert not (tmp_path / "x").exists()  # refused before the folder is claimed


def test_cache_mode_online_runs_every_arm_with_the_teacher_live(tiny_teacher, text_dir, tmp_path):
    """The temperature study's high end, where the cache's noise would decide the result: no arm reads a cache."""
    args = dict(values=[2.0, 5.0], cache_mode="online", **{**TINY, "seeds": [0]})
    out = experiment("temperature", out=str(tmp_path / "t"), teacher=str(tiny_teacher), data=str(text_dir), **args)
    for arm in ("t2", "t5"):
        record = _record(out, arm)
        assert record["settings"]["teacher_cache"] is False and record["training"]["teacher_cache_storage"] is None
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"]["teacher_cache"]["mode"].startswith("none")
    assert "every arm runs the teacher online" in " ".join(report["protocol"]["notes"])
    assert report["paired"]["against"] == "t2" and list(report["paired"]["arms"]) == ["t5"]
    with pytest.raises(SlimlmError, match="already runs the teacher online"):
        experiment("temperature", out=str(tmp_path / "u"), teacher=str(tiny_teacher), online_control=True, **args)
    assert not (tmp_path / "u").exists()
