"""`slimlm report RUN_DIR`: turn an experiment folder (see layout.py) into report.md, report.html,
report.json and plots/*.png, with the paper's numbers beside ours.

Honesty rules: every number shown is in report.json; std is the sample std over seeds (ddof=1, null
for one seed); missing arms and seeds are listed, never hidden; the paper's levels are not comparable
with ours (see paper.ACCURACY_CAVEAT), so the comparison speaks of rankings, shapes and seed spread.
Agreement sentences are computed from the numbers, never written in advance.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from collections import namedtuple
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from slimlm.errors import SlimlmError
from slimlm.experiments import paper as paper_data
from slimlm.experiments.layout import load_run

REPORT_FILES = ("report.md", "report.html", "report.json")
STD_NOTE = "std is the sample standard deviation over seeds (ddof=1); it is null (shown without ±) when n=1"
SPREAD_NOTE = ("'within our seed spread' means the two arms' mean ± 1 std intervals overlap; "
               "with one seed per arm the spread is unknown")

# key, label, scale applied for display, format spec. Raw units stay in report.json.
Column = namedtuple("Column", "key label scale spec")
RESULT_COLUMNS = [
    Column("accuracy", "next-token acc. (%)", 100, ".2f"),
    Column("perplexity", "perplexity", 1, ".2f"),
    Column("bits_per_byte", "bits/byte", 1, ".3f"),
    Column("decode_tokens_per_s", "decode tok/s", 1, ".1f"),
    Column("size_on_disk_mb", "size (MB)", 1, ".1f"),
    Column("parameters", "params (M)", 1e-6, ".2f"),
    Column("inference_memory_mib", "inference memory (MiB)", 1, ".0f"),
    Column("cloze_exact_match", "cloze exact match", 1, ".3f"),
    Column("rouge1", "ROUGE-1", 1, ".3f"),
    Column("rouge2", "ROUGE-2", 1, ".3f"),
    Column("rougeL", "ROUGE-L", 1, ".3f"),
]
TRAINING_COLUMNS = [
    Column("tokens", "train tokens", 1, ".0f"),
    Column("train_tokens_per_s", "train tok/s", 1, ".1f"),
    Column("peak_memory_mib", "peak train memory (MiB)", 1, ".0f"),
    Column("trainable_parameters", "trainable params (M)", 1e-6, ".3f"),
    Column("optimizer_state_bytes", "optimizer state (MB)", 1e-6, ".1f"),
    Column("train_runtime_s", "train runtime (s)", 1, ".0f"),
    Column("wall_time_s", "train time (s)", 1, ".0f"),
]
COLUMNS = {c.key: c for c in RESULT_COLUMNS + TRAINING_COLUMNS}
DOWNSTREAM = ("cloze_exact_match", "rouge1", "rouge2", "rougeL")
# Our metric, the paper's matching key, higher is better, words.
COMPARED = [
    ("accuracy", "accuracy_pct", True, "next-token accuracy"),
    ("perplexity", "perplexity", False, "perplexity"),
    ("cloze_exact_match", "accuracy_pct", True, "cloze exact match"),
]
SHAPE_WORDS = {"increasing": "rises throughout", "decreasing": "falls throughout", "peak": "rises then falls",
               "valley": "falls then rises", "mixed": "goes up and down more than once", "flat": "is flat"}
KIND_TITLES = {"temperature": "KD temperature sweep (paper Table 1)",
               "feature-layer": "feature-distillation layer sweep (paper Figure 2)",
               "finetune": "LoRA vs full fine-tuning (paper Figure 3)",
               "pipeline": "the whole compression pipeline"}


# ---------------------------------------------------------------- numbers

def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summarize(pairs: list[tuple[int, float]]) -> dict | None:
    """mean, sample std (ddof=1; None for n=1), min, max, n and the per-seed values of (seed, value) pairs.
    Non-finite values cannot be averaged honestly: they are left out and counted."""
    kept = [(s, float(v)) for s, v in pairs if _finite(v)]
    dropped = len([v for _, v in pairs if v is not None]) - len(kept)
    if not kept:
        return None
    values = np.array([v for _, v in kept])
    out = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None,
           "min": float(values.min()), "max": float(values.max()), "n": len(values),
           "seeds": [s for s, _ in kept], "values": [v for _, v in kept]}
    if dropped:
        out["non_finite_dropped"] = dropped
    return out


def _numeric_keys(dicts: list[dict]) -> list[str]:
    keys = []
    for d in dicts:
        keys += [k for k, v in (d or {}).items() if _finite(v) and k not in keys]
    return keys


def summarize_block(results: list[dict], block: str) -> dict:
    """Per-metric summaries over seeds for one block ("metrics" or "training") of an arm's results."""
    blocks = [r.get(block) or {} for r in results]
    return {k: s for k in _numeric_keys(blocks)
            if (s := summarize([(r.get("seed"), b.get(k)) for r, b in zip(results, blocks)]))}


def arm_summary(arm: dict, results: list[dict], seeds: list[int]) -> dict:
    """Everything the report says about one arm: which seeds exist, their metric summaries and wall time."""
    found = sorted(r.get("seed") for r in results)
    walls = [(r.get("seed"), r.get("wall_time_s")) for r in results]
    return {"name": arm["name"], "value": arm.get("value"), "label": arm.get("label", arm["name"]),
            "settings": arm.get("settings", {}), "seeds": found,
            "missing_seeds": [s for s in seeds if s not in found],
            "metrics": summarize_block(results, "metrics"), "training": summarize_block(results, "training"),
            "wall_time_s": summarize(walls),
            "total_wall_time_s": float(sum(v for _, v in walls if _finite(v)))}


def reference_summary(ref: dict) -> dict:
    return {"name": ref.get("name"), "model_dir": ref.get("model_dir"),
            "metrics": {k: float(v) for k, v in (ref.get("metrics") or {}).items() if _finite(v)},
            "wall_time_s": float(ref["wall_time_s"]) if _finite(ref.get("wall_time_s")) else None}


