"""The paper's numbers beside ours: matched rows and agreement sentences, computed from the numbers,
never written in advance.

The paper's levels are not comparable with ours (see paper.ACCURACY_CAVEAT), so the sentences speak of
rankings, shapes and seed spread (stats.py); numbers are shown as the report's tables show them
(columns.py), and arms are matched to the paper's points on the swept axis (axis.py).
"""

from __future__ import annotations

import math

import numpy as np

from slimlm.experiments import paper as paper_data
from slimlm.experiments.axis import arm_x, describe, describe_point, method_of, point_x, same_x
from slimlm.experiments.columns import display, paper_value, ratio, said
from slimlm.experiments.control import control_sentences, is_control, swept
from slimlm.experiments.datamix import data_sentences
from slimlm.experiments.frontier import no_counterpart
from slimlm.experiments.pipeline_text import pipeline_sentences
from slimlm.experiments.stats import ranked, shape, spearman, within_spread

# Our metric, the paper's matching key, higher is better, words.
COMPARED = [
    ("accuracy", "accuracy_pct", True, "next-token accuracy"),
    ("perplexity", "perplexity", False, "perplexity"),
    ("cloze_exact_match", "accuracy_pct", True, "cloze exact match"),
]
SHAPE_WORDS = {
    "increasing": "rises throughout",
    "decreasing": "falls throughout",
    "peak": "rises then falls",
    "valley": "falls then rises",
    "mixed": "goes up and down more than once",
    "flat": "is flat",
}


def verdict(same_direction: bool, within: bool | None) -> str:
    """One phrase for a pairwise comparison against the paper, honest about our seed noise."""
    if within is None:
        tail = " (one seed per arm, so our spread is unknown)"
        return ("same direction as the paper" if same_direction else "opposite to the paper") + tail
    if within:
        return (
            "same direction as the paper, but within our seed spread"
            if same_direction
            else "opposite to the paper, but within our seed spread (inconclusive)"
        )
    return "agrees with the paper" if same_direction else "differs from the paper"


def comparison_rows(arms: list[dict], spec: dict) -> list[dict]:
    """Our arms beside the paper's points at the same setting; unmatched points on either side get own rows."""
    kind = spec["kind"]
    points = list(paper_data.BY_KIND[kind]["points"])
    rows = []
    for arm in arms:
        x = arm_x(arm, spec)
        # a control arm (control.py) sits beside the sweep: never matched with the paper's point at its setting
        match = None if is_control(arm) else next((p for p in points if same_x(x, point_x(p, kind), kind)), None)
        if match is not None:
            points.remove(match)
        rows.append(
            {
                "x": x,
                "arm": arm["name"],
                "label": arm["label"],
                **({"control": arm["control"]} if is_control(arm) else {}),
                "paper": match,
                "ours": {k: arm["metrics"].get(k) for k in (*(c[0] for c in COMPARED), "decode_tokens_per_s")},
            }
        )
    rows += [
        {"x": point_x(p, kind), "arm": None, "label": describe_point(p, kind), "paper": p, "ours": None} for p in points
    ]
    if all(isinstance(r["x"], float) for r in rows):
        rows.sort(key=lambda r: r["x"])
    return rows


# ---------------------------------------------------------------- sentences


def _with(arms: list[dict], key: str) -> list[dict]:
    return [a for a in arms if key in a["metrics"]]


def best_sentences(arms, spec, key, pkey, higher, words) -> list[str]:
    """Which arm is best here vs in the paper, whether both optima are interior, and whether our seeds
    separate the winner from the runner-up."""
    text = paper_best(arms, spec, key, pkey, higher, words)
    if text is None:
        return []
    ours = ranked(arms, key, higher)
    return [text + (_runner_up(ours[0], ours[1], spec, key) if len(ours) > 1 else "")]


