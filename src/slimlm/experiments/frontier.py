"""The frontier view of a run, for the report: every model's shape, parameters, size and speed against its test
perplexity, the distilled arms beside their starting students, the teacher and its quantized baselines
(baselines.py), and the sentences that say which models are on the frontier. Used by the student-shape study
(shapes.py), which has no paper counterpart; the baselines' protocol line is used by every report.

Reference models are shown as one-seed summaries, so arms and references go through the same cells
(columns.py) and the same frontier test (stats.dominated).
"""

from __future__ import annotations

from slimlm.experiments import paper as paper_data
from slimlm.experiments.columns import cell, column, said
from slimlm.experiments.stats import SPREAD_NOTE, dominated, within_spread

SHAPE_COLUMNS = (("layers", "layers"), ("hidden_size", "hidden"), ("intermediate_size", "MLP"))
METRICS = ("parameters", "size_on_disk_mb", "perplexity", "accuracy", "decode_tokens_per_s", "prefill_tokens_per_s")
# (x metric, the frontier's name, the x metric in words, +1 where a lower x is better, -1 where higher): each
# against test perplexity
FRONTIERS = (
    ("parameters", "parameters/perplexity", "parameter count", 1),
    ("size_on_disk_mb", "size/perplexity", "size on disk", 1),
    ("decode_tokens_per_s", "decode-speed/perplexity", "decode speed", -1),
)


def is_baseline(ref: dict) -> bool:
    return bool(ref.get("baseline"))


def starting_student(references: dict, axis) -> tuple[str, dict] | tuple[None, None]:
    """The reference (name, summary) an arm of this axis was distilled from."""
    return next(((n, r) for n, r in references.items() if (r.get("student") or {}).get("axis") == axis), (None, None))


def _one(value: float) -> dict:
    return {"mean": value, "std": None, "n": 1, "values": [value], "seeds": [None]}


def _order(name: str, references: dict) -> tuple:
    """The teacher and other references first, then the baselines from the most bits to the fewest."""
    baseline = references[name].get("baseline") or {}
    return (bool(baseline), -(baseline.get("bits") or 0), name)


def _role(name: str, ref: dict) -> str:
    if is_baseline(ref):
        return "baseline" if ref["baseline"].get("of", "teacher") == "teacher" else "distilled, GGUF"
    if ref.get("student"):
        return "starting student"
    return "teacher" if name == "teacher" else "reference"


def frontier_rows(arms: list[dict], references: dict, spec: dict) -> list[dict]:
    """Distilled arms (mean ± std), their starting students, the teacher, the baselines: one row each."""
    teacher_shape = spec.get("parameter", {}).get("teacher_shape")
    teacher_params = (references.get("teacher") or {}).get("metrics", {}).get("parameters")
    rows = []
    for arm in arms:
        _, start = starting_student(references, arm.get("value"))
        shape = ((start or {}).get("student") or {}).get("shape")
        metrics = {k: arm["metrics"][k] for k in METRICS if k in arm["metrics"]}
        row = {"name": arm["name"], "role": "distilled", "label": arm["label"], "n": len(arm["seeds"])}
        rows.append({**row, "shape": shape, "metrics": metrics})
    starts = [n for a in arms if (n := starting_student(references, a.get("value"))[0])]
    for name in starts + sorted((n for n in references if n not in starts), key=lambda n: _order(n, references)):
        ref = references[name]
        role = _role(name, ref)
        shape = (ref.get("student") or {}).get("shape") or (teacher_shape if role in ("teacher", "baseline") else None)
        if role == "distilled, GGUF":  # an arm's student exported: the shape its arm started from
            start = starting_student(references, ref["baseline"].get("axis"))[1] or {}
            shape = (start.get("student") or {}).get("shape")
        rows.append(
            {
                "name": name,
                "role": role,
                "label": (ref.get("baseline") or {}).get("command") or (ref.get("student") or {}).get("chosen") or "",
                "n": 1,
                "shape": shape,
                "metrics": {k: _one(ref["metrics"][k]) for k in METRICS if k in ref["metrics"]},
            }
        )
    for row in rows:  # the share of the teacher's parameters each model keeps: the budget, as built
        params = row["metrics"].get("parameters")
        row["share"] = params["mean"] / teacher_params if params and teacher_params else None
    return rows