def timing(arms: list[dict], references: dict) -> dict:
    """Wall time per arm (all its seeds) and for the whole experiment, from the recorded wall_time_s."""
    per_arm = {a["name"]: a["total_wall_time_s"] for a in arms}
    per_ref = {n: r["wall_time_s"] for n, r in references.items() if r["wall_time_s"] is not None}
    return {"arms_s": per_arm, "references_s": per_ref, "arms_total_s": sum(per_arm.values()),
            "references_total_s": sum(per_ref.values()), "total_s": sum(per_arm.values()) + sum(per_ref.values())}


# ---------------------------------------------------------------- comparisons

def within_spread(a: dict, b: dict) -> bool | None:
    """Whether mean ± 1 std of two summaries overlap; None when either has one seed (spread unknown)."""
    if a["std"] is None or b["std"] is None:
        return None
    return abs(a["mean"] - b["mean"]) <= a["std"] + b["std"]


def shape(values: list[float]) -> str:
    """The trend of a sequence ordered by the swept parameter: increasing, decreasing, peak, valley, mixed."""
    signs = [s for s in np.sign(np.diff(values)) if s != 0]
    if not signs:
        return "flat"
    changes = sum(1 for a, b in zip(signs, signs[1:]) if a != b)
    if changes == 0:
        return "increasing" if signs[0] > 0 else "decreasing"
    if changes == 1:
        return "peak" if signs[0] > 0 else "valley"
    return "mixed"


def _ranks(values: list[float]) -> np.ndarray:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = np.empty(len(values))
    i = 0
    while i < len(order):  # ties share their average rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation: compares orderings only, which is all that different setups let us compare."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def verdict(same_direction: bool, within: bool | None) -> str:
    """One phrase for a pairwise comparison against the paper, honest about our seed noise."""
    if within is None:
        tail = " (one seed per arm, so our spread is unknown)"
        return ("same direction as the paper" if same_direction else "opposite to the paper") + tail
    if within:
        return ("same direction as the paper, but within our seed spread" if same_direction
                else "opposite to the paper, but within our seed spread (inconclusive)")
    return "agrees with the paper" if same_direction else "differs from the paper"


def _fmt(value, key: str) -> str:
    col = COLUMNS.get(key, Column(key, key, 1, ".4g"))
    v = value * col.scale
    return f"{v:.3g}" if key == "perplexity" and v >= 1e4 else format(v, col.spec)


def cell(summary: dict | None, key: str) -> str:
    """'mean ± std' in the column's display units; the mean alone for one seed; '–' when absent."""
    if not summary:
        return "–"
    if summary["std"] is None:
        return _fmt(summary["mean"], key)
    return f"{_fmt(summary['mean'], key)} ± {_fmt(summary['std'], key)}"


UNITS = {"accuracy": "%", "decode_tokens_per_s": " tok/s", "size_on_disk_mb": " MB", "inference_memory_mib": " MiB"}


def said(summary: dict | None, key: str) -> str:
    """A cell with its unit, for sentences."""
    return cell(summary, key) + UNITS.get(key, "")


def _paper_fmt(value, key: str = "") -> str:
    """The paper's numbers as printed; accuracy gets its % sign in sentences."""
    return "–" if value is None else f"{value:g}%" if key == "accuracy_pct" else f"{value:g}"


def arm_x(arm: dict, spec: dict):
    """Where an arm sits on the swept axis: τ, relative teacher depth, or the method name."""
    kind = spec["kind"]
    if kind == "feature-layer":
        return float(arm["value"]) / teacher_layers(spec)
    if kind == "finetune":
        return method_of(arm)
    if spec.get("parameter", {}).get("numeric") and _finite(arm.get("value")):
        return float(arm["value"])
    return arm.get("value")


def point_x(point: dict, kind: str):
    if kind == "temperature":
        return point["temperature"]
    if kind == "feature-layer":
        return point["layer"] / paper_data.FIGURE2["teacher_layers"]
    return point.get("method")


def same_x(a, b, kind: str) -> bool:
    """Same setting: equal τ, relative depth within half a paper layer, or the same method."""
    if kind == "feature-layer":
        return abs(a - b) < 0.5 / paper_data.FIGURE2["teacher_layers"]
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b)
    return a == b


def teacher_layers(spec: dict) -> int:
    return int(spec.get("parameter", {}).get("teacher_layers") or spec.get("protocol", {}).get("teacher_layers") or 1)


def method_of(arm: dict) -> str:
    """'lora' or 'full' from an arm's value or name, so any arm naming works against Figure 3."""
    text = f"{arm.get('value', '')} {arm.get('name', '')}".lower()
    return "lora" if "lora" in text else "full" if "full" in text else str(arm.get("value"))


def describe(arm: dict, spec: dict) -> str:
    """How a sentence names an arm: its label, plus relative depth for layer sweeps."""
    if spec["kind"] == "feature-layer":
        return f"layer {arm['value']} of {teacher_layers(spec)} (depth {arm_x(arm, spec):.2f})"
    return arm["label"]


def describe_point(point: dict, kind: str) -> str:
    if kind == "temperature":
        return f"τ={point['temperature']:g}"
    if kind == "feature-layer":
        return f"layer {point['layer']} of {paper_data.FIGURE2['teacher_layers']} (depth {point_x(point, kind):.2f})"
    return point.get("method", "?")


def comparison_rows(arms: list[dict], spec: dict) -> list[dict]:
    """Our arms beside the paper's points at the same setting; unmatched points on either side get own rows."""
    kind = spec["kind"]
    points = list(paper_data.BY_KIND.get(kind, {}).get("points", []))
    rows = []
    for arm in arms:
        x = arm_x(arm, spec)
        match = next((p for p in points if same_x(x, point_x(p, kind), kind)), None)
        if match is not None:
            points.remove(match)
        rows.append({"x": x, "arm": arm["name"], "label": arm["label"], "paper": match,
                     "ours": {k: arm["metrics"].get(k) for k in (*(c[0] for c in COMPARED), "decode_tokens_per_s")}})
    rows += [{"x": point_x(p, kind), "arm": None, "label": describe_point(p, kind), "paper": p, "ours": None}
             for p in points]
    if all(isinstance(r["x"], float) for r in rows):
        rows.sort(key=lambda r: r["x"])
    return rows


