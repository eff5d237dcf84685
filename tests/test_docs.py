"""What users read speaks of the software and matches its results files: no paths of the machine that made a
report, and the numbers the docs quote are the numbers in the results they cite."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from slimlm.experiments import stats

ROOT = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|root|tmp|home)/")


def _published() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "bench" / "README.md"]
    files += sorted(
        p for p in (ROOT / "docs").rglob("*") if p.is_file() and p.suffix in {".md", ".html", ".json", ".txt"}
    )
    return files


def _lines_matching(pattern: re.Pattern) -> list[str]:
    """FILE:LINE: text for every published line that `pattern` finds something in."""
    found = []
    for path in _published():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    return found


def test_no_absolute_machine_paths_in_published_files():
    found = _lines_matching(MACHINE_PATH)
    assert not found, "absolute paths of a machine (write them relative to the repo or the cache):\n" + "\n".join(found)


def _report(name: str) -> dict:
    return json.loads((ROOT / "docs" / "results" / name / "report.json").read_text(encoding="utf-8"))


def _arm(report: dict, name: str) -> dict:
    return next(a for a in report["arms"] if a["name"] == name)


def test_pipeline_numbers_in_experiments_md_are_the_reports():
    report = _report("pipeline")
    text = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")
    ppl = {a["name"]: a["metrics"]["perplexity"]["mean"] for a in report["arms"]}
    teacher = report["references"]["teacher"]["metrics"]
    decode = _arm(report, "5-quantize")["metrics"]["decode_tokens_per_s"]["mean"]
    quoted = (
        f"test perplexity {teacher['perplexity']:.2f} → {ppl['5-quantize']:.2f}",
        f"distillation {ppl['1-student']:.1f} → {ppl['2-distill']:.2f}",
        f"LoRA {ppl['2-distill']:.2f} → {ppl['3-finetune']:.2f}",
        f"pruning {ppl['3-finetune']:.2f} → {ppl['4-prune']:.2f}",
        f"8-bit quantization {ppl['4-prune']:.2f} → {ppl['5-quantize']:.2f}",
        f"decode {teacher['decode_tokens_per_s']:.1f} → {decode:.1f}",
    )
    flat = " ".join(text.split())
    for phrase in quoted:
        assert phrase in flat, phrase
    assert report["protocol"]["teacher_cache"]["stages"] == "2-distill"


def test_steps_quoted_in_study_readmes_are_the_reports():
    for name in ("student-shape", "temperature-sampled"):
        steps = {a["training"]["steps"]["mean"] for a in _report(name)["arms"] if "steps" in a.get("training", {})}
        (value,) = steps
        text = (ROOT / "docs" / "results" / name / "README.md").read_text(encoding="utf-8")
        assert f"({value:.0f} steps of 4×256)" in text, name
    online = _report("temperature-online")
    (steps,) = {a["training"]["steps"]["mean"] for a in online["arms"]}
    (tokens,) = {a["training"]["tokens"]["mean"] for a in online["arms"]}
    text = " ".join(
        (ROOT / "docs" / "results" / "temperature-online" / "README.md").read_text(encoding="utf-8").split()
    )
    assert f"{steps:.0f} steps of 4 × 256 tokens ({tokens:,.0f} tokens)" in text


PROCESS_WORDS = re.compile(r"\bissues? #?\d+|\(issue\b|\bsessions?(?:'s)?\b|\bthis machine\b|\bthe brief\b", re.I)


def test_docs_speak_of_the_software_not_of_how_it_is_made():
    """No issue numbers, sessions or "this machine" in what users read: a CPU is named by its kind."""
    found = _lines_matching(PROCESS_WORDS)
    assert not found, "words about how the project is run, which readers cannot see:\n" + "\n".join(found)


def test_no_current_page_cites_a_superseded_result():
    """Results made on a teacher signal slimlm no longer uses live under docs/results/superseded/, and only
    that folder speaks of them: a current page that linked one would pass its numbers off as current."""
    superseded = ROOT / "docs" / "results" / "superseded"
    names = [p.name for p in superseded.iterdir() if p.is_dir()]
    assert names, "the superseded folder should hold the withdrawn studies"
    cites = re.compile("|".join(re.escape(n) for n in names))
    found = [line for line in _lines_matching(cites) if not line.startswith("docs/results/superseded/")]
    assert not found, "current pages citing superseded results:\n" + "\n".join(found)


def test_on_policy_step_cost_page_quotes_its_results():
    folder = ROOT / "docs" / "results" / "on-policy"
    result = json.loads((folder / "step-cost.json").read_text(encoding="utf-8"))
    text = (folder / "README.md").read_text(encoding="utf-8")
    for arm, row in result["arms"].items():
        line = f"| {arm} | {row['s_per_step']:.2f} | {row['ratio_to_off_policy']:.2f} | {row['sampling_share']:.2f} |"
        assert line in text, line
    flat = " ".join(text.split())
    for arm in ("lambda 1", "lambda 1 reuse 4"):
        assert f"{result['arms'][arm]['ratio_to_off_policy']:.2f}×" in flat
    assert all(f"{r['lambda 1 sampled-reverse']['s_per_step']:.2f} s" in flat for r in result["rounds"])


def test_decode_bench_page_quotes_its_results():
    folder = ROOT / "docs" / "results" / "on-policy"
    paths = json.loads((folder / "decode.json").read_text(encoding="utf-8"))["paths"]
    flat = " ".join((folder / "README.md").read_text(encoding="utf-8").split())
    for row in paths.values():
        assert f"| {row['rollout_tokens_per_s']:.1f} ({row['rollout_min']:.1f}–{row['rollout_max']:.1f}) |" in flat
    assert f"{paths['static']['ratio_to_generate']:.2f}× as many tokens a second" in flat
    assert f"at {paths['dynamic']['ratio_to_generate']:.2f}×" in flat


def test_readme_is_a_landing_page():
    """The README stays short: what slimlm is, the two commands, the demo's result, a quick start, a map of
    commands and links. Reference material lives in docs/ (a sentence over ~40 words wants a list or table)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith(("|", "#", "![")))
    sentences = re.split(r"(?<=[.:;!?])\s+(?=[A-Z0-9*`(\[-])", " ".join(prose.split()))
    long = [s for s in sentences if len(s.split()) > 42]
    assert not long, "sentences over ~40 words:\n" + "\n".join(long)


