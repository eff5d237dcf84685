"""The report leads with the answer: title, verdict, main plot, tables, then the protocol (folded in HTML); the
verdict names the arm the fixture's numbers make best. Fixtures: test_report.make_run (synthetic run folders)."""

from __future__ import annotations

import json
import re
import statistics

import pytest

import test_report as fixture
from slimlm.experiments import render, webpage
from slimlm.experiments import report as rep
from slimlm.experiments.layout import experiment_file, result_file
from slimlm.experiments.rerender import rerender
from test_report import ARMS, build, make_run


def with_control_at(run, tau: float):
    """The temperature sweep's own τ (--temperature): the arm every other is paired with (paired.py)."""
    spec = json.loads(experiment_file(run).read_text())
    spec["protocol"]["base_settings"]["temperature"] = tau
    experiment_file(run).write_text(json.dumps(spec))
    return run


def best_by_perplexity(kind: str) -> str:
    """The arm with the lowest perplexity in the fixture's own table (seed shifts are the same for every arm)."""
    return ARMS[kind][min(range(len(ARMS[kind])), key=fixture.PPL.__getitem__)][0]


def in_order(text: str, *marks: str) -> None:
    where = [text.index(m) for m in marks]
    assert where == sorted(where), list(zip(marks, where))


@pytest.mark.parametrize("kind", ["temperature", "finetune", "pipeline"])
def test_markdown_and_html_open_with_the_verdict_and_end_with_the_protocol(tmp_path, kind):
    report = build(make_run(tmp_path / "run", kind))
    report["plots"] = ["plots/main.png", "plots/other.png"]  # paths only: rendering does not open them
    md, page = render.render_markdown(report), webpage.render_html(report)
    in_order(md, "# slimlm report:", "**Verdict.**", "![main](plots/main.png)", "## Results", "| arm | setting |")
    in_order(md, "| arm | setting |", "## Paper vs slimlm", "![other](plots/other.png)", "## Protocol", "- teacher:")
    in_order(md, "## Protocol", "### Command", "slimlm experiment", "### Arms")
    assert md.count("## Protocol") == 1 and md.count("![main]") == 1
    in_order(page, "<h1>", 'class="verdict"', "Verdict.", 'src="plots/main.png"', "<table>", "<details>")
    in_order(page, "<details>", "<summary>Protocol</summary>", "slimlm experiment", "teacher: <code>", "</details>")
    assert "<h2>Protocol</h2>" not in page and page.count("<details>") == 1


def test_html_tables_scroll_and_images_fit_a_phone(tmp_path):
    report = build(make_run(tmp_path / "run", "finetune"))
    report["plots"] = ["plots/main.png"]
    page = webpage.render_html(report)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count("<table>") == page.count('<div class="scroll">\n<table>') > 3
    assert ".scroll{overflow-x:auto" in page and "img{max-width:100%" in page
    assert '<a href="plots/main.png"><img alt="main" src="plots/main.png" /></a>' in page
    assert "<ul>\n<li>split rule:" in page  # report.md's two-space indents nest in HTML too


def test_verdict_names_the_best_arm_and_its_paired_difference_with_the_control(tmp_path):
    run = with_control_at(make_run(tmp_path / "run", "temperature"), 1.0)
    report = build(run)
    best = best_by_perplexity("temperature")
    assert best == "t2"
    first = report["verdict"][0]
    assert first.startswith(f"Best on test perplexity: **{best}** (τ=2), ")
    i, c = [n for n, *_ in ARMS["temperature"]].index(best), 1  # t1, the control, is the arm at τ=1
    diffs = [(fixture.PPL[i] + 0.7 * s) / (fixture.PPL[c] + 0.7 * s) - 1 for s in (0, 1, 2)]
    want = f"{100 * statistics.mean(diffs):+.1f} ± {100 * statistics.stdev(diffs):.1f}% (−−−, n=3)"
    assert f"against the control t1 (τ=1), paired by seed: {want}, every seed lower: beyond the seed spread" in first
    assert report["verdict"][1].startswith("Against the paper: Best by perplexity here: τ=2")
    assert report["verdict"][1].endswith("Same setting: agree.")
    md = render.render_markdown(report)
    in_order(md, f"**{best}**", "| arm | setting |", "## Protocol")