def paper_best(arms, spec, key, pkey, higher, words) -> str | None:
    """Our best setting beside the paper's and whether they agree (same setting, both interior, or not):
    the paper comparison's conclusion in one sentence; None where either side has no number."""
    kind, source = spec["kind"], paper_data.BY_KIND[spec["kind"]]
    ours = ranked(arms, key, higher)
    points = [p for p in source["points"] if p[pkey] is not None]
    if not ours or not points:
        return None
    best, pbest = ours[0], (max if higher else min)(points, key=lambda p: p[pkey])
    xs = sorted(arm_x(a, spec) for a in ours)
    pxs = sorted(point_x(p, kind) for p in source["points"])
    interior = len(xs) >= 3 and xs[0] < arm_x(best, spec) < xs[-1]
    pinterior = pxs[0] < point_x(pbest, kind) < pxs[-1]
    text = (
        f"Best by {words} here: {describe(best, spec)} ({said(best['metrics'][key], key)}); "
        f"the paper's best by {'accuracy' if pkey == 'accuracy_pct' else words}: {describe_point(pbest, kind)} "
        f"({paper_value(pbest[pkey], pkey)}). "
    )
    if same_x(arm_x(best, spec), point_x(pbest, kind), kind):
        if len(xs) >= 3 and not interior and pinterior:  # a sweep that starts at the paper's optimum cannot find it
            return text + "Same setting, but at an end of our swept range: it does not show an optimum there."
        return text + "Same setting: agree."
    if interior and pinterior:
        return text + (
            "Different settings, but both optima are interior (neither end of the swept range): same kind of optimum."
        )
    where = "interior" if interior else "at an end of our range"
    return text + f"Differ: ours is {where}, the paper's is {'interior' if pinterior else 'at an end'}."


def _runner_up(best, second, spec, key) -> str:
    """Whether our seeds separate the winner from the runner-up."""
    state = {
        None: "one seed per arm, so our seed spread cannot say whether it is distinguishable",
        True: "within our seed spread, so our seeds do not settle the top rank",
        False: "beyond our seed spread",
    }[within_spread(best["metrics"][key], second["metrics"][key])]
    return f" Our runner-up {describe(second, spec)} ({said(second['metrics'][key], key)}) is {state}."


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
    out = [
        f"Shape of {words} against {axis}: ours {SHAPE_WORDS[our_shape]} over {len(ours)} settings; "
        f"the paper's {SHAPE_WORDS[paper_shape]}"
        + (" (read from its text)" if source.get("approximate") else "")
        + (": same shape." if our_shape == paper_shape else ": different shape.")
    ]
    pairs = [
        (a["metrics"][key]["mean"], p[pkey])
        for a in ours
        for p in points
        if same_x(arm_x(a, spec), point_x(p, kind), kind)
    ]
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
    if rho is not None:
        out.append(
            f"Rank correlation (Spearman ρ) of {words} with the paper over the {len(pairs)} shared settings: "
            f"{rho:+.2f} (+1 = same ordering, -1 = reversed)."
        )
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
    timed = [p for p in source["points"] if p[key] is not None]
    prange = source.get(f"{key}_range") or [min(p[key] for p in timed), max(p[key] for p in timed)]
    pslow = min(timed, key=lambda p: p[key])
    text = (
        f"Decode speed: our arms' means span {lo:.1f}–{hi:.1f} tok/s ({spread:.1f}% of their mean; slowest "
        f"{describe(slow, spec)}, fastest {describe(fast, spec)}); the paper reports {prange[0]:g}–{prange[1]:g} "
        f"tok/s, slowest at {describe_point(pslow, kind)}, and reads this as little effect on speed. "
    )
    text += {
        None: "With one seed per arm we cannot tell these differences from noise.",
        True: "The slowest and fastest arms are within our seed spread: consistent with the paper's "
        "'little effect' reading, and no arm is measurably slower.",
        False: "The slowest and fastest arms differ beyond our seed spread: unlike the paper's "
        "'little effect' reading.",
    }[within]
    return [text]


def sweep_sentences(arms, spec) -> list[str]:
    """The swept arms against the paper; control arms only against the swept arm at their setting."""
    out, points = [], swept(arms)
    for key, pkey, higher, words in COMPARED:
        out += best_sentences(points, spec, key, pkey, higher, words)
        out += shape_sentences(points, spec, key, pkey, words)
    return out + sweep_speed_sentence(points, spec) + control_sentences(arms, spec)


