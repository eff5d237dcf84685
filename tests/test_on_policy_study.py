"""bench/on_policy_study.py's own logic: equal wall time from the measured step cost, and a table that pairs every
arm with the off-policy arm of the same seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("bench_on_policy_study", ROOT / "bench" / "on_policy_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_equal_minutes_give_costlier_steps_fewer_of_them():
    study = _module()
    cost = study.read_step_cost(str(ROOT / "docs" / "results" / "on-policy" / "step-cost.json"))
    off, half, full = (study.steps_for(a, 14, cost) for a in ("off-policy", "on-policy 0.5", "on-policy 1"))
    assert off == int(14 * 60 / cost["off-policy"]) and off > half > full >= 1
    assert study.steps_for("sequence-level", 14, cost) == off


def test_step_cost_file_is_checked(tmp_path):
    study = _module()
    with pytest.raises(SystemExit, match="run bench/on_policy_bench.py first"):
        study.read_step_cost(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    for text in ("{not json", "[1]", '{"arms": {"off-policy": {}}}'):
        bad.write_text(text)
        with pytest.raises(SystemExit, match="--step-cost"):
            study.read_step_cost(str(bad))
    with pytest.raises(SystemExit, match="no 'lambda 1' arm"):
        study.steps_for("on-policy 1", 14, {"off-policy": 5.0})


def test_table_pairs_each_arm_with_the_off_policy_arm_of_its_seed():
    study = _module()

    def arm(name, seed, ppl, nll):
        row = {k: 1.0 for k in study.METRICS}
        return {**row, "arm": name, "seed": seed, "steps": 10, "test_perplexity": ppl, "teacher_nll_sampled": nll}

    results = {
        "arms": {
            "off-policy-seed0": arm("off-policy", 0, 70.0, 4.0),
            "off-policy-seed1": arm("off-policy", 1, 72.0, 4.2),
            "on-policy 1-seed0": arm("on-policy 1", 0, 71.0, 3.5),
            "on-policy 1-seed1": arm("on-policy 1", 1, 74.0, 3.9),
        }
    }
    text = study.table(results)
    assert "| off-policy | 2 | 10 | 71.000 ± 1.414 |" in text
    assert "- on-policy 1, test_perplexity: mean +1.500 (+1.000, +2.000)" in text
    assert "- on-policy 1, teacher_nll_sampled: mean -0.400 (-0.500, -0.300)" in text
    json.dumps(results)  # what results.json holds stays plain JSON