def test_verdict_follows_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(fixture, "PPL", [95.0, 90.0, 85.0, 80.0, 60.0])
    report = build(with_control_at(make_run(tmp_path / "a", "temperature"), 2.0))
    assert best_by_perplexity("temperature") == "t10"
    assert report["verdict"][0].startswith("Best on test perplexity: **t10** (τ=10)")
    assert "Differ: ours is at an end of our range" in report["verdict"][1]
    # seeds that disagree: one seed of t2 far worse than the control t1, the mean still best
    monkeypatch.undo()
    run = with_control_at(make_run(tmp_path / "b", "temperature"), 1.0)
    record = json.loads(result_file(run, "t2", 1).read_text())
    record["metrics"]["perplexity"] = 80.0
    result_file(run, "t2", 1).write_text(json.dumps(record))
    first = build(run)["verdict"][0]
    assert "**t2**" in first and "(−+−, n=3)" in first and "the seeds disagree in sign: within the seed spread" in first


def test_a_partial_run_is_ranked_on_the_seeds_every_arm_has(tmp_path):
    """Mid-run, arms have different seeds: t2 leads by its mean over three seeds only because its seeds 1 and 2
    are low, while on seed 0, the one every arm has, it is the worst; the verdict must rank on seed 0."""
    others = [n for n, *_ in ARMS["temperature"] if n != "t2"]
    run = make_run(tmp_path / "run", "temperature", skip={(n, s) for n in others for s in (1, 2)})
    for seed, ppl in ((0, 100.0), (1, 1.0), (2, 1.0)):
        record = json.loads(result_file(run, "t2", seed).read_text())
        record["metrics"]["perplexity"] = ppl
        result_file(run, "t2", seed).write_text(json.dumps(record))
    report = build(run)
    t2 = next(a for a in report["arms"] if a["name"] == "t2")["metrics"]["perplexity"]
    assert t2["mean"] == 34.0  # the best mean of all, on seeds no other arm has
    first = report["verdict"][0]
    assert first.startswith("Best on test perplexity (ranked on seed 0, the one every arm has): **t1** (τ=1), ")
    assert "Best by perplexity here: τ=1" in report["verdict"][1]
    finished = build(make_run(tmp_path / "all", "temperature"))["verdict"][0]
    assert "ranked on" not in finished  # every arm has every seed: nothing to say


def test_verdict_when_the_control_wins_when_there_is_none_and_for_a_pipeline(tmp_path):
    ft = build(make_run(tmp_path / "ft", "finetune"))["verdict"]
    assert ft[0].startswith("Best on test perplexity: **full**, ") and "it is the study's control" in ft[0]
    assert "the runner-up lora against it, paired by seed: +" in ft[0] and "every seed higher" in ft[0]
    assert ft[1].startswith("Against the paper: Perplexity: LoRA") and "agrees with the paper" in ft[1]
    none = build(make_run(tmp_path / "t", "temperature"))["verdict"][0]  # no --temperature: no control
    assert "**t2**" in none and "the runner-up t1 has 72.70 ± 0.70: beyond the seed spread" in none
    one = build(make_run(tmp_path / "one", "temperature", seeds=(0,)))["verdict"][0]
    assert "one seed per arm, so the seed spread is unknown" in one
    pipe = build(make_run(tmp_path / "p", "pipeline"))["verdict"]
    assert pipe[0].startswith("The compressed model (last stage, quantize): 140.0 ± 0.0 MB") and "smaller" in pipe[0]
    assert pipe[1].startswith("On the size/perplexity frontier")
    empty = make_run(tmp_path / "e", "finetune", skip={(n, s) for n, *_ in ARMS["finetune"] for s in (0, 1, 2)})
    assert build(empty)["verdict"] == ["No arm has finished results yet: no verdict."]