def _with(arms: list[dict], key: str) -> list[dict]:
    return [a for a in arms if key in a["metrics"]]


def best_sentences(arms, spec, key, pkey, higher, words) -> list[str]:
    """Which arm is best here vs in the paper, whether both optima are interior, and whether our seeds
    separate the winner from the runner-up."""
    kind, source = spec["kind"], paper_data.BY_KIND[spec["kind"]]
    ours = sorted(_with(arms, key), key=lambda a: a["metrics"][key]["mean"], reverse=higher)
    points = [p for p in source["points"] if p[pkey] is not None]
    if not ours or not points:
        return []
    best, pbest = ours[0], (max if higher else min)(points, key=lambda p: p[pkey])
    xs = sorted(arm_x(a, spec) for a in ours)
    pxs = sorted(point_x(p, kind) for p in source["points"])
    interior = len(xs) >= 3 and xs[0] < arm_x(best, spec) < xs[-1]
    pinterior = pxs[0] < point_x(pbest, kind) < pxs[-1]
    same = same_x(arm_x(best, spec), point_x(pbest, kind), kind)
    text = (f"Best by {words} here: {describe(best, spec)} ({said(best['metrics'][key], key)}); "
            f"the paper's best by {'accuracy' if pkey == 'accuracy_pct' else words}: {describe_point(pbest, kind)} "
            f"({_paper_fmt(pbest[pkey], pkey)}). ")
    if same:
        text += "Same setting: agree."
    elif interior and pinterior:
        text += "Different settings, but both optima are interior (neither end of the swept range): same kind of optimum."
    else:
        where = "interior" if interior else "at an end of our range"
        text += f"Differ: ours is {where}, the paper's is {'interior' if pinterior else 'at an end'}."
    if len(ours) > 1:
        within = within_spread(best["metrics"][key], ours[1]["metrics"][key])
        state = {None: "one seed per arm, so our seed spread cannot say whether it is distinguishable",
                 True: "within our seed spread, so our seeds do not settle the top rank",
                 False: "beyond our seed spread"}[within]
        text += f" Our runner-up {describe(ours[1], spec)} ({said(ours[1]['metrics'][key], key)}) is {state}."
    return [text]


def shape_sentences(arms, spec, key, pkey, words) -> list[str]:
    """Trend shape along the swept axis, ours vs the paper's, and the rank correlation at shared settings."""
    kind, source = spec["kind"], paper_data.BY_KIND[spec["kind"]]
    ours = sorted(_with(arms, key), key=lambda a: arm_x(a, spec))
    if len(ours) < 3:
        return []
    our_shape = shape([a["metrics"][key]["mean"] for a in ours])
    points = sorted([p for p in source["points"] if p[pkey] is not None], key=lambda p: point_x(p, kind))
    paper_shape = source.get(f"{pkey}_shape") or (shape([p[pkey] for p in points]) if len(points) >= 3 else None)
    if paper_shape is None:
        return []
    axis = spec.get("parameter", {}).get("label", "the swept parameter")
    out = [f"Shape of {words} against {axis}: ours {SHAPE_WORDS[our_shape]} over {len(ours)} settings; "
           f"the paper's {SHAPE_WORDS[paper_shape]}"
           + (" (read from its text)" if source.get("approximate") else "")
           + (": same shape." if our_shape == paper_shape else ": different shape.")]
    pairs = [(a["metrics"][key]["mean"], p[pkey]) for a in ours for p in points
             if same_x(arm_x(a, spec), point_x(p, kind), kind)]
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
    if rho is not None:
        out.append(f"Rank correlation (Spearman ρ) of {words} with the paper over the {len(pairs)} shared settings: "
                   f"{rho:+.2f} (+1 = same ordering, -1 = reversed).")
    return out


def sweep_speed_sentence(arms, spec) -> list[str]:
    """Whether speed differences between sweep arms exceed our seed noise, against the paper's claim that
    the swept setting barely changes speed."""
    kind, source = spec["kind"], paper_data.BY_KIND[spec["kind"]]
    key = "decode_tokens_per_s"
    ours = sorted(_with(arms, key), key=lambda a: a["metrics"][key]["mean"])
    if len(ours) < 2:
        return []
    slow, fast = ours[0], ours[-1]
    lo, hi = slow["metrics"][key]["mean"], fast["metrics"][key]["mean"]
    spread = (hi - lo) / np.mean([a["metrics"][key]["mean"] for a in ours]) * 100
    within = within_spread(slow["metrics"][key], fast["metrics"][key])
    speeds = [p[key] for p in source["points"] if p[key] is not None]
    prange = source.get(f"{key}_range") or [min(speeds), max(speeds)]
    pslow = min((p for p in source["points"] if p[key] is not None), key=lambda p: p[key])
    text = (f"Decode speed: our arms' means span {lo:.1f}–{hi:.1f} tok/s ({spread:.1f}% of their mean; slowest "
            f"{describe(slow, spec)}, fastest {describe(fast, spec)}); the paper reports {prange[0]:g}–{prange[1]:g} "
            f"tok/s, slowest at {describe_point(pslow, kind)}, and reads this as little effect on speed. ")
    text += {None: "With one seed per arm we cannot tell these differences from noise.",
             True: "The slowest and fastest arms are within our seed spread: consistent with the paper's "
                   "'little effect' reading, and no arm is measurably slower.",
             False: "The slowest and fastest arms differ beyond our seed spread: unlike the paper's "
                    "'little effect' reading."}[within]
    return [text]


def sweep_sentences(arms, spec) -> list[str]:
    out = []
    for key, pkey, higher, words in COMPARED:
        out += best_sentences(arms, spec, key, pkey, higher, words)
        out += shape_sentences(arms, spec, key, pkey, words)
    return out + sweep_speed_sentence(arms, spec)


