"""`slimlm report`: synthetic run folders written by hand following layout.py (the report is what is under
test, not the runners), one per experiment kind."""

from __future__ import annotations

import errno
import json
import statistics
from pathlib import Path

import pytest

from slimlm.errors import SlimlmError
from slimlm.experiments import columns, render, stats
from slimlm.experiments import report as rep
from slimlm.experiments.layout import experiment_file, load_run, reference_file, result_file

PNG = b"\x89PNG\r\n\x1a\n"

PARAMETERS = {
    "temperature": {"name": "temperature", "label": "KD temperature τ", "numeric": True},
    "feature-layer": {"name": "layer", "label": "teacher layer", "numeric": True, "teacher_layers": 30},
    "finetune": {"name": "method", "label": "fine-tuning method", "numeric": False},
    "pipeline": {"name": "stage", "label": "stage", "numeric": False},
}
ARMS = {
    "temperature": [(f"t{v:g}", v, f"τ={v:g}") for v in (0.5, 1.0, 2.0, 5.0, 10.0)],
    "feature-layer": [(f"layer{v}", v, f"layer {v}") for v in (3, 15, 30)],
    "finetune": [("lora", "lora", "LoRA r=8"), ("full", "full", "full")],
    "pipeline": [("1-distill", 1, "distill"), ("2-prune", 2, "prune"), ("3-quantize", 3, "quantize")],
}
# accuracy / perplexity / tok/s / size per arm: a peak at the third temperature, like the paper's Table 1.
ACC = [0.30, 0.33, 0.35, 0.32, 0.28]
PPL = [80.0, 72.0, 66.0, 75.0, 90.0]


def metrics(i: int, seed: int, kind: str) -> dict:
    m = {
        "perplexity": PPL[i] + seed * 0.7,
        "accuracy": ACC[i] + seed * 0.002,
        "bits_per_byte": 1.1 + 0.01 * i,
        "decode_tokens_per_s": 40.0 + seed * 1.5 + 0.1 * i,
        "prefill_tokens_per_s": 900.0,
        "size_on_disk_mb": 300.0 - 80 * i if kind == "pipeline" else 300.0,
        "parameters": 81_000_000,
        "inference_memory_mib": 700.0 - 10 * i + seed,
    }
    if kind == "finetune":
        m["cloze_exact_match"] = 0.2 + 0.05 * i + 0.01 * seed
        m["downstream_protocol"] = {
            "cloze": {"items": 200, "scoring": "exact match of greedy decoding", "seconds": 12.5}
        }
    return m


def training(i: int, seed: int) -> dict:
    return {
        "wall_time_s": 100.0 + i + seed,
        "tokens": 20480,
        "train_tokens_per_s": 200.0 - 50 * i + seed,
        "peak_memory_mib": 2000.0 + 500 * i,
        "trainable_parameters": 800_000 if i == 0 else 81_000_000,
    }


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def make_run(root: Path, kind: str, seeds=(0, 1, 2), skip=()) -> Path:
    """A run folder as the runners write it; `skip` lists (arm, seed) pairs that never finished."""
    arms = [{"name": n, "value": v, "label": label, "settings": {"lr": 1e-3}} for n, v, label in ARMS[kind]]
    if kind == "pipeline":
        for a in arms:
            a["stage"] = a["label"]
    spec = {
        "kind": kind,
        "parameter": PARAMETERS[kind],
        "arms": arms,
        "seeds": list(seeds),
        "protocol": {
            "teacher": "smollm2-135m",
            "teacher_layers": 30,
            "data": "sotu",
            "data_info": {
                "corpus": "sotu",
                "rule": "by year: newest speeches are the test split",
                "train": {"tokens": 20480, "documents": 200},
                "test": {"tokens": 12345, "documents": 9, "names": [f"speech-{y}" for y in range(2018, 2027)]},
            },
            "train_tokens": 20480,
            "block_size": 256,
            "base_settings": {"alpha": 0.5},
            "eval": {
                "split": "test",
                "window": 256,
                "stride": 256,
                "tokens": 12345,
                "decode_new_tokens": 64,
                "repeats": 3,
                "threads": 2,
                "tasks": ["cloze"],
            },
            "teacher_cache": {"top_k": 128},
            "notes": ["synthetic run for tests"],
        },
        "created": "2026-01-01T00:00:00Z",
        "slimlm_version": "0.1.0",
        "command": f"slimlm experiment {kind} --out x",
    }
    write_json(experiment_file(root), spec)
    for i, (name, value, _) in enumerate(ARMS[kind]):
        for seed in seeds:
            if (name, seed) in skip:
                continue
            write_json(
                result_file(root, name, seed),
                {
                    "arm": name,
                    "value": value,
                    "seed": seed,
                    "model_dir": f"arms/{name}-seed{seed}",
                    "metrics": metrics(i, seed, kind),
                    "training": training(i, seed),
                    "wall_time_s": 150.0 + i + seed,
                },
            )
    for name, size, ppl in (("teacher", 540.0, 28.0), ("student-init", 320.0, 686.0)):
        write_json(
            reference_file(root, name),
            {
                "name": name,
                "model_dir": name,
                "wall_time_s": 30.0,
                "metrics": {"perplexity": ppl, "accuracy": 0.36, "decode_tokens_per_s": 17.0, "size_on_disk_mb": size},
            },
        )
    return root


