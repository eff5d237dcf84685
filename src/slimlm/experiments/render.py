"""The report as markdown, answer first: the title, the verdict (verdict.py), the main plot, the results
tables, references, the paper comparison, the other plots and wall time, and the protocol last (the HTML page
folds it away: webpage.py). Rendered from the dict that report.py builds and report.json holds, so every
number shown is one that report.json has.
"""

from __future__ import annotations

from pathlib import Path

from slimlm.experiments.columns import RESULT_COLUMNS, TRAINING_COLUMNS, cell, display, markdown_table, paper_value
from slimlm.experiments.frontier import frontier_section
from slimlm.experiments.paired import paired_lines
from slimlm.experiments.protocol_text import protocol_section
from slimlm.experiments.round_robin import round_robin_lines
from slimlm.experiments.stats import SPREAD_NOTE, STD_NOTE
from slimlm.experiments.validation_grid import grid_lines
from slimlm.experiments.verdict import verdict

_table = markdown_table


def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.0f} s" if s < 120 else f"{s:.0f} s ({s / 60:.1f} min)" if s < 7200 else f"{s:.0f} s ({s / 3600:.2f} h)"


def results_section(report) -> list[str]:
    arms = report["arms"]
    cols = [c for c in RESULT_COLUMNS if any(c.key in a["metrics"] for a in arms)]
    lines = ["## Results", "", f"Mean ± std over the seeds found (n); {STD_NOTE}.", ""]
    rows = [
        [a["name"], a["label"], str(len(a["seeds"]))] + [cell(a["metrics"].get(c.key), c.key) for c in cols]
        for a in arms
    ]
    lines += _table(["arm", "setting", "n"] + [c.label for c in cols], rows)
    lines += _missing_lines(report["missing"])
    lines += paired_lines(report.get("paired"))
    lines += grid_lines(report.get("validation_grids"))
    lines += decode_note_lines(report) + round_robin_lines(report.get("round_robin"))
    lines += kept_section(report)
    tcols = [c for c in TRAINING_COLUMNS if any(c.key in a["training"] for a in arms)]
    if tcols:
        lines += ["### Training cost", ""]
        lines += _table(
            ["arm", "n"] + [c.label for c in tcols],
            [[a["name"], str(len(a["seeds"]))] + [cell(a["training"].get(c.key), c.key) for c in tcols] for a in arms],
        )
    return lines


def decode_note_lines(report) -> list[str]:
    """Speeds to read with care, said once: decode rates that include the prefill (too noisy a machine to
    separate them), and GGUF models measured with llama.cpp's weight repacking off (it crashed with it)."""
    rough = [
        f"{a['name']} (seed {', '.join(map(str, a['decode_rough_seeds']))})"
        for a in report["arms"]
        if a.get("decode_rough_seeds")  # absent from an older report.json
    ]
    rough += [f"reference {n}" for n, r in report["references"].items() if r.get("decode_rough")]
    unpacked = [n for n, r in report["references"].items() if r.get("unrepacked")]
    notes = [
        f"Decode tok/s of {'; '.join(rough)}: prefill not separable from decoding on this run, so the rate "
        "includes the prefill (rerun on an idle machine for a clean number)."
    ] * bool(rough)
    notes += [
        f"{', '.join(unpacked)}: measured with llama.cpp's weight repacking off (llama.cpp crashed with "
        "it: docs/compression.md), so their speeds may be below llama.cpp's elsewhere."
    ] * bool(unpacked)
    return [line for note in notes for line in (note, "")]


def kept_section(report) -> list[str]:
    """Arm ÷ teacher, in domain and on general text, so a gain on the training text that costs the rest shows."""
    ratios = report.get("teacher_ratios") or {}
    keys = [
        k
        for k in ("perplexity", "accuracy", "general_perplexity", "general_accuracy")
        if any(k in r for r in ratios.values())
    ]
    if not keys:
        return []
    labels = {
        "perplexity": "perplexity ÷ teacher",
        "accuracy": "accuracy ÷ teacher",
        "general_perplexity": "general ppl ÷ teacher",
        "general_accuracy": "general acc. ÷ teacher",
    }
    rows = [[name] + [f"{r[k]:.2f}×" if k in r else "–" for k in keys] for name, r in ratios.items()]
    general = (report["protocol"].get("eval") or {}).get("general_data")
    return [
        "### Kept of the teacher",
        "",
        "Mean over seeds ÷ the teacher's, on the in-domain test split and on general text"
        + (f" (`{general}`)" if general else "")
        + ": perplexity above 1× and accuracy below 1× are what the student lost.",
        "",
    ] + _table(["arm"] + [labels[k] for k in keys], rows)


def _missing_lines(missing: dict) -> list[str]:
    """Unfinished arms and seeds, listed so an interrupted run never passes for a complete one."""
    if not (missing["arms"] or missing["seeds"]):
        return []
    return (
        ["**Missing results** (interrupted or unfinished run; rerun the experiment to fill them in):", ""]
        + [f"- arm `{n}`: no results at all" for n in missing["arms"]]
        + [
            f"- arm `{n}`: seed(s) {', '.join(map(str, s))} missing"
            for n, s in missing["seeds"].items()
            if n not in missing["arms"]
        ]
        + [""]
    )


