"""bench/learning_curve.py's own logic: the plan it reads, the curve it fits, results that two runs can share,
and the published table, which must be what its results file says."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "docs" / "results" / "learning-curve"


def _module():
    spec = importlib.util.spec_from_file_location("bench_learning_curve", ROOT / "bench" / "learning_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_reads_budgets_seeds_and_levers():
    lc = _module()
    assert lc.parse_plan("25000:0, 100000:1:heal=32768") == [(25000, 0, 0), (100000, 1, 32768)]
    for bad in ("25000", "x:0", "100:0", "25000:0:heal=abc", "25000:0:merge=1", "25000:-1"):
        with pytest.raises(SystemExit, match="--plan"):
            lc.parse_plan(bad)
    assert lc.arm_name(100000, 1, 0) == "100000-seed1" and lc.arm_name(100000, 1, 32768) == "100000-seed1-heal32768"


def test_step_times_file_is_checked(tmp_path):
    lc = _module()
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"cpu": "x", "distill_s_per_step": 5.0, "heal_s_per_step": 1.0}))
    assert lc.read_step_times(str(good))["distill_s_per_step"] == 5.0
    bad = tmp_path / "bad.json"
    for text in ("{not json", "[1]", '{"cpu": "x"}'):
        bad.write_text(text)
        with pytest.raises(SystemExit, match="--step-times"):
            lc.read_step_times(str(bad))
    with pytest.raises(SystemExit, match="run it first"):
        lc.read_step_times(str(tmp_path / "missing.json"))


def test_fit_recovers_a_power_law_and_inverts_it():
    lc = _module()
    a, b = 300.0, 0.45
    points = [(t, 1 + a * t**-b) for t in (25_000, 50_000, 100_000, 200_000)]
    fa, fb = lc.fit(points)
    assert math.isclose(fa, a, rel_tol=1e-6) and math.isclose(fb, b, rel_tol=1e-6)
    need = lc.tokens_for(2.0, (fa, fb))
    assert math.isclose(1 + a * need**-b, 2.0, rel_tol=1e-9)
    assert lc.fit([(25_000, 3.0)]) is None  # one budget is not a curve


def test_results_written_by_two_runs_keep_each_others_arms(tmp_path):
    lc = _module()
    path = tmp_path / "results.json"
    first = {"teacher": {"test_perplexity": 28.0}, "arms": {"25000-seed0": {"budget": 25000}}}
    lc.save(path, first)
    second = {"arms": {"50000-seed1": {"budget": 50000}}}  # a second run that started before the first wrote
    held = second["arms"]  # run_plan keeps adding arms to the dict it holds
    lc.save(path, second)
    held["100000-seed1"] = {"budget": 100000}
    lc.save(path, second)
    on_disk = json.loads(path.read_text())
    assert set(on_disk["arms"]) == {"25000-seed0", "50000-seed1", "100000-seed1"}
    assert on_disk["teacher"]["test_perplexity"] == 28.0
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(not PUBLISHED.is_dir(), reason="no published learning curve yet")
def test_published_table_is_what_its_results_file_says():
    lc = _module()
    results = json.loads((PUBLISHED / "results.json").read_text())
    assert (PUBLISHED / "table.md").read_text() == lc.table(results)
    readme = (PUBLISHED / "README.md").read_text()
    table = (PUBLISHED / "table.md").read_text()
    for quoted in re.findall(r"\*\*(\d+\.\d{3})×?\*\*", readme):  # bold ratios quote the table
        assert quoted in table, quoted


@pytest.mark.skipif(not PUBLISHED.is_dir(), reason="no published learning curve yet")
def test_readme_quotes_the_published_fit():
    """The README's sentence on the curve quotes the fit in table.md: tokens and minutes for each target."""
    table = (PUBLISHED / "table.md").read_text()
    in_domain = table.split("Fit of the plain runs, in domain:")[1].split("\n\n")[0]
    exponent = re.search(r"tokens\^-(\d\.\d+)", in_domain).group(1)
    targets = re.findall(r"- (\d\.\d)x the teacher: ([\d,]+) tokens, (\d+) min \(([a-z ]+)\)", in_domain)
    assert len(targets) == 3
    readme = " ".join((ROOT / "README.md").read_text().split())
    paragraph = readme[readme.index("**How many more: the learning curve**") :][:900]
    assert f"tokens^−{exponent}" in paragraph
    for target, tokens, minutes, status in targets:
        assert f"{target}× " in paragraph and f"{tokens} " in paragraph and f"({minutes} " in paragraph, target
        assert status.split()[0] in paragraph  # "within the measured range" or "extrapolated", as the table says