def build(run: Path) -> dict:
    """The report's numbers and sentences without drawing plots (drawing is ~1 s a report)."""
    return rep.build_report(load_run(run), run)


def arm_report(report: dict, name: str) -> dict:
    return next(a for a in report["arms"] if a["name"] == name)


PLOTS = {
    "temperature": ["plots/temperature.png"],
    "feature-layer": ["plots/feature_layer.png"],
    "finetune": ["plots/finetune_quality.png", "plots/finetune_cost.png"],
    "pipeline": ["plots/pipeline_frontier.png"],
}


@pytest.mark.parametrize("kind", sorted(PLOTS))
def test_each_kind_writes_every_file_and_names_every_arm(tmp_path, kind):
    run = make_run(tmp_path / "run", kind)
    report = rep.write_report(run)
    assert report["plots"] == PLOTS[kind]
    md, html = (run / "report.md").read_text(), (run / "report.html").read_text()
    for name, _, label in ARMS[kind]:
        assert name in md and name in html and label in md
    assert report["plots"], "no plot recorded"
    for path in report["plots"]:
        data = (run / path).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000
        assert f'<img alt="{Path(path).stem}" src="{path}"' in html
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(Path(p).name for p in report["plots"])
    assert json.loads((run / "report.json").read_text())["plots"] == report["plots"]
    assert "## Paper vs slimlm" in md and "not comparable" in md and report["paper"]["sentences"]
    assert "<table>" in html and "<style>" in html
    assert not [p for p in run.iterdir() if p.name.startswith(".report-")], "temporary folder left behind"


def test_numbers_equal_the_results_files(tmp_path):
    run = make_run(tmp_path / "run", "temperature")
    report = rep.write_report(run)
    md = (run / "report.md").read_text()
    for name, *_ in ARMS["temperature"]:
        files = sorted((run / "results" / name).glob("seed*.json"))
        results = [json.loads(f.read_text()) for f in files]
        arm = arm_report(report, name)
        for key in ("accuracy", "perplexity", "decode_tokens_per_s", "inference_memory_mib"):
            values = [r["metrics"][key] for r in results]
            got = arm["metrics"][key]
            assert got["mean"] == pytest.approx(statistics.mean(values))
            assert got["std"] == pytest.approx(statistics.stdev(values))  # sample std, ddof=1
            assert (got["min"], got["max"], got["n"], got["values"]) == (min(values), max(values), 3, values)
        acc = [r["metrics"]["accuracy"] * 100 for r in results]
        ppl = [r["metrics"]["perplexity"] for r in results]
        assert f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f}" in md
        assert f"{statistics.mean(ppl):.2f} ± {statistics.stdev(ppl):.2f}" in md
        assert arm["total_wall_time_s"] == pytest.approx(sum(r["wall_time_s"] for r in results))
        assert report["timing"]["arms_s"][name] == arm["total_wall_time_s"]
    assert report["timing"]["total_s"] == pytest.approx(sum(report["timing"]["arms_s"].values()) + 60.0)
    assert report["references"]["teacher"]["metrics"]["perplexity"] == 28.0
    assert "| teacher |" in md
    assert "split rule: by year: newest speeches are the test split" in md
    assert "test: tokens 12,345, documents 9, names 9 items: speech-2018, speech-2019 … speech-2026" in md
    on_disk = json.loads((run / "report.json").read_text())
    assert on_disk["arms"] == json.loads(json.dumps(report["arms"]))