def _demo_results() -> dict:
    return json.loads((ROOT / "docs" / "results" / "demo" / "results.json").read_text(encoding="utf-8"))


def test_demo_numbers_are_its_results_file():
    """The demo's table in the README and docs/demo.md, and each CPU kind's row, quote the demo's results file."""
    demo = _demo_results()
    models = demo["table"]["models"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    page = (ROOT / "docs" / "demo.md").read_text(encoding="utf-8")
    for key in ("size_mb", "perplexity", "general_perplexity", "decode_tokens_per_s", "memory_mib"):
        row = next(line for line in readme.splitlines() if line.startswith("|") and str(models["teacher"][key]) in line)
        cells = [c.strip(" *") for c in row.split("|")[2:6]]
        quoted = [c.split(" (")[0].strip("*") for c in cells]
        expected = [f"{models[m][key]}" for m in ("teacher", "teacher 8-bit", "teacher 4-bit", "student")]
        assert [float(q) for q in quoted] == [float(e) for e in expected], key
        assert all(e in page for e in expected), key
    for run in demo["cpus"]:
        trained = f"{run['steps']} ({run['tokens']:,})"
        line = next((li for li in page.splitlines() if li.startswith("|") and trained in li), "")
        assert f"{run['perplexity']:.2f}" in line, run["cpu"]
        assert run["training"] in line and f"{run['accuracy']:.3f}" in line, run["cpu"]


def _spread(metric: dict, decimals: int, scale: float = 1.0) -> str:
    return f"{metric['mean'] * scale:.{decimals}f} ± {metric['std'] * scale:.{decimals}f}"


def _table_row(text: str, first_cell: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip().strip("*").strip() for cell in row.split("|")[1:-1]]


def test_study_tables_in_experiments_md_are_the_reports():
    """The temperature and student-shape tables on the results page quote each arm's mean ± std from report.json."""
    text = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")
    temperature = _report("temperature-sampled")
    for arm in temperature["arms"]:
        m = arm["metrics"]
        cells = _table_row(text, arm["label"])
        expected = [
            _spread(m["perplexity"], 2),
            _spread(m["accuracy"], 2, 100),
            _spread(m["cloze_exact_match"], 3),
            _spread(m["bits_per_byte"], 3),
        ]
        assert cells[2:6] == expected, arm["name"]
    shape = _report("student-shape")
    for arm in shape["arms"]:
        m = arm["metrics"]
        cells = _table_row(text, arm["name"])
        expected = [_spread(m["perplexity"], 2), _spread(m["accuracy"], 2, 100), _spread(m["cloze_exact_match"], 3)]
        assert cells[2:5] == expected, arm["name"]


def test_code_and_cli_output_speak_of_the_software_not_of_how_it_is_made():
    """Comments, docstrings, help and messages (src/, bench/, the Makefile) follow the docs' rule too."""
    files = [ROOT / "Makefile", *sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "bench").rglob("*.py"))]
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PROCESS_WORDS.search(line)
    ]
    assert not found, "words about how the project is run:\n" + "\n".join(found)