def finetune_sentences(arms, spec) -> list[str]:
    """LoRA vs full on quality and speed (paper: full better quality, LoRA faster) and training cost
    (paper: LoRA cheaper, no numbers)."""
    by_method = {method_of(a): a for a in arms if a["metrics"]}
    missing = [m for m in ("lora", "full") if m not in by_method]
    if missing:
        return [f"Cannot compare LoRA with full fine-tuning: no results for {', '.join(missing)}."]
    lora, full = by_method["lora"], by_method["full"]
    paper = {p["method"]: p for p in paper_data.FIGURE3["points"]}
    out = []
    for key, pkey, higher, words in COMPARED + [("decode_tokens_per_s", "decode_tokens_per_s", True, "decode speed")]:
        if key not in lora["metrics"] or key not in full["metrics"]:
            continue
        a, b = lora["metrics"][key], full["metrics"][key]
        ours_win = "lora" if (a["mean"] > b["mean"]) == higher else "full"
        paper_win = "lora" if (paper["lora"][pkey] > paper["full"][pkey]) == higher else "full"
        name, adj = {"lora": "LoRA", "full": "full"}, "faster" if key == "decode_tokens_per_s" else "better"
        out.append(f"{words[0].upper() + words[1:]}: LoRA {said(a, key)} vs full {said(b, key)} here "
                   f"(LoRA/full = {_ratio(a['mean'], b['mean'])}), {name[ours_win]} {adj}; the paper: LoRA "
                   f"{_paper_fmt(paper['lora'][pkey], pkey)} vs full {_paper_fmt(paper['full'][pkey], pkey)}, "
                   f"{name[paper_win]} {adj} — {verdict(ours_win == paper_win, within_spread(a, b))}.")
    params = [x["metrics"].get("parameters") for x in (lora, full)]
    if all(params) and math.isclose(params[0]["mean"], params[1]["mean"], rel_tol=1e-6):
        out.append(f"Both evaluated models have the same parameter count ({_fmt(params[0]['mean'], 'parameters')} M), "
                   "so their architecture gives no reason for a speed difference.")
    costs = []
    for key, words in (("trainable_parameters", "trainable parameters"), ("train_tokens_per_s", "training tokens/s"),
                       ("peak_memory_mib", "peak training memory"), ("optimizer_state_bytes", "optimizer state"),
                       ("wall_time_s", "training time")):
        a, b = lora["training"].get(key), full["training"].get(key)
        if a and b and b["mean"]:
            costs.append(f"{_ratio(a['mean'], b['mean'], '.3g')} the {words}")
    if costs:
        out.append("Training cost (the paper gives no numbers, only that LoRA is cheaper): LoRA used "
                   + ", ".join(costs) + " of full fine-tuning.")
    return out


def dominated(point, others) -> bool:
    """True when another point is no larger and no worse in perplexity, and better in one of them."""
    return any(o[0] <= point[0] and o[1] <= point[1] and (o[0] < point[0] or o[1] < point[1]) for o in others)


def pipeline_sentences(arms, references) -> list[str]:
    """No paper numbers exist: say what each stage bought against the teacher, and which stages are on the
    size/perplexity frontier."""
    out = []
    teacher = references.get("teacher", {}).get("metrics", {})
    for arm in arms:
        m = arm["metrics"]
        if "size_on_disk_mb" not in m or "perplexity" not in m:
            continue
        text = (f"Stage {arm['label']}: {said(m['size_on_disk_mb'], 'size_on_disk_mb')}, "
                f"perplexity {cell(m['perplexity'], 'perplexity')}")
        if "decode_tokens_per_s" in m:
            text += f", {said(m['decode_tokens_per_s'], 'decode_tokens_per_s')}"
        if teacher.get("size_on_disk_mb") and teacher.get("perplexity"):
            text += (f"; against the teacher ({teacher['size_on_disk_mb']:.1f} MB, perplexity "
                     f"{_fmt(teacher['perplexity'], 'perplexity')}): {teacher['size_on_disk_mb'] / m['size_on_disk_mb']['mean']:.2f}× "
                     f"smaller, perplexity {m['perplexity']['mean'] / teacher['perplexity']:.2f}× the teacher's")
            if teacher.get("decode_tokens_per_s") and "decode_tokens_per_s" in m:
                text += f", {m['decode_tokens_per_s']['mean'] / teacher['decode_tokens_per_s']:.2f}× its decode speed"
        out.append(text + ".")
    points = {a["label"]: (a["metrics"]["size_on_disk_mb"]["mean"], a["metrics"]["perplexity"]["mean"])
              for a in arms if {"size_on_disk_mb", "perplexity"} <= a["metrics"].keys()}
    points.update({n: (r["metrics"]["size_on_disk_mb"], r["metrics"]["perplexity"]) for n, r in references.items()
                   if {"size_on_disk_mb", "perplexity"} <= r["metrics"].keys()})
    if len(points) > 1:
        front = [n for n, p in points.items() if not dominated(p, [q for m, q in points.items() if m != n])]
        out.append("On the size/perplexity frontier (no other model is both smaller and lower in perplexity): "
                   + ", ".join(front) + ".")
    return out


def paper_comparison(arms, spec, references) -> dict:
    """The paper's numbers beside ours and the generated sentences for the report's last section."""
    kind = spec["kind"]
    source = paper_data.BY_KIND.get(kind)
    if source is None:
        return {"source": None, "rows": [], "caveat": paper_data.ACCURACY_CAVEAT,
                "sentences": [f"The paper has no experiment of kind '{kind}': nothing to compare."]}
    if not any(a["metrics"] for a in arms):
        sentences = ["No arm has finished results yet: nothing to compare."]
    elif kind == "pipeline":
        sentences = pipeline_sentences(arms, references)
    elif kind == "finetune":
        sentences = finetune_sentences(arms, spec)
    else:
        sentences = sweep_sentences(arms, spec)
    notes = [source[k] for k in ("accuracy_note", "note") if k in source]
    return {"source": source["source"], "approximate": source.get("approximate", False),
            "claims": source.get("claims", {}), "notes": notes, "caveat": paper_data.ACCURACY_CAVEAT,
            "rows": comparison_rows(arms, spec) if source["points"] else [], "sentences": sentences}