def test_paper_rows_sit_beside_ours(tmp_path):
    report = build(make_run(tmp_path / "run", "temperature"))
    rows = {r["x"]: r for r in report["paper"]["rows"]}
    assert rows[2.0]["paper"]["accuracy_pct"] == 87.1 and rows[2.0]["arm"] == "t2"
    assert rows[10.0]["paper"]["perplexity"] == 22.9
    md = render.render_markdown(report)
    assert "| τ=2 | t2 | 87.1 |" in md


def test_one_seed_has_no_std(tmp_path):
    report = build(make_run(tmp_path / "run", "finetune", seeds=(0,)))
    acc = arm_report(report, "lora")["metrics"]["accuracy"]
    assert acc["n"] == 1 and acc["std"] is None
    assert any("spread is unknown" in s for s in report["paper"]["sentences"])


def test_missing_seeds_and_arms_are_reported(tmp_path):
    skip = {("t10", 0), ("t10", 1), ("t10", 2), ("t2", 1)}
    report = build(make_run(tmp_path / "run", "temperature", skip=skip))
    assert report["missing"]["arms"] == ["t10"]
    assert report["missing"]["seeds"] == {"t2": [1], "t10": [0, 1, 2]}
    assert arm_report(report, "t2")["metrics"]["accuracy"]["n"] == 2
    md = render.render_markdown(report)
    assert "arm `t10`: no results at all" in md and "arm `t2`: seed(s) 1 missing" in md
    assert "| t10 | τ=10 | 0 |" in md  # still a row, with no numbers


@pytest.mark.parametrize("kind", ["feature-layer", "finetune"])
def test_run_without_any_results_still_reports(tmp_path, kind):
    """A run interrupted before its first arm finished: every arm listed as missing, plots still drawn."""
    run = make_run(tmp_path / "run", kind, skip={(n, s) for n, *_ in ARMS[kind] for s in (0, 1, 2)})
    report = rep.write_report(run)
    assert report["missing"]["arms"] == [n for n, *_ in ARMS[kind]]
    assert report["paper"]["sentences"] == ["No arm has finished results yet: nothing to compare."]
    assert all((run / p).read_bytes().startswith(PNG) for p in report["plots"])
    md = (run / "report.md").read_text()
    assert all(f"arm `{n}`: no results at all" in md for n, *_ in ARMS[kind])


def test_refuses_to_overwrite_without_force(tmp_path):
    run = make_run(tmp_path / "run", "pipeline")
    rep.write_report(run)
    before = (run / "report.md").read_text()
    with pytest.raises(SlimlmError, match="--force") as info:
        rep.write_report(run)
    assert "\n" not in str(info.value)
    (run / "plots" / "stale.png").write_bytes(PNG)
    rep.write_report(run, force=True)
    assert (run / "report.md").read_text().split("report generated")[0] == before.split("report generated")[0]
    assert not (run / "plots" / "stale.png").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".report-")]


def test_folder_without_experiment_json(tmp_path):
    with pytest.raises(SlimlmError) as info:
        rep.write_report(tmp_path)
    assert "experiment.json" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "report.md").exists()