def _heads(shape: dict) -> str:
    return f"{shape.get('num_attention_heads', '?')}/{shape.get('num_key_value_heads', '?')}"


def shape_words(shape: dict) -> str:
    """ "24 layers, hidden 576, MLP 576, heads 9/3"."""
    return ", ".join(
        [f"{shape.get('layers', '?')} layers"]
        + [f"{w} {shape.get(k, '?')}" for k, w in SHAPE_COLUMNS[1:]]
        + [f"heads {_heads(shape)}"]
    )


def frontier_section(report: dict) -> list[str]:
    """The frontier table: shape, size, speed and quality of every model, then the baselines' builds."""
    rows = report.get("frontier") or []
    keys = [k for k in METRICS if any(k in r["metrics"] for r in rows)]
    header = ["model", "what", "n"] + [w for _, w in SHAPE_COLUMNS] + ["heads (q/kv)", "share of teacher params"]
    header += [column(k).label for k in keys]
    body = []
    for r in rows:
        shape = r["shape"] or {}
        body.append(
            [r["name"], r["role"], str(r["n"])]
            + [str(shape.get(k, "–")) for k, _ in SHAPE_COLUMNS]
            + [_heads(shape) if shape else "–", "–" if r.get("share") is None else f"{r['share']:.1%}"]
            + [cell(r["metrics"].get(k), k) for k in keys]
        )
    target = report.get("parameter", {}).get("target_params")
    lines = [
        "## Frontier",
        "",
        "Every distilled student (mean ± std over seeds), the starting student it was distilled from"
        + (f" (built at {target:g} of the teacher's parameters)" if target else "")
        + ", the teacher and its quantized baselines, and (where llama-cpp-python is installed) each arm's first "
        "seed exported to GGUF and run under llama.cpp, all measured with the protocol above. Shape: decoder "
        "layers, hidden size, MLP width, query/key-value heads (a quantized model keeps its source's).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return (
        lines + [""] + [f"- {r['name']}: {r['label']}" for r in rows if r["role"] != "distilled" and r["label"]] + [""]
    )


def baseline_lines(references: dict) -> list[str]:
    """The protocol's lines on the baselines, from what their reference records say of their builds."""
    names = sorted((n for n, r in references.items() if is_baseline(r)), key=lambda n: _order(n, references))
    found = {n: references[n]["baseline"] for n in names}
    if not found:
        return []
    students = any(b.get("of", "teacher") != "teacher" for b in found.values())
    what = "the teacher quantized" + (", or a distilled arm exported to GGUF" if students else "")
    lines = [
        f"- baselines ({what}, built once under baselines/ and measured like the teacher): "
        + "; ".join(f"{n}: `{b.get('command', '?')}`" for n, b in found.items())
    ]
    runtimes = {}
    for n, b in found.items():
        if b.get("runtime"):
            runtimes.setdefault(b["runtime"], []).append(n)
    return lines + [f"  - runtime of {', '.join(ns)}: {rt}" for rt, ns in runtimes.items()]


# ---------------------------------------------------------------- sentences


def _points(arms: list[dict], references: dict, xkey: str, sign: int) -> dict:
    points = {a["name"]: (sign * a["metrics"][xkey]["mean"], a["metrics"]["perplexity"]["mean"]) for a in arms}
    points.update(
        {
            n: (sign * r["metrics"][xkey], r["metrics"]["perplexity"])
            for n, r in references.items()
            if xkey in r["metrics"]
        }
    )
    return points