def downstream_protocol(run: dict) -> dict:
    """How the downstream sets were built and scored, as the first measured model recorded it (same for all)."""
    records = [r for rs in run["results"].values() for r in rs] + list(run["references"].values())
    for record in records:
        found = (record.get("metrics") or {}).get("downstream_protocol")
        if isinstance(found, dict):
            return {task: {k: v for k, v in (p or {}).items() if k != "seconds"} for task, p in found.items()}
    return {}


def build_report(run: dict, run_dir: Path) -> dict:
    """Every number the report shows, in one JSON-able dict."""
    spec = run["spec"]
    seeds = list(spec.get("seeds", []))
    arms = [arm_summary(a, run["results"].get(a["name"], []), seeds) for a in spec["arms"]]
    references = {n: reference_summary(r) for n, r in run["references"].items()}
    return {
        "run_dir": str(run_dir), "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": spec["kind"], "title": KIND_TITLES.get(spec["kind"], spec["kind"]),
        "command": spec.get("command"), "created": spec.get("created"), "slimlm_version": spec.get("slimlm_version"),
        "parameter": spec.get("parameter", {}), "seeds": seeds, "protocol": spec.get("protocol", {}),
        "downstream_protocol": downstream_protocol(run),
        "std": STD_NOTE, "spread": SPREAD_NOTE,
        "arms": arms,
        "missing": {"arms": [a["name"] for a in arms if not a["seeds"]],
                    "seeds": {a["name"]: a["missing_seeds"] for a in arms if a["missing_seeds"]}},
        "references": references,
        "timing": timing(arms, references),
        "paper": paper_comparison(arms, spec, references),
        "plots": [],
    }


# ---------------------------------------------------------------- plots

def _figure(panels: int, width=4.6, height=3.8):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas on savefig

    fig = Figure(figsize=(width * panels, height), layout="constrained")
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def _axis_label(key: str) -> str:
    return COLUMNS[key].label if key in COLUMNS else key


def _draw_ours(ax, arms, key, x_of, *, block="metrics", color="C0", label="slimlm (mean ± std over seeds)"):
    """Mean with ±1 std error bars, each seed a faint dot: the reader sees the noise the means hide."""
    arms = [a for a in arms if key in a[block]]
    scale = COLUMNS[key].scale if key in COLUMNS else 1
    xs = [x_of(a) for a in arms]
    means = [a[block][key]["mean"] * scale for a in arms]
    stds = [(a[block][key]["std"] or 0) * scale for a in arms]
    for x, a in zip(xs, arms):
        ax.scatter([x] * a[block][key]["n"], [v * scale for v in a[block][key]["values"]], color=color,
                   alpha=0.25, s=14, zorder=2)
    if arms:
        ax.errorbar(xs, means, yerr=stds, fmt="o-", color=color, capsize=4, label=label, zorder=3)
    ax.set_ylabel(_axis_label(key))
    ax.grid(alpha=0.3)