def test_a_report_json_alone_renders_again_with_the_verdict(tmp_path):
    """A committed report has no run folder: rerender.py rebuilds the pages from report.json, an older one too."""
    run = with_control_at(make_run(tmp_path / "run", "temperature"), 1.0)
    written = rep.write_report(run)
    old = json.loads((run / "report.json").read_text())
    for key in ("verdict", "paired", "teacher_ratios"):
        del old[key]
    for arm in old["arms"]:
        del arm["decode_rough_seeds"]  # written by later versions only
    (run / "report.json").write_text(json.dumps(old))
    (run / "report.md").unlink()
    for png in (run / "plots").iterdir():
        png.unlink()  # a committed report's plots are drawn again from report.json alone
    again = rerender(run)
    assert again["verdict"] == written["verdict"] and again["paired"] == json.loads(json.dumps(written["paired"]))
    md = (run / "report.md").read_text()
    assert md.split("\n")[2] == "**Verdict.** " + " ".join(written["verdict"])
    assert "### Paired differences against τ=1" in md and "<details>" in (run / "report.html").read_text()
    assert json.loads((run / "report.json").read_text())["verdict"] == written["verdict"]
    assert not [p for p in run.iterdir() if p.name.startswith(".report-")]
    assert re.search(r"!\[temperature\]\(plots/temperature\.png\)", md)
    assert (run / "plots" / "temperature.png").stat().st_size > 10_000 and again["plots"] == written["plots"]


def test_a_sweep_on_the_cache_weighs_its_lead_against_the_cache_s_own_effect():
    """With an online-teacher control, the verdict sets the best arm's paired lead beside what the cache alone
    does at the control's τ: the committed sampled-cache Table 1, whose τ = 1 leads by less than that."""
    from pathlib import Path

    from slimlm.experiments.verdict import verdict

    path = Path(__file__).resolve().parents[1] / "docs" / "results" / "temperature-sampled" / "report.json"
    report = json.loads(path.read_text())
    lead, cache = (report["paired"]["arms"][n]["perplexity"] for n in ("t1", "t2-online"))
    assert abs(lead["mean"]) < abs(cache["mean"])
    said = verdict(report)[1]
    assert said.startswith("The teacher cache's own effect at τ=2: the online control t2-online against the cached t2")
    assert f"{100 * cache['mean']:+.1f} ± {100 * cache['std']:.1f}% (−−−, n=3)" in said and said.endswith(
        "so it may be the cache's noise: inconclusive."
    )
    cache["mean"] = lead["mean"] / 2  # a cache that costs half the lead
    assert "the lead is larger than the cache's own effect." in verdict(report)[1]
    del report["paired"]["arms"]["t2-online"]
    assert not verdict(report)[1].startswith("The teacher cache")
    report = json.loads(path.read_text())
    for arm in report["arms"]:  # the cached control itself best: no lead to weigh
        if arm["name"] not in ("t2", "t2-online"):
            arm["metrics"]["perplexity"]["mean"] = 1e3
    assert verdict(report)[0].startswith("Best point of the sweep on test perplexity: **t2**")
    assert not any(line.startswith("The teacher cache") for line in verdict(report))


def test_a_report_json_too_old_to_draw_from_keeps_its_plots(tmp_path, capsys):
    run = with_control_at(make_run(tmp_path / "run", "temperature"), 1.0)
    rep.write_report(run)
    old = json.loads((run / "report.json").read_text())
    for arm in old["arms"]:
        for metric in arm["metrics"].values():
            del metric["values"]  # each seed's dot on the plots; the pages print means and spreads
    (run / "report.json").write_text(json.dumps(old))
    before = (run / "plots" / "temperature.png").read_bytes()
    rerender(run)
    assert (run / "plots" / "temperature.png").read_bytes() == before and (run / "report.md").is_file()
    assert "plots kept as they were" in capsys.readouterr().err