def references_section(report) -> list[str]:
    refs = report["references"]
    if not refs:
        return ["## References", "", "No reference models were measured.", ""]
    cols = [c for c in RESULT_COLUMNS if any(c.key in r["metrics"] for r in refs.values())]
    rows = [
        [n, r.get("model_dir") or "–"]
        + [display(r["metrics"][c.key], c.key) if c.key in r["metrics"] else "–" for c in cols]
        for n, r in refs.items()
    ]
    return ["## References", "", "Models measured once, with the same protocol, for comparison.", ""] + _table(
        ["model", "model dir"] + [c.label for c in cols], rows
    )


def timing_section(report) -> list[str]:
    t = report["timing"]
    rows = [
        [
            a["name"],
            str(len(a["seeds"])),
            _seconds(a["total_wall_time_s"]),
            _seconds(a["wall_time_s"]["mean"] if a["wall_time_s"] else None),
        ]
        for a in report["arms"]
    ]
    rows += [[f"reference: {n}", "1", _seconds(s), _seconds(s)] for n, s in t["references_s"].items()]
    rows.append(["**total**", "", f"**{_seconds(t['total_s'])}**", ""])
    return [
        "## Wall time",
        "",
        "Recorded wall time of each finished (arm, seed), training and evaluation included.",
        "",
    ] + _table(["arm", "seeds", "total", "mean per seed"], rows)


PLOT_NOTE = "Error bars: ±1 std over seeds; faint dots: individual seeds."


def verdict_lines(report) -> list[str]:
    """The answer in a sentence or two; an older report.json without one gets it computed from its numbers."""
    return ["**Verdict.** " + " ".join(report.get("verdict") or verdict(report)), ""]


def main_plot_lines(report) -> list[str]:
    """The study's principal figure, right under the verdict: draw_plots lists it first."""
    if not report["plots"]:
        return []
    path = report["plots"][0]
    return [f"![{Path(path).stem}]({path})", "", f"*{PLOT_NOTE}*", ""]


def plots_section(report) -> list[str]:
    """The figures after the principal one, if any."""
    if len(report["plots"]) < 2:
        return []
    lines = ["## More plots", "", PLOT_NOTE, ""]
    for path in report["plots"][1:]:
        lines += [f"![{Path(path).stem}]({path})", ""]
    return lines


def paper_section(report) -> list[str]:
    comp = report["paper"]
    if comp.get("counterpart") is False:  # a study the paper does not have: say so, compare nothing
        lines = ["## Paper vs slimlm", "", f"**No paper counterpart.** {comp['caveat']}", ""]
        return (
            lines
            + ["### What this run shows", "", f"({SPREAD_NOTE}.)", ""]
            + [f"- {s}" for s in comp["sentences"]]
            + [""]
        )
    lines = ["## Paper vs slimlm", "", f"**Read this first.** {comp['caveat']}", ""]
    if comp.get("source"):
        lines += [
            f"Paper source: {comp['source']}." + (" These values are approximate." if comp.get("approximate") else ""),
            "",
        ]
    lines += [f"- paper note: {n}" for n in comp.get("notes", [])]
    lines += [f"- paper claim ({k}): {v}" for k, v in comp.get("claims", {}).items()]
    lines.append("")
    if comp["rows"]:
        lines += _paper_table(comp["rows"], report["kind"])
    lines += ["### Where we agree and where we differ", "", f"({SPREAD_NOTE}.)", ""]
    lines += [f"- {s}" for s in comp["sentences"]] + [""]
    return lines


def _paper_table(rows: list[dict], kind: str) -> list[str]:
    """The paper's numbers and ours per setting; a cloze column only when some arm measured cloze."""
    has_cloze = any(r["ours"] and r["ours"].get("cloze_exact_match") for r in rows)
    header = (
        ["setting", "arm", "paper acc. (%)", "ours next-token acc. (%)"]
        + (["ours cloze EM"] if has_cloze else [])
        + ["paper ppl", "ours ppl", "paper tok/s", "ours tok/s"]
    )
    return _table(header, [_paper_row(r, kind, has_cloze) for r in rows])


def _paper_row(r: dict, kind: str, has_cloze: bool) -> list[str]:
    p, o, x = r["paper"] or {}, r["ours"] or {}, r["x"]
    setting = f"τ={x:g}" if kind == "temperature" else f"depth {x:.2f}" if kind == "feature-layer" else str(x)
    if r.get("control"):
        setting += f" ({r['control']}, control: not matched with the paper)"
    if kind == "feature-layer" and p:
        setting += f" (paper layer {p['layer']})"
    row = [setting, r["arm"] or "–", paper_value(p.get("accuracy_pct")), cell(o.get("accuracy"), "accuracy")]
    row += [cell(o.get("cloze_exact_match"), "cloze_exact_match")] if has_cloze else []
    return row + [
        paper_value(p.get("perplexity")),
        cell(o.get("perplexity"), "perplexity"),
        paper_value(p.get("decode_tokens_per_s")),
        cell(o.get("decode_tokens_per_s"), "decode_tokens_per_s"),
    ]


def title_lines(report) -> list[str]:
    return [f"# slimlm report: {report['title']}", ""]


def body_lines(report) -> list[str]:
    """Between the verdict and the protocol: the main plot, then the tables, the paper comparison, the rest."""
    return (
        main_plot_lines(report)
        + results_section(report)
        + (frontier_section(report) if report.get("frontier") else [])
        + references_section(report)
        + paper_section(report)
        + plots_section(report)
        + timing_section(report)
    )


def render_markdown(report) -> str:
    lines = title_lines(report) + verdict_lines(report) + body_lines(report) + protocol_section(report)
    return "\n".join(lines) + "\n"