def _draw_paper(ax, xs, ys, pkey, label, *, ranges=None):
    """The paper's values on a twin y axis: its levels are not comparable with ours, only its shape."""
    twin = ax.twinx()
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if pts:
        twin.plot(*zip(*pts), "s--", color="C3", mfc="none", label=label)
    for x, (lo, hi) in ranges or []:
        twin.vlines(x, lo, hi, color="C3", lw=3, alpha=0.5, label=f"paper range {lo:g}–{hi:g} (approx.)")
    unit = {"accuracy_pct": "accuracy (%)", "perplexity": "perplexity", "decode_tokens_per_s": "tok/s"}[pkey]
    twin.set_ylabel(f"paper: {unit}", color="C3")
    twin.tick_params(axis="y", colors="C3")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    seen = dict(zip(l1 + l2, h1 + h2))  # one legend entry per label
    twin.legend(seen.values(), seen.keys(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return twin


def _panels(arms) -> list[str]:
    """Accuracy, perplexity, speed, and downstream scores when any arm has them."""
    keys = ["accuracy", "perplexity", "decode_tokens_per_s"]
    return keys + [k for k in DOWNSTREAM if any(k in a["metrics"] for a in arms)]


def plot_temperature(report, spec, folder) -> list[str]:
    arms = report["arms"]
    keys = _panels(arms)
    fig, axes = _figure(len(keys))
    points = paper_data.TABLE1["points"]
    for ax, key in zip(axes, keys):
        _draw_ours(ax, arms, key, lambda a: float(a["value"]))
        ax.set_xscale("log")
        ticks = sorted({float(a["value"]) for a in arms} | {p["temperature"] for p in points})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(spec["parameter"].get("label", "KD temperature τ") + " (log scale)")
        pkey = {"accuracy": "accuracy_pct", "perplexity": "perplexity", "decode_tokens_per_s": "decode_tokens_per_s"}.get(key)
        if pkey:
            _draw_paper(ax, [p["temperature"] for p in points], [p[pkey] for p in points], pkey,
                        "paper Table 1 (right axis)")
        else:
            ax.legend(fontsize=7)
        ax.set_title(_axis_label(key) + " vs τ")
    fig.suptitle("KD temperature sweep: slimlm (left axes) and the paper's Table 1 (right axes, levels not comparable)",
                 fontsize=10)
    return [_save(fig, folder, "temperature.png")]


def plot_feature_layer(report, spec, folder) -> list[str]:
    arms, depth_of = report["arms"], lambda a: float(a["value"]) / teacher_layers(spec)
    keys = _panels(arms)
    fig, axes = _figure(len(keys))
    fig2, layers = paper_data.FIGURE2, teacher_layers(spec)
    pxs = [p["layer"] / fig2["teacher_layers"] for p in fig2["points"]]
    for ax, key in zip(axes, keys):
        _draw_ours(ax, arms, key, depth_of)
        ax.set_xlabel("relative depth (distilled layer / teacher layers)")
        ax.set_xlim(0, 1.05)
        top = ax.secondary_xaxis("top", functions=(lambda d: d * layers, lambda l: l / layers))
        top.set_xlabel(f"slimlm teacher layer (of {layers})", fontsize=8)
        label = "paper Figure 2, approximate (read from its text; right axis)"
        if key == "accuracy":
            _draw_paper(ax, pxs, [p["accuracy_pct"] for p in fig2["points"]], "accuracy_pct", label)
            ax.text(0.02, 0.02, "paper: layers 1 and 12 'lower' (no number given)", transform=ax.transAxes,
                    fontsize=7, color="C3")
        elif key == "perplexity":
            _draw_paper(ax, pxs, [p["perplexity"] for p in fig2["points"]], "perplexity", label)
        elif key == "decode_tokens_per_s":
            lo_hi = fig2["decode_tokens_per_s_range"]
            ranges = [(x, lo_hi) for x, p in zip(pxs, fig2["points"]) if p["decode_tokens_per_s"] is None]
            _draw_paper(ax, pxs, [p["decode_tokens_per_s"] for p in fig2["points"]], "decode_tokens_per_s",
                        label, ranges=ranges)
        else:
            ax.legend(fontsize=7)
        ax.set_title(_axis_label(key) + " vs distilled layer")
    fig.suptitle("Feature-distillation layer sweep: slimlm (left axes) and the paper's Figure 2 (right axes; approximate, "
                 f"its layers 1, 6, 12 of {fig2['teacher_layers']} drawn at relative depth)", fontsize=10)
    return [_save(fig, folder, "feature_layer.png")]


def _bars(ax, arms, key, block="metrics", offset=0.0, width=0.8):
    """One bar per arm with ±1 std and faint seed dots."""
    scale = COLUMNS[key].scale if key in COLUMNS else 1
    for i, a in enumerate(arms):
        s = a[block].get(key)
        if not s:
            continue
        ax.bar(i + offset, s["mean"] * scale, width, yerr=(s["std"] or 0) * scale, capsize=4, color="C0",
               alpha=0.8, label="slimlm (mean ± std)" if i == 0 else None)
        ax.scatter([i + offset] * s["n"], [v * scale for v in s["values"]], color="k", alpha=0.3, s=12, zorder=3)
    ax.set_xticks(range(len(arms)), [a["label"] for a in arms])
    ax.set_ylabel(_axis_label(key))
    ax.grid(axis="y", alpha=0.3)


def plot_finetune(report, spec, folder) -> list[str]:
    arms = [a for a in report["arms"] if a["metrics"]] or report["arms"]
    keys = _panels(arms)
    fig, axes = _figure(len(keys))
    paper = {p["method"]: p for p in paper_data.FIGURE3["points"]}
    for ax, key in zip(axes, keys):
        pkey = {"accuracy": "accuracy_pct", "perplexity": "perplexity", "decode_tokens_per_s": "decode_tokens_per_s"}.get(key)
        _bars(ax, arms, key, offset=-0.2 if pkey else 0.0, width=0.4 if pkey else 0.8)
        if pkey:
            twin = ax.twinx()
            for i, a in enumerate(arms):
                p = paper.get(method_of(a))
                if p:
                    twin.bar(i + 0.2, p[pkey], 0.4, color="none", edgecolor="C3", hatch="//",
                             label="paper Figure 3 (right axis)" if i == 0 else None)
            twin.set_ylabel(f"paper: {'accuracy (%)' if pkey == 'accuracy_pct' else _axis_label(key)}", color="C3")
            twin.tick_params(axis="y", colors="C3")
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = twin.get_legend_handles_labels()
            twin.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1))
        ax.set_title(_axis_label(key))
    fig.suptitle("LoRA vs full fine-tuning: slimlm (solid, left axes) and the paper's Figure 3 (hatched, right axes)",
                 fontsize=10)
    names = [_save(fig, folder, "finetune_quality.png")]
    cost = [c.key for c in TRAINING_COLUMNS if any(c.key in a["training"] for a in arms)]
    if cost:
        fig, axes = _figure(len(cost), width=3.6)
        for ax, key in zip(axes, cost):
            _bars(ax, arms, key, block="training")
            ax.set_title(_axis_label(key))
        fig.suptitle("Training cost, slimlm only (the paper gives no training-cost numbers)", fontsize=10)
        names.append(_save(fig, folder, "finetune_cost.png"))
    return names


def _by_seed(summary: dict) -> dict:
    return dict(zip(summary["seeds"], summary["values"]))


