"""The CLI end to end on tiny models, and one run with the real built-in teacher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM

import slimlm
from slimlm.cli import main


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "slimlm", "distill", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--temperature" in done.stdout and "--feature-layers" in done.stdout


def test_student_by_measured_importance_then_eval(tiny_teacher, text_dir, capsys):
    assert (
        main(
            [
                "student",
                "--teacher",
                str(tiny_teacher),
                "--data",
                str(text_dir),
                "--layers",
                "2",
                "--block-size",
                "32",
                "--out",
                "s2",
            ]
        )
        == 0
    )
    record = json.loads(Path("s2/slimlm.json").read_text())
    candidates = record["student"]["layer_selection"]["candidates"]
    assert len(candidates) == 3 and candidates[0]["perplexity"] <= candidates[-1]["perplexity"]
    assert record["metrics"]["perplexity"] > 1 and record["data"]["test"]["tokens"] > 0
    assert AutoModelForCausalLM.from_pretrained("s2").config.num_hidden_layers == 2
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(tiny_teacher),
                "s2",
                "--data",
                str(text_dir),
                "--window",
                "32",
                "--new-tokens",
                "4",
                "--repeats",
                "1",
                "--out",
                "eval.json",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "perplexity" in table and "s2" in table and "window 32" in table
    report = json.loads(Path("eval.json").read_text())
    assert set(report["results"]) == {str(tiny_teacher), "s2"}
    assert report["results"]["s2"]["parameters"] < report["results"][str(tiny_teacher)]["parameters"]
    assert report["data"]["test"]["tokens"] == report["results"]["s2"]["tokens_scored"] + len(
        range(0, report["data"]["test"]["tokens"], 32)
    )


def test_recipe_file_and_flag_override(tiny_teacher, text_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"teacher: {tiny_teacher}\ndata: {text_dir}\nkeep-layers: '0,3'\ntemperature: 5\n"
        "block_size: 32\nmax_steps: 2\nbf16: false\n"
    )
    assert main(["distill", "--recipe", str(recipe), "--temperature", "1.5", "--out", "r"]) == 0
    settings = json.loads(Path("r/slimlm.json").read_text())["settings"]
    assert settings["temperature"] == 1.5 and settings["keep_layers"] == "0,3" and settings["max_steps"] == 2


def test_recipe_with_unknown_key(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("temprature: 2\n")
    assert main(["distill", "--recipe", str(recipe), "--out", "r"]) == 2
    assert "temprature" in capsys.readouterr().err


def test_real_teacher_distils_a_few_steps(text_dir):
    """The built-in SmolLM2-135M (fetched by `make test`), cut to 8 layers and distilled for a few steps."""
    out = slimlm.distill(
        teacher="smollm2-135m",
        keep_layers="0-3,26-29",
        data=str(text_dir),
        out="real",
        max_steps=4,
        batch_size=2,
        block_size=64,
        eval_tokens=1024,
        eval_window=64,
        calibration_blocks=2,
        logging_steps=1,
        feature_layers="30:8",
        feature_weight=0.1,
    )
    record = json.loads((out / "slimlm.json").read_text())
    metrics = record["metrics"]
    assert metrics["validation_after"]["perplexity"] < metrics["validation_before"]["perplexity"]
    assert all("kd" in step and "feature" in step for step in record["training"]["log"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 8 and model.config.vocab_size == 49152
