"""The paper's studies and the pipeline end to end on a tiny model: every arm and seed runs, a rerun
skips what is finished, an interrupted run finishes only what is missing, and the report's numbers
are the runs' numbers."""

from __future__ import annotations

import json

import pytest

from slimlm.cli import main
from slimlm.errors import SlimlmError
from slimlm.experiments.layout import load_run, reference_file, result_file
from slimlm.experiments.pipeline import pipeline
from slimlm.experiments.sweeps import experiment

TINY = dict(
    student_layers=2,
    max_tokens=256,
    block_size=32,
    batch_size=4,
    learning_rate=3e-3,
    top_k=16,
    seeds=[0, 1],
    evaluation={
        "window": 32,
        "stride": 32,
        "tokens": 512,
        "repeats": 1,
        "decode_new_tokens": 4,
        "tasks": ["cloze"],
        "task_items": 6,
    },
    settings={"bf16": False, "eval_tokens": 256, "eval_window": 32, "calibration_blocks": 2, "logging_steps": 1},
    baselines="none",  # the quantized baselines are built and checked once, in test_student_shape.py and the pipeline
)


def _mtimes(run_dir):
    return {p: p.stat().st_mtime_ns for p in (run_dir / "results").rglob("*.json")}


@pytest.fixture(scope="module")
def temperature_run(tiny_teacher, text_dir, tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("sweep") / "temperature"
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        experiment(
            "temperature", out=str(out), values=[0.5, 2.0], teacher=str(tiny_teacher), data=str(text_dir), **TINY
        )
    (out.parent / "first-run.log").write_text(log.getvalue())
    return out


def test_sweep_runs_every_arm_and_seed_and_writes_the_report(temperature_run):
    run = load_run(temperature_run)
    assert [a["name"] for a in run["spec"]["arms"]] == ["t0.5", "t2"]
    for arm in ("t0.5", "t2"):
        assert [r["seed"] for r in run["results"][arm]] == [0, 1]
        for r in run["results"][arm]:
            for key in (
                "perplexity",
                "accuracy",
                "decode_tokens_per_s",
                "size_on_disk_mb",
                "inference_memory_mib",
                "cloze_exact_match",
                "general_perplexity",
                "general_accuracy",
            ):
                assert r["metrics"][key] is not None, key
            assert r["metrics"]["general_data"] == "wikipedia"
            record = json.loads((temperature_run / "arms" / f"{arm}-seed{r['seed']}" / "slimlm.json").read_text())
            assert record["settings"]["temperature"] == r["value"] and record["settings"]["seed"] == r["seed"]
            assert record["training"]["teacher_cache"]
    assert set(run["references"]) == {"teacher", "student-init"}
    report = (temperature_run / "report.md").read_text()
    assert "t0.5" in report or "τ=0.5" in report
    assert "### Kept of the teacher" in report and "general ppl ÷ teacher" in report
    ratios = json.loads((temperature_run / "report.json").read_text())["teacher_ratios"]
    teacher = run["references"]["teacher"]["metrics"]["general_perplexity"]
    mean = sum(r["metrics"]["general_perplexity"] for r in run["results"]["t2"]) / 2
    assert ratios["t2"]["general_perplexity"] == pytest.approx(mean / teacher)
    plots = json.loads((temperature_run / "report.json").read_text())["plots"]
    assert plots and all((temperature_run / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert (temperature_run / "report.html").read_text().count("<img") >= len(plots)


def test_arms_of_a_seed_share_blocks_and_each_temperature_has_its_own_draws(temperature_run):
    """Same seed -> the same blocks; the sampled teacher cache is drawn at each arm's temperature, so arms at
    different temperatures read different entries (an entry drawn at one tau is not an unbiased sample at
    another), each within the 64-byte budget."""

    def record(arm, seed):
        return json.loads((temperature_run / "arms" / f"{arm}-seed{seed}" / "slimlm.json").read_text())

    a, b, c = record("t0.5", 0), record("t2", 0), record("t0.5", 1)
    storage = [r["training"]["teacher_cache_storage"] for r in (a, b)]
    assert [s["temperature"] for s in storage] == [0.5, 2.0] and storage[0]["entry"] != storage[1]["entry"]
    assert all(s["mode"] == "sample" and s["bytes_per_position"] <= 64 for s in storage)
    assert a["training"]["tokens"] == b["training"]["tokens"] == c["training"]["tokens"]
    # identical starting point and data for one seed: only the temperature differs between the arms
    assert {k: v for k, v in a["settings"].items() if k != "temperature"} == {
        k: v for k, v in b["settings"].items() if k != "temperature"
    }


def test_report_numbers_equal_the_results_json(temperature_run):
    import statistics

    report = json.loads((temperature_run / "report.json").read_text())
    markdown = (temperature_run / "report.md").read_text()
    run = load_run(temperature_run)
    for arm in report["arms"]:
        results = run["results"][arm["name"]]
        for key in ("perplexity", "accuracy", "decode_tokens_per_s", "cloze_exact_match"):
            values = [r["metrics"][key] for r in results]
            summary = arm["metrics"][key]
            assert summary["values"] == values and summary["n"] == 2
            assert summary["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            assert summary["std"] == pytest.approx(statistics.stdev(values), rel=1e-9)
        ppl = arm["metrics"]["perplexity"]
        assert f"{ppl['mean']:.2f}" in markdown  # the table shows the same numbers


def test_rerun_skips_finished_arms(temperature_run, tiny_teacher, text_dir, capsys):
    before = _mtimes(temperature_run)
    experiment(
        "temperature",
        out=str(temperature_run),
        values=[0.5, 2.0],
        teacher=str(tiny_teacher),
        data=str(text_dir),
        **TINY,
    )
    assert _mtimes(temperature_run) == before
    err = capsys.readouterr().err
    assert err.count("finished earlier, skipped") == 4 and "training" not in err.replace("training tokens", "")


def test_interrupted_experiment_runs_only_missing_arms(temperature_run, tiny_teacher, text_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(temperature_run, out)
    missing = result_file(out, "t2", 1)
    missing.unlink()
    shutil.rmtree(out / "arms" / "t2-seed1")
    before = {p: t for p, t in _mtimes(out).items()}
    capsys.readouterr()
    experiment("temperature", out=str(out), values=[0.5, 2.0], teacher=str(tiny_teacher), data=str(text_dir), **TINY)
    err = capsys.readouterr().err
    assert err.count("finished earlier, skipped") == 3 and err.count(": training") == 1
    assert missing.exists() and all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_a_run_begun_before_general_text_continues_and_measures_it_once(
    temperature_run, tiny_teacher, text_dir, tmp_path, capsys
):
    """A run folder written before slimlm scored general text is continued, not refused: the finished
    models are scored on it once and nothing else is measured again."""
    import shutil

    out = tmp_path / "old"
    shutil.copytree(temperature_run, out)
    spec_path = out / "experiment.json"
    spec = json.loads(spec_path.read_text())
    for key in ("general_data", "general_tokens"):
        del spec["protocol"]["eval"][key]
    spec_path.write_text(json.dumps(spec))
    old, teacher = result_file(out, "t2", 0), reference_file(out, "teacher")
    kept = {}
    for path in (old, teacher):
        record = json.loads(path.read_text())
        kept[path] = record["metrics"].pop("general_perplexity")
        record["metrics"] = {k: v for k, v in record["metrics"].items() if not k.startswith("general_")}
        record["model_dir"] = "/moved/elsewhere"  # an arm is read from this run folder, not the recorded path
        path.write_text(json.dumps(record))
    others = {p: t for p, t in _mtimes(out).items() if p != old}
    capsys.readouterr()
    experiment("temperature", out=str(out), values=[0.5, 2.0], teacher=str(tiny_teacher), data=str(text_dir), **TINY)
    err = capsys.readouterr().err
    assert "adding general_data, general_tokens" in err and err.count("measuring general text") == 2
    for path in (old, teacher):
        assert json.loads(path.read_text())["metrics"]["general_perplexity"] == pytest.approx(kept[path], rel=1e-4)
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())
    assert json.loads(spec_path.read_text())["protocol"]["eval"]["general_data"] == "wikipedia"


def test_data_mix_trains_each_arm_on_its_text_and_scores_all_in_domain_and_general(tiny_teacher, text_dir, capsys):
    mix = f"{text_dir}+wikipedia"
    out = experiment(
        "data-mix",
        out="mix",
        values=[str(text_dir), mix],
        teacher=str(tiny_teacher),
        data=str(text_dir),
        **{**TINY, "seeds": [0]},
    )
    run = load_run(out)
    arms = run["spec"]["arms"]
    assert [a["settings"]["data"] for a in arms] == [str(text_dir), f"{text_dir},wikipedia"]
    assert all("/" not in a["name"] for a in arms)
    for arm in arms:
        (record,) = run["results"][arm["name"]]
        trained = json.loads((out / "arms" / f"{arm['name']}-seed0" / "slimlm.json").read_text())
        assert trained["settings"]["data"] == arm["settings"]["data"] and not trained["training"]["teacher_cache"]
        assert record["metrics"]["general_data"] == "wikipedia" and record["metrics"]["perplexity"] > 0
    mixed = json.loads((out / "arms" / f"{arms[1]['name']}-seed0" / "slimlm.json").read_text())
    assert set(mixed["data"]["train"]["blocks_per_part"]) == {str(text_dir), "wikipedia"}
    report = (out / "report.md").read_text()
    assert "No paper counterpart" in report and "general-text perplexity" in report


def test_a_different_experiment_in_the_same_folder_is_refused(temperature_run, tiny_teacher, text_dir):
    with pytest.raises(SlimlmError, match="different experiment"):
        experiment(
            "temperature", out=str(temperature_run), values=[1.0], teacher=str(tiny_teacher), data=str(text_dir), **TINY
        )


def test_feature_layer_sweep_maps_layers_proportionally_and_shares_the_cache(tiny_teacher, text_dir, capsys):
    out = experiment(
        "feature-layer",
        out="layers",
        values=[1, 4],
        weight_grid=[0.1, 10],
        teacher=str(tiny_teacher),
        data=str(text_dir),
        **{**TINY, "seeds": [0]},
    )
    run = load_run(out)
    spec = run["spec"]
    names = [a["name"] for a in spec["arms"]]
    assert names[0] == "logits" and names[-1].startswith("attention")
    assert [a["settings"]["feature_layers"] for a in spec["arms"][1:-1]] == ["1:1", "4:2"]
    # the control distils logits alone; the attention arm (paper Fig. 1) needs the teacher online
    assert spec["arms"][0]["settings"]["feature_weight"] == 0.0 and spec["arms"][0]["control"]
    attention = spec["arms"][-1]["settings"]
    assert attention["teacher_cache"] is False and attention["attention_weight"] > 0
    record = json.loads((out / "arms" / f"{names[-1]}-seed0" / "slimlm.json").read_text())
    assert record["settings"]["teacher_cache"] is False and record["settings"]["attention_layers"]
    err = capsys.readouterr().err
    assert err.count("reusing cached teacher outputs") >= 1
    report = json.loads((out / "report.json").read_text())
    # every arm is compared seed by seed with the logit-only control
    assert report["paired"]["against"] == "logits"
    assert set(report["paired"]["arms"]) == set(names[1:])
    assert "Paired differences against" in (out / "report.md").read_text()
    # β picked once on the validation split, as the middle layer's arm, then used by every feature arm
    grid = json.loads((out / "weight-grid.json").read_text())
    (group,) = grid["scores"]
    best = float(min(grid["scores"][group], key=grid["scores"][group].get))
    assert grid["picked"] == {group: best} and set(grid["scores"][group]) == {"0.1", "10"}
    for arm in names[1:-1]:
        record = json.loads((out / "arms" / f"{arm}-seed0" / "slimlm.json").read_text())
        assert record["settings"]["feature_weight"] == best
    assert "reused" in err
    assert any("picked on the validation split" in n for n in report["protocol"]["notes"])


def test_finetune_experiment_compares_lora_and_full(tiny_teacher, text_dir):
    out = experiment("finetune", out="ft", teacher=str(tiny_teacher), data=str(text_dir), **{**TINY, "seeds": [0]})
    run = load_run(out)
    lora, full = run["results"]["lora"][0], run["results"]["full"][0]
    assert lora["training"]["trainable_parameters"] < full["training"]["trainable_parameters"]
    assert "base" in run["references"]


def test_finetune_learning_rates_are_picked_on_validation_and_seed_0_is_reused(tiny_teacher, text_dir, capsys):
    args = {**TINY, "seeds": [0, 1], "learning_rate": None}
    out = experiment(
        "finetune",
        out="ft-grid",
        teacher=str(tiny_teacher),
        data=str(text_dir),
        lr_grid=[0.5, 4],
        with_teacher=True,
        **args,
    )
    grid = json.loads((out / "lr-grid.json").read_text())
    assert grid["split"] == "validation" and set(grid["scores"]) == {"lora", "full"}
    assert grid["setting"] == "learning rate"
    for method, default in (("lora", 5e-4), ("full", 5e-5)):
        scores = grid["scores"][method]
        assert sorted(float(r) for r in scores) == pytest.approx([default * 0.5, default * 4])
        best = float(min(scores, key=scores.get))
        assert grid["picked"][method] == best
        for seed in (0, 1):  # every seed of the arm trains at its method's pick, with the teacher in the loss
            record = json.loads((out / "arms" / f"{method}-seed{seed}" / "slimlm.json").read_text())
            assert record["settings"]["learning_rate"] == best and record["settings"]["teacher"] == str(tiny_teacher)
    err = capsys.readouterr().err
    assert err.count("reused") == 2  # seed 0 of each arm is the grid's run at the pick, not trained again
    report = json.loads((out / "report.json").read_text())
    assert report["validation_grids"]["lr-grid"]["picked"] == grid["picked"] and report["paired"]["against"] == "full"
    assert "Learning rate, picked on the validation split" in (out / "report.md").read_text()
    with pytest.raises(SlimlmError, match="drop --learning-rate"):
        experiment("finetune", out="ft-x", teacher=str(tiny_teacher), lr_grid=[1], **{**args, "learning_rate": 1e-3})


def test_pipeline_keeps_and_measures_every_stage(tiny_teacher, text_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
teacher: {tiny_teacher}
data: {text_dir}
seeds: [0]
evaluate: {{window: 32, stride: 32, tokens: 512, repeats: 1, decode_new_tokens: 4, tasks: [cloze], task_items: 6}}
stages:
  - distill: {{keep_layers: "0,3", max_tokens: 256, block_size: 32, bf16: false, eval_tokens: 256, eval_window: 32,
               calibration_blocks: 2, learning_rate: 3.0e-3, teacher_cache: true}}
  - finetune: {{method: lora, max_tokens: 128, block_size: 32, bf16: false, eval_tokens: 256, eval_window: 32}}
  - prune: {{method: wanda, sparsity: 0.5, block_size: 32, eval_tokens: 256, repeats: 1, calibration_blocks: 2}}
  - quantize: {{bits: 8, block_size: 32, eval_tokens: 256, repeats: 1}}
""")
    out = pipeline(recipe, out="pipe")
    run = load_run(out)
    assert list(run["results"]) == ["1-distill", "2-finetune", "3-prune", "4-quantize"]
    for stage, results in run["results"].items():
        assert (out / "arms" / f"{stage}-seed0" / "slimlm.json").exists()
        assert results[0]["metrics"]["size_on_disk_mb"] > 0
    sizes = [run["results"][s][0]["metrics"]["size_on_disk_mb"] for s in ("3-prune", "4-quantize")]
    assert sizes[1] < sizes[0]  # 8-bit packed codes are smaller than the fp32 pruned model
    assert (out / "report.html").exists()
    # the teacher's quantized copies (--baselines quantized, the default) beside the stages, as references
    assert set(run["references"]) == {"teacher", "teacher-int8", "teacher-int4"}
    sizes = {n: r["metrics"]["size_on_disk_mb"] for n, r in run["references"].items()}
    assert sizes["teacher-int4"] < sizes["teacher-int8"] < sizes["teacher"]
    markdown = (out / "report.md").read_text()
    assert "| teacher-int8 |" in markdown and "`slimlm quantize TEACHER --bits 4 --granularity group" in markdown
    # the protocol names the stage that read the teacher cache (not "none")
    assert "teacher cache: mode=sample" in markdown and "stages=1-distill" in markdown


@pytest.mark.parametrize(
    "recipe_text, message",
    [
        ("stages: []", "non-empty list"),
        ("stages: [{compress: {}}]", "is not one of"),
        ("stages: [{distill: {layers: 2, temperature: -1}}]", "temperature"),
        ("stages: [{quantize: {bitz: 8}}]", "bitz"),
        ("stages: [{distill: {layers: 2}}, {student: {layers: 2}}]", "only be the first stage"),
        ("stages: [{distill: {max_tokens: 64}}]", "needs layers"),
        ("stages: [{distill: {layers: 2}}, {prune: {sparsity: 2}}]", "sparsity"),
        ("stages: [{distill: {layers: 2}}, {quantize: {bits: 99}}]", "bits"),
        ("stages: [{student: {}}]", "exactly one of layers"),
        ("teachr: x\nstages: [{distill: {layers: 2}}]", "unknown key"),
    ],
)
def test_bad_recipe_is_one_line_error_before_any_work(tmp_path, capsys, recipe_text, message, tiny_teacher):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"teacher: {tiny_teacher}\n" + recipe_text if "teachr" not in recipe_text else recipe_text)
    assert main(["pipeline", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("slimlm: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["experiment", "temperature", "--values", "0,1"], "must be > 0"),
        (["experiment", "temperature", "--values", "a,b"], "must be a float"),
        (["experiment", "temperature", "--seeds", "0,0"], "repeats"),
        (["experiment", "feature-layer", "--layers", "0,99"], "teacher layers are"),
        (["experiment", "finetune", "--methods", "qlora"], "unknown qlora"),
        (["experiment", "finetune", "--lr-grid", "0.2,0"], "every value must be > 0"),
        (["experiment", "finetune", "--lr-grid", "x"], "must be a float"),
        (["experiment", "finetune", "--lr-grid", "1", "--learning-rate", "1e-4"], "drop --learning-rate"),
        (["experiment", "feature-layer", "--weight-grid", "0,1"], "every value must be > 0"),
        (["experiment", "feature-layer", "--attention-weight", "-1"], "attention"),
        (["experiment", "temperature", "--cache-mode", "online", "--online-control"], "drop one"),
        (["experiment", "temperature", "--tasks", "trivia"], "unknown task"),
        (["experiment", "temperature", "--alpha", "2"], "--alpha must be in [0, 1]"),
        (["experiment", "temperature", "--learning-rate", "-1"], "--learning-rate must be > 0"),
        (["report", "nowhere"], "not an experiment folder"),
    ],
)
def test_bad_experiment_flags_are_one_line_errors(argv, message, tiny_teacher, capsys, tmp_path):
    if argv[0] == "experiment":
        argv = argv + ["--teacher", str(tiny_teacher), "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("slimlm: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()  # refused before the folder is claimed


def test_force_never_deletes_a_folder_that_is_not_an_experiment(tmp_path, tiny_teacher, capsys):
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code = main(["experiment", "temperature", "--teacher", str(tiny_teacher), "--out", str(precious), "--force"])
    assert code == 2 and "not an experiment folder" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_rerun_with_another_thread_count_continues(temperature_run, tiny_teacher, text_dir, capsys):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        experiment(
            "temperature",
            out=str(temperature_run),
            values=[0.5, 2.0],
            teacher=str(tiny_teacher),
            data=str(text_dir),
            **TINY,
        )
    finally:
        torch.set_num_threads(threads)
    assert capsys.readouterr().err.count("finished earlier, skipped") == 4


def test_eval_checks_tasks_and_lm_eval_before_measuring(tiny_teacher, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    for argv, message in ((["--tasks", "trivia"], "unknown task"), (["--lm-eval", "hellaswag"], "pip install")):
        assert main(["eval", str(tiny_teacher), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "perplexity" not in err  # refused before any model was measured


def test_experiment_recipe_cannot_override_its_own_flags(tiny_teacher, tmp_path, capsys):
    recipe = tmp_path / "extra.yaml"
    recipe.write_text("alpha: 0.9\n")
    assert (
        main(
            [
                "experiment",
                "temperature",
                "--teacher",
                str(tiny_teacher),
                "--recipe",
                str(recipe),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "experiment-owned setting(s) alpha" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