def test_sentences_follow_the_data(tmp_path):
    """Same peak as Table 1 → agreement; reverse our accuracy → the sentences say it differs."""
    report = build(make_run(tmp_path / "a", "temperature"))
    text = " ".join(report["paper"]["sentences"])
    assert "Best by next-token accuracy here: τ=2" in text and "Same setting: agree" in text
    assert "ours rises then falls over 5 settings; the paper's rises then falls: same shape" in text
    assert "within our seed spread" in text  # speeds differ by 0.4 tok/s with seed std 1.5

    global ACC
    saved, ACC = ACC, [0.36, 0.34, 0.32, 0.30, 0.28]
    try:
        report = build(make_run(tmp_path / "b", "temperature"))
    finally:
        ACC = saved
    text = " ".join(report["paper"]["sentences"])
    assert "Best by next-token accuracy here: τ=0.5" in text and "Differ: ours is at an end" in text
    assert "ours falls throughout over 5 settings; the paper's rises then falls: different shape" in text


def test_finetune_and_pipeline_sentences(tmp_path):
    ft = " ".join(build(make_run(tmp_path / "ft", "finetune"))["paper"]["sentences"])
    # ours: full (arm 1) has higher accuracy and lower perplexity, as in the paper; speeds differ by 0.1 tok/s.
    assert "Next-token accuracy: LoRA 30.20 ± 0.20% vs full 33.20 ± 0.20% here" in ft
    assert "full better; the paper: LoRA 85.2% vs full 88.5%, full better — agrees with the paper" in ft
    assert "full faster; the paper: LoRA 52 vs full 37, LoRA faster" in ft
    assert "Decode speed: LoRA" in ft and "opposite to the paper, but within our seed spread (inconclusive)" in ft
    assert "same parameter count" in ft and "trainable parameters" in ft
    md = render.render_markdown(build(tmp_path / "ft"))
    assert "- downstream task `cloze`:" in md and "  - scoring: exact match of greedy decoding" in md
    pipe = build(make_run(tmp_path / "p", "pipeline"))["paper"]
    assert pipe["notes"][0].startswith("The paper reports no numbers") and pipe["rows"] == []
    pipe = pipe["sentences"]
    assert any("Stage quantize" in s and "smaller" in s for s in pipe)
    assert any("frontier" in s for s in pipe)


def test_feature_layer_uses_relative_depth(tmp_path):
    report = build(make_run(tmp_path / "run", "feature-layer"))
    rows = report["paper"]["rows"]
    matched = {r["arm"]: r["paper"]["layer"] for r in rows if r["arm"] and r["paper"]}
    # depth 0.1, 0.5, 1.0 against the paper's 1/12, 6/12, 12/12: each within half a paper layer
    assert matched == {"layer3": 1, "layer15": 6, "layer30": 12}
    assert "approximate" in report["paper"]["source"]


def test_helpers():
    assert stats.shape([1, 2, 3]) == "increasing" and stats.shape([1, 3, 2]) == "peak"
    assert stats.shape([3, 1, 2]) == "valley" and stats.shape([1, 3, 1, 3]) == "mixed"
    assert stats.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.summarize([(0, 1.0)])["std"] is None
    assert stats.summarize([(0, 1.0), (1, float("inf"))])["non_finite_dropped"] == 1
    assert stats.within_spread({"mean": 1, "std": 0.5}, {"mean": 1.8, "std": 0.4}) is True
    assert stats.within_spread({"mean": 1, "std": 0.1}, {"mean": 1.8, "std": 0.1}) is False
    assert stats.within_spread({"mean": 1, "std": None}, {"mean": 1.8, "std": 0.1}) is None
    assert stats.dominated((2.0, 2.0), [(1.0, 2.0)]) and not stats.dominated((1.0, 2.0), [(1.0, 2.0), (2.0, 1.0)])