def frontier_sentences(arms: list[dict], references: dict) -> list[str]:
    """Which models no other model beats on both axes, for parameters, size and decode speed."""
    references = {n: r for n, r in references.items() if "perplexity" in r["metrics"]}
    out = []
    for xkey, name, better, sign in FRONTIERS:
        measured = [a for a in arms if {xkey, "perplexity"} <= a["metrics"].keys()]
        points = _points(measured, references, xkey, sign)
        if len(points) > 1:
            front = [n for n, p in points.items() if not dominated(p, [q for m, q in points.items() if m != n])]
            out.append(
                f"On the {name} frontier (no other model is at least as good on both {better} and test "
                "perplexity, and better on one): " + ", ".join(front) + "."
            )
    return out


def _ranked(arms: list[dict], key: str, higher: bool, words: str) -> list[str]:
    ranked = sorted((a for a in arms if key in a["metrics"]), key=lambda a: a["metrics"][key]["mean"], reverse=higher)
    if not ranked:
        return []
    text = f"{words}, best first: " + ", ".join(f"{a['name']} {said(a['metrics'][key], key)}" for a in ranked) + "."
    if len(ranked) > 1:
        state = {
            None: "one seed per arm, so our seed spread cannot say whether they differ",
            True: "within our seed spread",
            False: "beyond our seed spread",
        }[within_spread(ranked[0]["metrics"][key], ranked[1]["metrics"][key])]
        text += f" {ranked[0]['name']} vs {ranked[1]['name']}: {state}."
    return [text]


def _start_sentence(arms: list[dict], references: dict) -> list[str]:
    """Whether distillation kept the order the starting students (and the shape search's proxy) began in."""
    pairs = []
    for a in arms:
        name, ref = starting_student(references, a.get("value"))
        if ref and "perplexity" in ref["metrics"] and "perplexity" in a["metrics"]:
            pairs.append((a["name"], ref["metrics"]["perplexity"], a["metrics"]["perplexity"]["mean"], ref))
    if len(pairs) < 2:
        return []
    before = [n for n, *_ in sorted(pairs, key=lambda p: p[1])]
    after = [n for n, *_ in sorted(pairs, key=lambda p: p[2])]
    starts = ", ".join(f"{n} {cell(_one(b), 'perplexity')}" for n, b, *_ in pairs)
    order = "the same order" if before == after else f"a different order ({', '.join(after)})"
    return [
        f"Before distillation the starting students' test perplexities were {starts} (best first: "
        f"{', '.join(before)}); after distillation the arms are in {order}."
    ]


def _same_shape(arms: list[dict], references: dict) -> list[str]:
    """Arms whose searches chose the same student (`both` often picks a depth-only or width-only shape)."""
    groups = {}
    for a in arms:
        shape = ((starting_student(references, a.get("value"))[1] or {}).get("student") or {}).get("shape")
        if shape:
            groups.setdefault(shape_words(shape), []).append(a["name"])
    return [
        f"The arms {' and '.join(names)} start from students of the same shape ({words}): a difference between "
        "them is the measurement's noise, not the shape's."
        for words, names in groups.items()
        if len(names) > 1
    ]


def shape_sentences(arms: list[dict], references: dict) -> list[str]:
    """What the student-shape run shows, computed from its numbers."""
    measured = [a for a in arms if a["metrics"]]
    if not measured:
        return ["No arm has finished results yet: nothing to compare."]
    out = _same_shape(arms, references) + _ranked(measured, "perplexity", False, "Test perplexity after distillation")
    out += _ranked(measured, "accuracy", True, "Next-token accuracy")
    out += _ranked(measured, "decode_tokens_per_s", True, "Decode speed (batch 1)")
    return out + _start_sentence(measured, references) + frontier_sentences(measured, references)


def no_counterpart(kind: str, arms: list[dict], references: dict) -> dict:
    """The report's comparison section for a study the paper does not have: it says so and compares nothing."""
    return {
        "source": None,
        "counterpart": False,
        "caveat": paper_data.NO_COUNTERPART[kind],
        "claims": {},
        "notes": [],
        "rows": [],
        "sentences": shape_sentences(arms, references),
        "spread": SPREAD_NOTE,
    }