def _percent(difference: dict) -> str:
    """A paired difference as the docs write it: −2.2 ± 1.1% (a real minus sign)."""
    sign = "−" if difference["mean"] < 0 else "+"
    return f"{sign}{abs(100 * difference['mean']):.1f} ± {100 * difference['std']:.1f}%"


def test_paired_differences_quoted_for_table_1_are_the_reports():
    """The results page quotes the temperature study's paired differences by seed as report.json has them."""
    paired = _report("temperature-sampled")["paired"]["arms"]
    flat = " ".join((ROOT / "docs" / "experiments.md").read_text(encoding="utf-8").split())
    for arm, label in (("t1", "τ = 1's perplexity is"), ("t0.5", "τ = 0.5"), ("t5", "τ = 5"), ("t10", "τ = 10")):
        assert f"{label} {_percent(paired[arm]['perplexity'])}" in flat, arm
    assert f"accuracy {_percent(paired['t1']['accuracy'])}" in flat
    assert f"τ = 2 is {_percent(paired['t2-online']['perplexity'])}" in flat


def test_online_table_1_page_quotes_its_report():
    """Table 1's online high end: each arm's perplexity, accuracy and general-text perplexity, and its paired
    difference against τ = 2, as report.json has them."""
    report = _report("temperature-online")
    text = (ROOT / "docs" / "results" / "temperature-online" / "README.md").read_text(encoding="utf-8")
    paired = report["paired"]["arms"]
    for arm in report["arms"]:
        m = arm["metrics"]
        cells = _table_row(text, f"τ = {arm['value']:g}")
        assert cells[1] == _spread(m["perplexity"], 2) and cells[3] == _spread(m["accuracy"], 2, 100), arm["name"]
        assert cells[4] == _spread(m["general_perplexity"], 2), arm["name"]
        if arm["name"] in paired:
            d = paired[arm["name"]]["perplexity"]
            assert cells[2] == f"{_percent(d)} ({d['signs']})", arm["name"]