def _frontier_panel(ax, report, ykey):
    """Stages connected in order with 2-D error bars, references as labelled stars."""
    from matplotlib.ticker import FuncFormatter

    arms = [a for a in report["arms"] if {"size_on_disk_mb", ykey} <= a["metrics"].keys()]
    scale = COLUMNS[ykey].scale
    xs = [a["metrics"]["size_on_disk_mb"]["mean"] for a in arms]
    ys = [a["metrics"][ykey]["mean"] * scale for a in arms]
    if arms:
        ax.errorbar(xs, ys, xerr=[a["metrics"]["size_on_disk_mb"]["std"] or 0 for a in arms],
                    yerr=[(a["metrics"][ykey]["std"] or 0) * scale for a in arms], fmt="o-", color="C0",
                    capsize=3, label="pipeline stages, in order")
    for i, (x, y, a) in enumerate(zip(xs, ys, arms)):
        ax.annotate(f"{i + 1}. {a['label']}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        size, other = _by_seed(a["metrics"]["size_on_disk_mb"]), _by_seed(a["metrics"][ykey])
        seeds = [s for s in size if s in other]
        ax.scatter([size[s] for s in seeds], [other[s] * scale for s in seeds], color="C0", alpha=0.25, s=12)
    refs = [(n, r["metrics"]) for n, r in report["references"].items() if {"size_on_disk_mb", ykey} <= r["metrics"].keys()]
    for i, (name, m) in enumerate(refs):
        ax.scatter(m["size_on_disk_mb"], m[ykey] * scale, marker="*", s=150, color=f"C{i + 1}", zorder=4,
                   label=f"reference: {name}")
        ax.annotate(name, (m["size_on_disk_mb"], m[ykey] * scale), textcoords="offset points", xytext=(5, -12), fontsize=8)
    allx, ally = xs + [m["size_on_disk_mb"] for _, m in refs], ys + [m[ykey] * scale for _, m in refs]
    for values, set_scale, axis in ((allx, ax.set_xscale, ax.xaxis), (ally, ax.set_yscale, ax.yaxis)):
        if values and min(values) > 0 and max(values) / min(values) > 20:  # log only when values span > 20×
            set_scale("log")
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel(_axis_label(ykey))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_pipeline(report, spec, folder) -> list[str]:
    fig, (left, right) = _figure(2, width=5.5, height=4.4)
    _frontier_panel(left, report, "perplexity")
    left.set_title("size vs perplexity (lower-left is better)")
    _frontier_panel(right, report, "decode_tokens_per_s")
    right.set_title("size vs decode speed (upper-left is better)")
    fig.suptitle("Compression pipeline frontier (slimlm only; the paper reports no pipeline numbers)", fontsize=10)
    return [_save(fig, folder, "pipeline_frontier.png")]


def plot_generic(report, spec, folder) -> list[str]:
    """Any other kind: metric panels against the parameter (numeric) or as bars (not numeric)."""
    arms = report["arms"]
    keys = _panels(arms)
    fig, axes = _figure(len(keys))
    numeric = spec.get("parameter", {}).get("numeric") and all(_finite(a["value"]) for a in arms)
    for ax, key in zip(axes, keys):
        if numeric:
            _draw_ours(ax, arms, key, lambda a: float(a["value"]))
            ax.set_xlabel(spec["parameter"].get("label", spec["parameter"].get("name", "")))
        else:
            _bars(ax, arms, key)
        ax.set_title(_axis_label(key))
    return [_save(fig, folder, "arms.png")]


PLOTTERS = {"temperature": plot_temperature, "feature-layer": plot_feature_layer,
            "finetune": plot_finetune, "pipeline": plot_pipeline}


def _save(fig, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / name, dpi=110)
    return f"plots/{name}"


# ---------------------------------------------------------------- markdown / html

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows] + [""]


def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.0f} s" if s < 120 else f"{s:.0f} s ({s / 60:.1f} min)" if s < 7200 else f"{s:.0f} s ({s / 3600:.2f} h)"


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
    p, ev = report["protocol"], report["protocol"].get("eval", {})
    cache = p.get("teacher_cache")
    lines = ["## Protocol", "",
             f"- teacher: `{p.get('teacher', '?')}` ({p.get('teacher_layers', '?')} layers)",
             f"- data: `{p.get('data', '?')}`"]
    lines += data_lines(p.get("data_info"))
    per = "in total over the training stages" if report["kind"] == "pipeline" else "per arm and seed"
    lines += [f"- training: {_short(p.get('train_tokens', '?'))} train tokens {per}, block size {p.get('block_size', '?')} "
              "(tokens each arm really trained on: see Training cost)",
              f"- evaluation: split `{ev.get('split', '?')}`, {ev.get('tokens', '?')} tokens, sliding window "
              f"{ev.get('window', '?')} / stride {ev.get('stride', '?')}; speed: batch-1 greedy decoding of "
              f"{ev.get('decode_new_tokens', '?')} new tokens, median of {ev.get('repeats', '?')} repeats, "
              f"{ev.get('threads', '?')} threads; tasks: {', '.join(ev.get('tasks') or []) or 'none'}",
              f"- seeds: {', '.join(map(str, report['seeds'])) or '–'}",
              f"- teacher cache: {_settings(cache) if cache else 'none (teacher run live every step)'}",
              f"- base settings: {_settings(p.get('base_settings', {}))}"]
    for task, details in report["downstream_protocol"].items():
        lines.append(f"- downstream task `{task}`:")
        lines += [f"  - {k}: {_short(v)}" for k, v in details.items()]
    lines += [f"- note: {n}" for n in p.get("notes", [])]
    lines += ["", "### Arms", ""]
    lines += _table(["arm", report["parameter"].get("label", "value"), "settings"],
                    [[a["name"], a["label"], _settings(a["settings"])] for a in report["arms"]])
    return lines


def results_section(report) -> list[str]:
    arms = report["arms"]
    cols = [c for c in RESULT_COLUMNS if any(c.key in a["metrics"] for a in arms)]
    lines = ["## Results", "", f"Mean ± std over the seeds found (n); {STD_NOTE}.", ""]
    rows = [[a["name"], a["label"], str(len(a["seeds"]))] + [cell(a["metrics"].get(c.key), c.key) for c in cols]
            for a in arms]
    lines += _table(["arm", "setting", "n"] + [c.label for c in cols], rows)
    missing = report["missing"]
    if missing["arms"] or missing["seeds"]:
        lines += ["**Missing results** (interrupted or unfinished run; rerun the experiment to fill them in):", ""]
        lines += [f"- arm `{n}`: no results at all" for n in missing["arms"]]
        lines += [f"- arm `{n}`: seed(s) {', '.join(map(str, s))} missing" for n, s in missing["seeds"].items()
                  if n not in missing["arms"]]
        lines.append("")
    tcols = [c for c in TRAINING_COLUMNS if any(c.key in a["training"] for a in arms)]
    if tcols:
        lines += ["### Training cost", ""]
        lines += _table(["arm", "n"] + [c.label for c in tcols],
                        [[a["name"], str(len(a["seeds"]))] + [cell(a["training"].get(c.key), c.key) for c in tcols]
                         for a in arms])
    return lines


