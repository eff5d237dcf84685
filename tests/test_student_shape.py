"""`slimlm experiment student-shape`: one arm per axis, each distilled from its own student at --target-params,
measured as a frontier beside the teacher and its quantized baselines (teacher-int8, teacher-int4), resumed
like every experiment, and reported without a paper comparison (the paper has no such study). The baselines
also join the other kinds' and the pipeline's reports, and never change an experiment's identity."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from slimlm.cli import main
from slimlm.errors import SlimlmError
from slimlm.eval.llama_cpp import available as llama_cpp_available
from slimlm.experiments import plots, runner
from slimlm.experiments import report as rep
from slimlm.experiments.layout import load_run
from slimlm.experiments.sweeps import experiment
from slimlm.settings import ExperimentSettings
from test_errors import assert_one_line_error, run_cli
from test_report import make_run, write_json

AXES = ("depth", "width", "both")
ARGS = dict(
    values=",".join(AXES),
    target_params=0.7,
    max_tokens=256,
    block_size=32,
    batch_size=4,
    learning_rate=3e-3,
    seeds=[0],
    tasks="none",
    evaluation={"window": 32, "stride": 32, "tokens": 512, "repeats": 1, "decode_new_tokens": 4},
    settings={"bf16": False, "eval_tokens": 256, "eval_window": 32, "logging_steps": 1},
    baselines="quantized",
)


@pytest.fixture(scope="module")
def shape_run(tiny_teacher, text_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shape") / "student-shape"
    experiment("student-shape", out=str(out), teacher=str(tiny_teacher), data=str(text_dir), **ARGS)
    return out


# where llama-cpp-python is installed, the teacher and each arm's first seed are measured as GGUF q8_0 and q4_0
GGUF = {f"{who}-{kind}-llama.cpp" for who in ("teacher", *AXES) for kind in ("q8_0", "q4_0")}
GGUF = GGUF if llama_cpp_available() else set()


def _mtimes(run_dir):
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.json") if not p.name.startswith("report")}


def test_every_arm_starts_from_its_own_student_cut_along_its_axis(shape_run, tiny_teacher):
    teacher = AutoConfig.from_pretrained(tiny_teacher)
    run = load_run(shape_run)
    assert [a["name"] for a in run["spec"]["arms"]] == list(AXES)
    teacher_params = run["references"]["teacher"]["metrics"]["parameters"]
    settings = {}
    for axis in AXES:
        start = AutoConfig.from_pretrained(shape_run / "students" / axis)
        arm = AutoConfig.from_pretrained(shape_run / "arms" / f"{axis}-seed0")
        shape = [(c.num_hidden_layers, c.hidden_size, c.intermediate_size) for c in (start, arm)]
        assert shape[0] == shape[1]  # distillation keeps the starting student's shape
        if axis == "depth":  # fewer layers, the teacher's width
            assert start.num_hidden_layers < teacher.num_hidden_layers and start.hidden_size == teacher.hidden_size
            assert start.intermediate_size == teacher.intermediate_size
        if axis == "width":  # every layer, narrower
            assert start.num_hidden_layers == teacher.num_hidden_layers
            assert start.hidden_size < teacher.hidden_size or start.intermediate_size < teacher.intermediate_size
        reference = run["references"][f"student-{axis}"]
        assert (
            reference["student"]["axis"] == axis and reference["student"]["shape"]["layers"] == start.num_hidden_layers
        )
        assert reference["model_dir"] == str(shape_run / "students" / axis)
        params = run["results"][axis][0]["metrics"]["parameters"]
        assert params == reference["metrics"]["parameters"] and abs(params / teacher_params - 0.7) < 0.12
        record = json.loads((shape_run / "arms" / f"{axis}-seed0" / "slimlm.json").read_text())
        assert record["settings"]["student"] == str(shape_run / "students" / axis)
        settings[axis] = ({k: v for k, v in record["settings"].items() if k != "student"}, record["training"]["tokens"])
    assert settings["depth"] == settings["width"] == settings["both"]  # only the starting student differs
    assert "student-init" not in run["references"]


def test_the_baselines_are_the_quantized_teacher_measured_as_references(shape_run):
    refs = load_run(shape_run)["references"]
    assert set(refs) == {"teacher", "teacher-int8", "teacher-int4"} | {f"student-{a}" for a in AXES} | GGUF
    int8, int4 = refs["teacher-int8"], refs["teacher-int4"]
    assert int8["baseline"]["bits"] == 8 and int8["baseline"]["granularity"] == "channel"
    assert (int4["baseline"]["bits"], int4["baseline"]["granularity"], int4["baseline"]["group_size"]) == (
        4,
        "group",
        32,
    )
    for ref in (int8, int4):
        assert ref["model_dir"].startswith(str(shape_run / "baselines"))
        assert {"perplexity", "accuracy", "decode_tokens_per_s", "prefill_tokens_per_s"} <= ref["metrics"].keys()
        assert ref["metrics"]["parameters"] == refs["teacher"]["metrics"]["parameters"]
    sizes = [refs[n]["metrics"]["size_on_disk_mb"] for n in ("teacher-int4", "teacher-int8", "teacher")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[1] < sizes[2]


@pytest.mark.skipif(not GGUF, reason="llama-cpp-python is not installed")
def test_each_arm_is_also_measured_as_gguf_under_llama_cpp(shape_run):
    run = load_run(shape_run)
    rows = {r["name"]: r for r in json.loads((shape_run / "report.json").read_text())["frontier"]}
    for axis in AXES:
        for kind, bits in (("q8_0", 8), ("q4_0", 4)):
            ref = run["references"][f"{axis}-{kind}-llama.cpp"]
            assert ref["baseline"]["of"] == f"{axis} (seed 0)" and ref["baseline"]["bits"] == bits
            assert ref["metrics"]["runtime"] == "llama.cpp" and ref["model_dir"].endswith(f"{axis}-{kind}.gguf")
            assert ref["metrics"]["parameters"] == run["results"][axis][0]["metrics"]["parameters"]
            assert rows[f"{axis}-{kind}-llama.cpp"]["role"] == "distilled, GGUF"
            assert rows[f"{axis}-{kind}-llama.cpp"]["shape"] == rows[axis]["shape"]
        # 8-bit blocks keep the distilled student's perplexity
        q8 = run["references"][f"{axis}-q8_0-llama.cpp"]["metrics"]["perplexity"]
        assert q8 == pytest.approx(run["results"][axis][0]["metrics"]["perplexity"], rel=0.05)


def test_the_report_has_the_frontier_table_and_plot_and_no_paper_comparison(shape_run):
    report = json.loads((shape_run / "report.json").read_text())
    markdown = (shape_run / "report.md").read_text()
    assert report["plots"] == ["plots/student_shape_frontier.png"]
    assert (shape_run / report["plots"][0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["name"]: r for r in report["frontier"]}
    assert set(rows) == set(AXES) | {f"student-{a}" for a in AXES} | {"teacher", "teacher-int8", "teacher-int4"} | GGUF
    assert [rows[n]["role"] for n in ("depth", "student-depth", "teacher", "teacher-int8")] == [
        "distilled",
        "starting student",
        "teacher",
        "baseline",
    ]
    for axis in AXES:
        shape = rows[axis]["shape"]
        assert shape == rows[f"student-{axis}"]["shape"] and shape["layers"] >= 1
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {axis} | distilled |"))
        assert f"| {shape['layers']} | {shape['hidden_size']} | {shape['intermediate_size']} |" in line
    assert rows["teacher-int4"]["shape"] == rows["teacher"]["shape"] and rows["teacher"]["share"] == 1.0
    assert "## Frontier" in markdown and "| teacher-int4 | baseline |" in markdown and "prefill tok/s" in markdown
    assert "`slimlm quantize TEACHER --bits 4 --granularity group --group-size 32`" in markdown  # the protocol
    assert report["paper"]["counterpart"] is False and not report["paper"]["rows"]
    assert "**No paper counterpart.**" in markdown and "Read this first" not in markdown
    assert any(s.startswith("On the size/perplexity frontier") for s in report["paper"]["sentences"])


def test_a_rerun_skips_everything_even_without_the_baselines(shape_run, tiny_teacher, text_dir, capsys):
    before = _mtimes(shape_run)
    capsys.readouterr()
    for baselines in ("quantized", "none"):  # the baselines are references, not part of the experiment's identity
        args = {**ARGS, "baselines": baselines}
        experiment("student-shape", out=str(shape_run), teacher=str(tiny_teacher), data=str(text_dir), **args)
        err = capsys.readouterr().err
        assert err.count("finished earlier, skipped") == 3 and ": training" not in err and "building" not in err
    assert _mtimes(shape_run) == before


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--axes", "depth,diagonal"], ["--axes", "unknown diagonal"]),
        (["--axes", "depth,depth"], ["--axes", "repeats"]),
        (["--target-params", "1.5"], ["--target-params", "(0, 1)"]),
        (["--target-params", "0.01", "--axes", "width"], ["smallest student", "--target-params 0.01"]),
    ],
)
def test_bad_student_shape_flags_are_one_line_errors(argv, words, tiny_teacher, capsys):
    code, err = run_cli(capsys, "experiment", "student-shape", *argv, "--teacher", tiny_teacher, "--out", "out")
    assert_one_line_error(code, err, *words)


def test_student_shape_takes_no_starting_student_and_known_baselines_only(tiny_teacher, capsys):
    with pytest.raises(SystemExit) as stop:  # not a flag of this kind at all
        main(["experiment", "student-shape", "--student", "s", "--out", "out"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1] == "slimlm: error: unrecognized arguments: --student s"
    for bad, flag in (({"student": "s"}, "--student"), ({"baselines": "all"}, "--baselines must be one of")):
        with pytest.raises(SlimlmError, match=flag) as error:  # from Python, where argparse does not check
            experiment("student-shape", out="out", teacher=str(tiny_teacher), **bad)
        assert "\n" not in str(error.value)


def test_max_tokens_default_is_per_kind():
    assert ExperimentSettings(kind="student-shape").tokens_per_arm() == 200_000
    assert ExperimentSettings(kind="temperature").tokens_per_arm() == 20480
    assert ExperimentSettings(kind="student-shape", max_tokens=5).tokens_per_arm() == 5


def test_the_older_kinds_keep_their_identity(tiny_teacher, text_dir, monkeypatch):
    """A folder started before the baselines and the per-kind --max-tokens default existed continues: the spec of
    an older kind gains no key, and its token budget is still 20,480."""
    seen = {}

    def stop(run_dir, spec, force=False):
        seen.update(spec)
        raise SlimlmError("stopped")

    monkeypatch.setattr(runner, "open_run", stop)
    with pytest.raises(SlimlmError, match="stopped"):
        experiment("temperature", out="t", teacher=str(tiny_teacher), data=str(text_dir), block_size=32)
    assert set(seen) == {"kind", "parameter", "arms", "seeds", "protocol", "command"}
    assert "baseline" not in json.dumps(seen) and "target_params" not in json.dumps(seen)
    assert seen["protocol"]["train_tokens"] == seen["protocol"]["base_settings"]["max_tokens"] == 20480
    assert set(seen["protocol"]) == {
        "teacher",
        "teacher_layers",
        "data",
        "data_info",
        "train_tokens",
        "block_size",
        "base_settings",
        "eval",
        "teacher_cache",
        "notes",
    }


def _with_baselines(run):
    for name, bits, size in (("teacher-int8", 8, 140.0), ("teacher-int4", 4, 80.0)):
        write_json(
            run / "references" / f"{name}.json",
            {
                "name": name,
                "model_dir": f"baselines/{name}",
                "baseline": {
                    "bits": bits,
                    "command": f"slimlm quantize TEACHER --bits {bits}",
                    "runtime": "dequantized",
                },
                "metrics": {
                    "perplexity": 30.0 + bits,
                    "accuracy": 0.35,
                    "decode_tokens_per_s": 17.0,
                    "size_on_disk_mb": size,
                },
                "wall_time_s": 5.0,
            },
        )
    return run


@pytest.mark.parametrize("kind", ["temperature", "pipeline"])
def test_other_reports_show_the_baselines_as_references(tmp_path, kind, monkeypatch):
    run = _with_baselines(make_run(tmp_path / "run", kind))
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, folder, name: figures.append(fig) or f"plots/{name}")
    report = rep.write_report(run)
    markdown = (run / "report.md").read_text()
    assert report["references"]["teacher-int8"]["baseline"]["bits"] == 8
    assert "| teacher-int8 |" in markdown and "| teacher-int4 |" in markdown  # reference rows
    assert "- baselines (the teacher quantized, built once" in markdown
    assert markdown.index("teacher-int8: `slimlm") < markdown.index("teacher-int4: `slimlm")  # most bits first
    assert "frontier" not in report  # the frontier table is the student-shape study's
    if kind == "pipeline":  # the frontier plot draws them as markers of their own, not the teacher's star
        legends = [t.get_text() for legend in figures[0].legends for t in legend.get_texts()]  # one, under both
        assert {"baseline: teacher-int8", "baseline: teacher-int4", "reference: teacher"} <= set(legends)
        assert any("teacher-int4" in s for s in report["paper"]["sentences"])  # on the size/perplexity frontier


def _shape_run(root, seeds=(0, 1)):
    """A student-shape folder as the runner writes it, with real-sized numbers (the plot's log axis needs them)."""
    teacher = {
        "layers": 30,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
    }
    shapes = {"depth": {**teacher, "layers": 13}, "width": {**teacher, "hidden_size": 512, "intermediate_size": 544}}
    spec = {
        "kind": "student-shape",
        "parameter": {
            "name": "axes",
            "label": "axes",
            "numeric": False,
            "target_params": 0.55,
            "teacher_shape": teacher,
        },
        "arms": [{"name": a, "value": a, "label": a, "settings": {"student": f"{{run}}/students/{a}"}} for a in shapes],
        "seeds": list(seeds),
        "protocol": {"teacher": "smollm2-135m", "teacher_layers": 30, "data": "sotu", "eval": {}, "notes": []},
    }
    write_json(root / "experiment.json", spec)
    for i, axis in enumerate(shapes):
        size, params = 297.0 - i, 74.3e6 - i * 4e5
        for seed in seeds:
            metrics = {
                "perplexity": 180.0 - 60 * i + 3 * seed,
                "accuracy": 0.2 + 0.01 * i,
                "decode_tokens_per_s": 35.0 - 15 * i,
            }
            metrics |= {"size_on_disk_mb": size, "parameters": params, "prefill_tokens_per_s": 900.0}
            write_json(root / "results" / axis / f"seed{seed}.json", {"arm": axis, "seed": seed, "metrics": metrics})
        start = {"axis": axis, "shape": shapes[axis], "chosen": axis}
        metrics = {
            "perplexity": 3000.0 / (i + 1),
            "size_on_disk_mb": size,
            "parameters": params,
            "decode_tokens_per_s": 30.0,
        }
        write_json(
            root / "references" / f"student-{axis}.json",
            {"name": f"student-{axis}", "student": start, "metrics": metrics},
        )
    metrics = {"perplexity": 28.7, "size_on_disk_mb": 538.0, "parameters": 134.5e6, "decode_tokens_per_s": 16.8}
    write_json(root / "references" / "teacher.json", {"name": "teacher", "metrics": metrics})
    return _with_baselines(root)


def test_the_frontier_plot_puts_the_distilled_models_on_a_log_perplexity_axis(tmp_path, monkeypatch):
    from slimlm.experiments import frontier_plot

    figures = []
    monkeypatch.setattr(frontier_plot, "save", lambda fig, folder, name: figures.append(fig) or f"plots/{name}")
    report = rep.write_report(_shape_run(tmp_path / "run"))
    (fig,) = figures
    assert len(fig.axes) == 3 and all(ax.get_yscale() == "log" for ax in fig.axes)
    assert [ax.get_xlabel() for ax in fig.axes][:2] == ["parameters (M)", "size on disk (MB)"]
    assert fig.axes[2].get_xlabel() == "decode tok/s (batch 1, single pass per model)"
    labels = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert labels >= {"depth (distilled)", "width (distilled)"}
    # the starting students lie far above the distilled ones: drawn at the top edge, their range in the legend
    assert "starting students (before distillation); ▲ off scale, perplexity 1500–3000" in labels
    assert labels >= {"reference: teacher", "baseline: teacher-int8", "baseline: teacher-int4"}
    sentences = report["paper"]["sentences"]
    assert sentences[0].startswith("Test perplexity after distillation, best first: width")
    assert any("size/perplexity frontier" in s and "teacher-int4" in s for s in sentences)
    assert [r["share"] for r in report["frontier"] if r["name"] in ("depth", "teacher")][1] == 1.0


def test_a_student_shape_folder_without_results_still_reports(tmp_path):
    run = _shape_run(tmp_path / "run")
    for path in (run / "results").rglob("*.json"):
        path.unlink()
    report = rep.write_report(run)
    assert report["paper"]["sentences"] == ["No arm has finished results yet: nothing to compare."]
    assert "| depth | distilled | 0 | 13 | 576 | 1536 |" in (run / "report.md").read_text()
    assert (run / "plots" / "student_shape_frontier.png").exists()


def test_a_student_exported_to_gguf_sits_on_the_frontier_with_its_arms_shape(tmp_path, monkeypatch):
    from slimlm.experiments import frontier_plot

    run = _shape_run(tmp_path / "run")
    about = {"of": "depth (seed 0)", "arm": "depth", "seed": 0, "axis": "depth", "bits": 8, "type": "q8_0"}
    about["command"] = "slimlm export arms/depth-seed0 --type q8_0; slimlm eval FILE --runtime llama.cpp"
    metrics = {"perplexity": 121.0, "size_on_disk_mb": 80.0, "parameters": 74.3e6, "decode_tokens_per_s": 60.0}
    metrics["weight_repacking"] = "off: the process crashed with it"  # as eval/llama_cpp.py records a retry
    write_json(
        run / "references" / "depth-q8_0-llama.cpp.json",
        {"name": "depth-q8_0-llama.cpp", "baseline": about, "metrics": metrics},
    )
    figures = []
    monkeypatch.setattr(frontier_plot, "save", lambda fig, folder, name: figures.append(fig) or f"plots/{name}")
    report = rep.write_report(run)
    rows = {r["name"]: r for r in report["frontier"]}
    assert rows["depth-q8_0-llama.cpp"]["role"] == "distilled, GGUF" and rows["teacher-int8"]["role"] == "baseline"
    assert rows["depth-q8_0-llama.cpp"]["shape"]["layers"] == 13  # the depth arm's, not the teacher's 30
    markdown = (run / "report.md").read_text()
    assert "| depth-q8_0-llama.cpp | distilled, GGUF |" in markdown
    assert "depth-q8_0-llama.cpp: measured with llama.cpp's weight repacking off" in markdown
    assert "or a distilled arm exported to GGUF, built once" in markdown
    labels = {t.get_text() for legend in figures[0].legends for t in legend.get_texts()}
    assert "distilled, GGUF q8_0 (arm's colour)" in labels
    sentences = report["paper"]["sentences"]
    assert any("decode-speed/perplexity frontier" in s and "depth-q8_0-llama.cpp" in s for s in sentences)