def test_verdict_table_quotes_the_reports():
    """The verdicts at the top of the results page quote Table 1's reports: means ± std and paired differences."""
    text = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")
    rows = [line for line in text.split("## The studies")[0].splitlines() if line.startswith("| Table 1")]
    low, high = rows
    sampled, online = _report("temperature-sampled"), _report("temperature-online")
    arms = {a["name"]: a["metrics"]["perplexity"] for a in sampled["arms"]}
    paired = sampled["paired"]["arms"]
    for phrase in (
        f"τ = 1 {_spread(arms['t1'], 2)}",
        f"τ = 2 {_spread(arms['t2'], 2)}",
        f"τ = 1 against τ = 2 {_percent(paired['t1']['perplexity'])} ({paired['t1']['perplexity']['signs']})",
        f"τ = 0.5 {_percent(paired['t0.5']['perplexity'])} ({paired['t0.5']['perplexity']['signs']})",
        f"({_percent(paired['t2-online']['perplexity'])}, online against cached)",
    ):
        assert phrase in low, phrase
    control = next(a for a in online["arms"] if a["name"] == "t2")["metrics"]["perplexity"]
    assert f"τ = 2 {_spread(control, 2)}" in high
    for arm, label in (("t5", "τ = 5"), ("t10", "τ = 10")):
        d = online["paired"]["arms"][arm]["perplexity"]
        assert f"{label} {_percent(d)} ({d['signs']})" in high, arm


def test_readme_summary_quotes_table_1_online():
    online = _report("temperature-online")["paired"]["arms"]
    row = next(line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines() if "Table 1" in line)
    costs = [f"{100 * online[arm]['perplexity']['mean']:+.1f}%" for arm in ("t5", "t10")]
    assert f"costs {costs[0]} and {costs[1]} against τ = 2" in row
    assert all(online[arm]["perplexity"]["signs"] == "+++" for arm in ("t5", "t10")) and "every seed" in row


def test_figure_3_page_and_verdict_quote_the_report():
    """The fine-tuning study's page, its verdict row and the README quote report.json and decode-speed.json."""
    report = _report("finetune")
    arms = {a["name"]: a["metrics"] for a in report["arms"]}
    lora = report["paired"]["arms"]["lora"]["perplexity"]
    rr = report["round_robin"]["models"]
    page = (ROOT / "docs" / "results" / "finetune" / "README.md").read_text(encoding="utf-8")
    verdicts = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8").split("## The studies")[0]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("lora", "full"):
        cells = _table_row(page, "LoRA" if name == "lora" else "full")
        assert cells[2] == _spread(arms[name]["perplexity"], 2) and cells[-1] == f"{rr[name]['decode_ratio']:.2f}"
        assert f"{_spread(arms[name]['perplexity'], 2)}" in verdicts, name
    assert f"{_percent(lora)} ({lora['signs']})" in page and f"{_percent(lora)} ({lora['signs']})" in verdicts
    assert f"LoRA {_percent(lora).split(' ')[0]}%" in readme
    assert f"{rr['lora']['decode_ratio']:.2f}× against {rr['full']['decode_ratio']:.2f}×" in readme


def _quoted(metric: dict, decimals: int, scale: float = 1.0) -> str:
    """mean ± std, or the mean alone where one seed has finished (no spread yet)."""
    if metric.get("std") is None:
        return f"{metric['mean'] * scale:.{decimals}f}"
    return _spread(metric, decimals, scale)


def _paired(d: dict) -> str:
    sign = "−" if d["mean"] < 0 else "+"
    spread = f" ± {100 * d['std']:.1f}" if d.get("std") is not None else ""
    return f"{sign}{abs(100 * d['mean']):.1f}{spread}% ({d['signs']})"