def test_numbers_are_shown_in_their_column_units():
    assert columns.cell({"mean": 0.3512, "std": None}, "accuracy") == "35.12"  # accuracy is shown in %
    assert columns.cell({"mean": 0.35, "std": 0.01}, "accuracy") == "35.00 ± 1.00"
    assert columns.cell(None, "accuracy") == "–" and columns.display(2.5e4, "perplexity") == "2.5e+04"
    assert columns.said({"mean": 42.0, "std": None}, "decode_tokens_per_s") == "42.0 tok/s"
    assert columns.column("new_metric").label == "new_metric" and columns.ratio(1.0, 0.0).startswith("n/a")


def test_decode_rates_that_include_the_prefill_are_named(tmp_path):
    run = make_run(tmp_path / "run", "temperature")
    note = "prefill not separable from decoding; rate includes the prefill"
    for path in (result_file(run, "t2", 1), reference_file(run, "teacher")):
        record = json.loads(path.read_text())
        record["metrics"]["decode_note"] = note
        path.write_text(json.dumps(record))
    report = build(run)
    assert arm_report(report, "t2")["decode_rough_seeds"] == [1] and report["references"]["teacher"]["decode_rough"]
    md = render.render_markdown(report)
    assert "Decode tok/s of t2 (seed 1); reference teacher: prefill not separable" in md
    assert "Decode tok/s of" not in render.render_markdown(build(make_run(tmp_path / "clean", "temperature")))


def test_full_disk_while_writing_the_report_is_one_line(tmp_path, monkeypatch):
    run = make_run(tmp_path, "temperature")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rep, "write_files", full)
    with pytest.raises(SlimlmError) as info:
        rep.write_report(run)
    assert "disk full while writing" in str(info.value) and "\n" not in str(info.value)
    assert not [p for p in run.iterdir() if p.name.startswith(".report-")], "temporary report folder left behind"
    assert not (run / "report.md").exists()


def test_paired_difference_is_taken_seed_by_seed_on_the_seeds_both_have():
    arm = {"seeds": [0, 1, 2], "values": [110.0, 99.0, 120.0]}
    control = {"seeds": [0, 1], "values": [100.0, 100.0]}
    d = stats.paired(arm, control)
    assert d["seeds"] == [0, 1] and d["values"] == pytest.approx([0.10, -0.01])
    assert d["mean"] == pytest.approx(0.045) and d["std"] == pytest.approx(statistics.stdev([0.10, -0.01]))
    assert d["signs"] == "+−" and d["n"] == 2
    assert stats.paired({"seeds": [3], "values": [1.0]}, control) is None


def test_finetune_arms_are_compared_by_seed_with_full_fine_tuning(tmp_path):
    report = build(make_run(tmp_path / "run", "finetune"))
    block = report["paired"]
    assert block["against"] == "full" and list(block["arms"]) == ["lora"]
    lora, full = (next(a for a in report["arms"] if a["name"] == n) for n in ("lora", "full"))
    ppl = [a["metrics"]["perplexity"]["values"] for a in (lora, full)]
    expected = [a / b - 1 for a, b in zip(*ppl)]
    assert block["arms"]["lora"]["perplexity"]["values"] == pytest.approx(expected)
    text = "\n".join(render.results_section(report))
    assert "### Paired differences against full" in text and "| lora |" in text


def test_a_sweep_that_starts_at_the_papers_optimum_does_not_claim_it():
    """Table 1's online sweep (τ = 2, 5, 10) is best at τ = 2, its own low end: the same setting as the paper's
    optimum, but a sweep cannot show an optimum at its end; the full sweep (τ = 0.5 … 10) can."""
    from slimlm.experiments.compare import paper_best
    from slimlm.experiments.control import swept

    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    for name, expected in (
        ("temperature-online", "Same setting, but at an end of our swept range"),
        ("temperature-sampled", "both optima are interior"),
    ):
        report = json.loads((results / name / "report.json").read_text())
        sentence = paper_best(swept(report["arms"]), report, "perplexity", "perplexity", False, "perplexity")
        assert expected in sentence, name