def references_section(report) -> list[str]:
    refs = report["references"]
    if not refs:
        return ["## References", "", "No reference models were measured.", ""]
    cols = [c for c in RESULT_COLUMNS if any(c.key in r["metrics"] for r in refs.values())]
    rows = [[n, r.get("model_dir") or "–"] + [_fmt(r["metrics"][c.key], c.key) if c.key in r["metrics"] else "–"
                                              for c in cols] for n, r in refs.items()]
    return ["## References", "", "Models measured once, with the same protocol, for comparison.", ""] + \
        _table(["model", "model dir"] + [c.label for c in cols], rows)


def timing_section(report) -> list[str]:
    t = report["timing"]
    rows = [[a["name"], str(len(a["seeds"])), _seconds(a["total_wall_time_s"]),
             _seconds(a["wall_time_s"]["mean"] if a["wall_time_s"] else None)] for a in report["arms"]]
    rows += [[f"reference: {n}", "1", _seconds(s), _seconds(s)] for n, s in t["references_s"].items()]
    rows.append(["**total**", "", f"**{_seconds(t['total_s'])}**", ""])
    return ["## Wall time", "", "Recorded wall time of each finished (arm, seed), training and evaluation included.", ""] + \
        _table(["arm", "seeds", "total", "mean per seed"], rows)


def plots_section(report) -> list[str]:
    lines = ["## Plots", "", "Error bars: ±1 std over seeds; faint dots: individual seeds.", ""]
    for path in report["plots"]:
        lines += [f"![{Path(path).stem}]({path})", ""]
    return lines


def paper_section(report) -> list[str]:
    comp, kind = report["paper"], report["kind"]
    lines = ["## Paper vs slimlm", "", f"**Read this first.** {comp['caveat']}", ""]
    if comp.get("source"):
        lines += [f"Paper source: {comp['source']}." + (" These values are approximate." if comp.get("approximate") else ""), ""]
    lines += [f"- paper note: {n}" for n in comp.get("notes", [])]
    lines += [f"- paper claim ({k}): {v}" for k, v in comp.get("claims", {}).items()]
    lines.append("")
    if comp["rows"]:
        has_cloze = any(r["ours"] and r["ours"].get("cloze_exact_match") for r in comp["rows"])
        header = ["setting", "arm", "paper acc. (%)", "ours next-token acc. (%)"] + (["ours cloze EM"] if has_cloze else []) + \
            ["paper ppl", "ours ppl", "paper tok/s", "ours tok/s"]
        rows = []
        for r in comp["rows"]:
            p, o = r["paper"] or {}, r["ours"] or {}
            x = r["x"]
            setting = (f"τ={x:g}" if kind == "temperature" else f"depth {x:.2f}" if kind == "feature-layer" else str(x))
            if kind == "feature-layer" and p:
                setting += f" (paper layer {p['layer']})"
            row = [setting, r["arm"] or "–", _paper_fmt(p.get("accuracy_pct")), cell(o.get("accuracy"), "accuracy")]
            row += [cell(o.get("cloze_exact_match"), "cloze_exact_match")] if has_cloze else []
            row += [_paper_fmt(p.get("perplexity")), cell(o.get("perplexity"), "perplexity"),
                    _paper_fmt(p.get("decode_tokens_per_s")),
                    cell(o.get("decode_tokens_per_s"), "decode_tokens_per_s")]
            rows.append(row)
        lines += _table(header, rows)
    lines += ["### Where we agree and where we differ", "", f"({SPREAD_NOTE}.)", ""]
    lines += [f"- {s}" for s in comp["sentences"]] + [""]
    return lines


def render_markdown(report) -> str:
    head = [f"# slimlm report: {report['title']}", "",
            f"Run folder `{report['run_dir']}`, created {report.get('created') or '?'} with slimlm "
            f"{report.get('slimlm_version') or '?'}; report generated {report['generated']}.", "",
            "## Command", "", "```", report.get("command") or "(not recorded)", "```", ""]
    body = (protocol_section(report) + results_section(report) + references_section(report) + timing_section(report)
            + plots_section(report) + paper_section(report))
    return "\n".join(head + body) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
code,pre{background:#f6f6f6;padding:2px 4px}pre{padding:8px;overflow-x:auto}"""


def render_html(md_text: str, title: str) -> str:
    import markdown

    body = markdown.markdown(md_text, extensions=["tables", "fenced_code"])
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


# ---------------------------------------------------------------- writing

def _install(tmp: Path, run_dir: Path) -> None:
    """Move the finished files into place: plots first, report.md last, since report.md's existence is
    what marks a report as written."""
    old = run_dir / "plots"
    if old.exists():
        os.replace(old, tmp / "old-plots")
    if (tmp / "plots").exists():
        os.replace(tmp / "plots", old)
    for name in ("report.json", "report.html", "report.md"):
        os.replace(tmp / name, run_dir / name)


def write_report(run_dir, *, force: bool = False) -> dict:
    """Write report.md, report.html, report.json and plots/*.png into RUN_DIR; return what report.json holds.
    Built in a temporary folder inside RUN_DIR and renamed into place, so a crash never leaves half a report."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    existing = [n for n in REPORT_FILES if (run_dir / n).exists()]
    if existing and not force:
        raise SlimlmError(f"{run_dir / existing[0]} already exists: pass --force to overwrite the report")
    report = build_report(run, run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=run_dir))
    try:
        report["plots"] = PLOTTERS.get(report["kind"], plot_generic)(report, run["spec"], tmp / "plots")
        md_text = render_markdown(report)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
        (tmp / "report.md").write_text(md_text, encoding="utf-8")
        (tmp / "report.html").write_text(render_html(md_text, f"slimlm report: {report['title']}"), encoding="utf-8")
        _install(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _ratio(a: float, b: float, fmt: str = ".2f") -> str:
    """a/b as "1.23×", or "n/a" when b is zero (a metric such as exact match can be 0 on a weak model)."""
    return f"{a / b:{fmt}}×" if b else "n/a (divisor is 0)"