def test_figure_2_page_quotes_the_report():
    """The feature-layer study's page: each finished arm's seeds, perplexity, paired difference against the
    logit-only control, accuracy and general-text perplexity, and the picked β, as report.json has them."""
    report = _report("feature-layer")
    page = (ROOT / "docs" / "results" / "feature-layer" / "README.md").read_text(encoding="utf-8")
    paired = report["paired"]["arms"]
    finished = [arm for arm in report["arms"] if arm["metrics"]]
    assert len(finished) >= 7
    for arm in finished:
        m, cells = arm["metrics"], _table_row(page, arm["label"])
        assert cells[2] == str(m["perplexity"]["n"]) and cells[3] == _quoted(m["perplexity"], 2), arm["name"]
        assert cells[5] == _quoted(m["accuracy"], 2, 100) and cells[6] == _quoted(m["general_perplexity"], 2)
        if arm["name"] in paired:
            assert cells[4] == _paired(paired[arm["name"]]["perplexity"]), arm["name"]
    grid = report["validation_grids"]["weight-grid"]
    scores = ", ".join(f"β = {b} {p:.2f}" for b, p in grid["scores"]["layer15"].items())
    assert scores in " ".join(page.split()) and f"picked β = {grid['picked']['layer15']:g}" in page
    verdicts = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8").split("## The studies")[0]
    row = next(line for line in verdicts.splitlines() if line.startswith("| Figure 2"))
    seeds = min(arm["metrics"]["perplexity"]["n"] for arm in finished)
    middle = paired["layer15"]["perplexity"]
    assert f"{seeds} of 3" in row and f"({_paired(middle).split(' (')[0]}" in row
    worst = max(abs(paired[a]["perplexity"]["mean"]) for a in ("layer2", "layer8", "layer15", "layer22", "layer30"))
    assert (
        f"within ±{100 * worst:.1f}% of logit-only" in row
        and f"β picked on validation is {grid['picked']['layer15']:g}" in row
    )

    # the middle layer against every other arm, paired by seed (the report's own pairing, stats.paired)
    mid = _arm(report, "layer15")["metrics"]["perplexity"]
    middle_table = page[page.index("| layer 15 against |") :]
    against = {}
    for arm in finished:
        if arm["name"] != "layer15":
            d = stats.paired(mid, arm["metrics"]["perplexity"])
            against[arm["name"]] = d["values"]
            assert _table_row(middle_table, arm["label"])[1:] == [str(d["n"]), _paired(d)], arm["name"]
    # the verdict word follows the page's own rule
    layers = ("layer2", "layer8", "layer22", "layer30")
    if all(d < 0 for n in layers for d in against[n]):
        word = "reproduced"
    elif all(d > 0 for n in ("logits", "layer2", "layer30") for d in against[n]):
        word = "not reproduced"
    else:
        word = "inconclusive"
    assert f"**{word}**" in row and page.startswith(f"# Figure 2 rerun: which teacher layer to distil ({seeds} seeds)")
    assert page.split("\n\n")[1].startswith(f"**{word[0].upper()}{word[1:]}")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    study_row = next(line for line in readme.splitlines() if line.startswith("| Feature layer (Figure 2)"))
    assert f"{word}:" in study_row and f"({_paired(middle).split(' ±')[0]}% against logit-only KD)" in study_row
    guide = " ".join((ROOT / "docs" / "distillation.md").read_text(encoding="utf-8").split())
    attention = paired["attention14"]["perplexity"]["mean"]
    assert f"at most {100 * worst:.1f}% against logit-only KD" in guide
    assert f"+{100 * attention:.1f}% behind logit-only KD" in guide
    # the page's prose: the worst feature layer, the two ends, the attention arm against logit-only and the middle
    prose = " ".join(page.split())
    ends = {n: _paired(paired[n]["perplexity"]).replace("% (", "%, ").rstrip(")") for n in ("layer30", "layer2")}
    assert prose.count(f"±{100 * worst:.1f}% of logit-only KD") == 2
    assert f"every seed ({ends['layer30']})" in prose and f"two of three ({ends['layer2']})" in prose
    assert f"Its {_paired(paired['attention14']['perplexity'])} against logit-only KD" in prose
    assert f"the worst arm, {-100 * statistics.mean(against['attention14']):.1f}% behind even the middle" in prose
