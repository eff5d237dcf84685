"""A report's protocol as markdown: the run, the data split, training and evaluation settings, the teacher signal,
precision, downstream tasks and the arms. It comes last in a report (the answer first) and folded in the HTML
page, but every number in the report means nothing without it.
"""

from __future__ import annotations

from slimlm.experiments.columns import markdown_table
from slimlm.experiments.control import cache_lines, controls
from slimlm.experiments.frontier import baseline_lines
from slimlm.settings import general_off

_table = markdown_table


def _flat(d: dict, prefix="") -> list[tuple[str, object]]:
    out = []
    for k, v in (d or {}).items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return out


def _short(value) -> str:
    """Long lists (such as the test documents' names) as their count, first and last items."""
    if isinstance(value, list) and len(value) > 6:
        return f"{len(value)} items: {value[0]}, {value[1]} … {value[-1]}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def data_lines(info: dict) -> list[str]:
    """The split rule first, then one line per split (tokens, documents, bytes, names), then anything else."""
    info = dict(info or {})
    lines = [f"  - split rule: {info.pop('rule')}"] if "rule" in info else []
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"  - {key}: " + ", ".join(f"{k} {_short(v)}" for k, v in value.items()))
        else:
            lines.append(f"  - {key}: {_short(value)}")
    return lines


def _settings(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in _flat(d)) or "–"


def protocol_section(report) -> list[str]:
    """What was measured and how: perplexity and speed numbers mean nothing without it."""
    return ["## Protocol", ""] + protocol_body(report)


def protocol_body(report) -> list[str]:
    """The protocol without its heading (the HTML page puts it under a fold of its own)."""
    p = report["protocol"]
    cache = p.get("teacher_cache")
    lines = run_lines(report) + [
        f"- teacher: `{p.get('teacher', '?')}` ({p.get('teacher_layers', '?')} layers)",
        f"- data: `{p.get('data', '?')}`",
    ]
    lines += data_lines(p.get("data_info"))
    per = "in total over the training stages" if report["kind"] == "pipeline" else "per arm and seed"
    lines += [
        f"- training: {_short(p.get('train_tokens', '?'))} train tokens {per}, block size {p.get('block_size', '?')} "
        "(tokens each arm really trained on: see Training cost)",
        _evaluation_line(p.get("eval", {})),
        f"- seeds: {', '.join(map(str, report['seeds'])) or '–'}",
    ]
    if controls(report["arms"]):
        lines += cache_lines(report["arms"], cache, _settings)  # which arms read the cache, which ran online
    else:
        lines.append(f"- teacher cache: {_settings(cache) if cache else 'none (teacher run live every step)'}")
    lines.append(f"- base settings: {_settings(p.get('base_settings', {}))}")
    lines += baseline_lines(report["references"])  # the teacher's quantized copies, where measured
    compute = report.get("compute") or []
    lines += [
        f"- training precision: {compute[0]}"
        if len(compute) == 1
        else "- training precision: "
        + ("not recorded" if not compute else "differs between arms: " + "; ".join(compute)),
        "- measurement precision: fp32 (the same protocol on every machine)",
    ]
    for task, details in report["downstream_protocol"].items():
        lines.append(f"- downstream task `{task}`:")
        lines += [f"  - {k}: {_short(v)}" for k, v in details.items()]
    lines += [f"- note: {n}" for n in p.get("notes", [])]
    lines += ["", "### Arms", ""]
    lines += _table(
        ["arm", report["parameter"].get("label", "value"), "settings"],
        [[a["name"], a["label"], _settings(a["settings"])] for a in report["arms"]],
    )
    return lines


def run_lines(report) -> list[str]:
    """Where the run lives, when and with what it was made, and the command that made it."""
    return [
        f"Run folder `{report['run_dir']}`, created {report.get('created') or '?'} with slimlm "
        f"{report.get('slimlm_version') or '?'}; report generated {report['generated']}.",
        "",
        "### Command",
        "",
        "```",
        report.get("command") or "(not recorded)",
        "```",
        "",
    ]


def _evaluation_line(ev: dict) -> str:
    return (
        f"- evaluation: split `{ev.get('split', '?')}`, {ev.get('tokens', '?')} tokens, sliding window "
        f"{ev.get('window', '?')} / stride {ev.get('stride', '?')}; speed: batch-1 greedy decoding of "
        f"{ev.get('decode_new_tokens', '?')} new tokens, median of {ev.get('repeats', '?')} repeats, "
        f"{ev.get('threads', '?')} threads; tasks: {', '.join(ev.get('tasks') or []) or 'none'}"
        + (
            f"; general text: `{ev['general_data']}` test split, {ev.get('general_tokens', '?')} tokens in windows "
            "spread evenly over it"
            if not general_off(ev.get("general_data"))
            else ""
        )
    )
