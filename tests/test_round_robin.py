"""Round-robin decode speeds (bench/decode_speed.py's JSON beside a report) reach the report's table and replace
the single-pass speeds in the student-shape frontier's speed panel, never mixed with them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slimlm.errors import SlimlmError
from slimlm.experiments.render import render_markdown
from slimlm.experiments.rerender import rerender
from slimlm.experiments.round_robin import read_round_robin, with_round_robin_speeds
from test_plot_layout import drawn, outside, overlaps, student_shape

SHAPE = Path(__file__).resolve().parents[1] / "docs" / "results" / "student-shape"


def test_committed_round_robin_file_is_read():
    speeds = read_round_robin(SHAPE)
    raw = json.loads((SHAPE / "decode-speed.json").read_text())
    assert speeds["models"]["depth"]["decode_ratio"] == raw["models"]["depth"]["decode_ratio"]
    assert speeds["baseline"] == "teacher" and speeds["rounds"] == raw["rounds"]
    assert read_round_robin(SHAPE / "plots") is None  # no file: no round-robin block


@pytest.mark.parametrize("text", ["{broken", '{"models": {"a": {"decode_tokens_per_s": 1}}}', "[]"])
def test_a_file_that_is_not_decode_speeds_is_one_line_naming_the_fix(tmp_path, text):
    (tmp_path / "decode-speed.json").write_text(text)
    with pytest.raises(SlimlmError, match="bench/decode_speed.py"):
        read_round_robin(tmp_path)


def _with_speeds(report: dict) -> dict:
    model = {"decode_tokens_per_s": 48.2, "decode_min": 45.9, "decode_max": 50.1, "decode_ratio": 1.94}
    teacher = {"decode_tokens_per_s": 24.7, "decode_min": 23.2, "decode_max": 26.4, "decode_ratio": 1.0}
    models = {"teacher": teacher, "depth": model, "width": {**model, "decode_tokens_per_s": 35.0}}
    return {**report, "round_robin": {"cpu": "a CPU", "rounds": 7, "baseline": "teacher", "models": models}}


def test_speeds_are_swapped_and_unmeasured_models_leave_the_panel():
    report = _with_speeds(student_shape()[0])
    shown = with_round_robin_speeds(report)
    arms = {a["name"]: a["metrics"] for a in shown["arms"]}
    assert arms["depth"]["decode_tokens_per_s"]["mean"] == 48.2 and arms["width"]["decode_tokens_per_s"]["n"] == 1
    assert "decode_tokens_per_s" not in arms["both"]  # not measured round-robin: not drawn from a single pass
    assert shown["references"]["teacher"]["metrics"]["decode_tokens_per_s"] == 24.7
    assert "decode_tokens_per_s" not in shown["references"]["teacher-int8"]["metrics"]
    assert report["arms"][0]["metrics"]["decode_tokens_per_s"]["mean"] != 48.2  # the report itself is unchanged


def test_frontier_speed_panel_says_round_robin_and_stays_readable(tmp_path, monkeypatch):
    report, spec = student_shape()
    (plain,) = drawn(report, spec, tmp_path / "a", monkeypatch)
    (fig,) = drawn(_with_speeds(report), spec, tmp_path / "b", monkeypatch)
    assert "single pass" in plain.axes[2].get_title() and "round-robin" in fig.axes[2].get_title()
    assert not overlaps(fig) and not outside(fig)


def test_report_tables_the_round_robin_speeds(tmp_path):
    folder = tmp_path / "shape"
    folder.mkdir()
    for name in ("report.json", "decode-speed.json"):
        shutil.copy(SHAPE / name, folder / name)
    report = rerender(folder)
    text = render_markdown(report)
    depth = report["round_robin"]["models"]["depth"]
    assert "### Decode speed, round-robin" in text
    assert f"| depth | {depth['decode_tokens_per_s']:.1f} |" in text and f"| {depth['decode_ratio']:.2f} |" in text


@pytest.mark.parametrize("text", ["{not json", '{"arms": []}'])
def test_rerender_of_a_damaged_report_is_one_line(tmp_path, capsys, text):
    from slimlm.experiments.rerender import main

    (tmp_path / "report.json").write_text(text)
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "report.json" in err and "Traceback" not in err and len(err.splitlines()) == 1