def finetune_sentences(arms, spec) -> list[str]:
    """LoRA vs full on quality and speed (paper: full better quality, LoRA faster) and training cost
    (paper: LoRA cheaper, no numbers)."""
    by_method = {method_of(a): a for a in arms if a["metrics"]}
    missing = [m for m in ("lora", "full") if m not in by_method]
    if missing:
        return [f"Cannot compare LoRA with full fine-tuning: no results for {', '.join(missing)}."]
    lora, full = by_method["lora"], by_method["full"]
    compared = COMPARED + [("decode_tokens_per_s", "decode_tokens_per_s", True, "decode speed")]
    out = [s for c in compared if (s := method_sentence(lora, full, *c))]
    params = [x["metrics"].get("parameters") for x in (lora, full)]
    if all(params) and math.isclose(params[0]["mean"], params[1]["mean"], rel_tol=1e-6):
        out.append(
            f"Both evaluated models have the same parameter count ({display(params[0]['mean'], 'parameters')} M), "
            "so their architecture gives no reason for a speed difference."
        )
    return out + _training_cost_sentence(lora, full)


def method_sentence(lora, full, key, pkey, higher, words) -> str | None:
    """One metric, LoRA vs full, here and in the paper's Figure 3, with the verdict against the paper."""
    if key not in lora["metrics"] or key not in full["metrics"]:
        return None
    paper = {p["method"]: p for p in paper_data.FIGURE3["points"]}
    a, b = lora["metrics"][key], full["metrics"][key]
    ours_win = "lora" if (a["mean"] > b["mean"]) == higher else "full"
    paper_win = "lora" if (paper["lora"][pkey] > paper["full"][pkey]) == higher else "full"
    name, adj = {"lora": "LoRA", "full": "full"}, "faster" if key == "decode_tokens_per_s" else "better"
    return (
        f"{words[0].upper() + words[1:]}: LoRA {said(a, key)} vs full {said(b, key)} here "
        f"(LoRA/full = {ratio(a['mean'], b['mean'])}), {name[ours_win]} {adj}; the paper: LoRA "
        f"{paper_value(paper['lora'][pkey], pkey)} vs full {paper_value(paper['full'][pkey], pkey)}, "
        f"{name[paper_win]} {adj} — {verdict(ours_win == paper_win, within_spread(a, b))}."
    )


def _training_cost_sentence(lora, full) -> list[str]:
    costs = []
    for key, words in (
        ("trainable_parameters", "trainable parameters"),
        ("train_tokens_per_s", "training tokens/s"),
        ("peak_memory_mib", "peak training memory"),
        ("optimizer_state_bytes", "optimizer state"),
        ("wall_time_s", "training time"),
    ):
        a, b = lora["training"].get(key), full["training"].get(key)
        if a and b and b["mean"]:
            costs.append(f"{ratio(a['mean'], b['mean'], '.3g')} the {words}")
    if not costs:
        return []
    return [
        "Training cost (the paper gives no numbers, only that LoRA is cheaper): LoRA used "
        + ", ".join(costs)
        + " of full fine-tuning."
    ]


def paper_comparison(arms, spec, references) -> dict:
    """The paper's numbers beside ours and the generated sentences for the report's last section."""
    kind = spec["kind"]
    if kind in paper_data.NO_COUNTERPART:  # a study of slimlm's own: said so, nothing compared
        found = no_counterpart(kind, arms, references)
        return {**found, "sentences": data_sentences(arms, references)} if kind == "data-mix" else found
    source = paper_data.BY_KIND.get(kind)
    if source is None:
        return {
            "source": None,
            "rows": [],
            "caveat": paper_data.ACCURACY_CAVEAT,
            "sentences": [f"The paper has no experiment of kind '{kind}': nothing to compare."],
        }
    if not any(a["metrics"] for a in arms):
        sentences = ["No arm has finished results yet: nothing to compare."]
    elif kind == "pipeline":
        sentences = pipeline_sentences(arms, references)
    elif kind == "finetune":
        sentences = finetune_sentences(arms, spec)
    else:
        sentences = sweep_sentences(arms, spec)
    notes = [source[k] for k in ("accuracy_note", "note") if k in source]
    return {
        "source": source["source"],
        "approximate": source.get("approximate", False),
        "claims": source.get("claims", {}),
        "notes": notes,
        "caveat": paper_data.ACCURACY_CAVEAT,
        "rows": comparison_rows(arms, spec) if source["points"] else [],
        "sentences": sentences,
    }
