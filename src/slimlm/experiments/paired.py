"""Each arm against its study's control, seed by seed: the comparison a study can carry on its own.

Arms of one seed share the training blocks and the starting student, so the difference arm / control − 1
taken within a seed drops what the seeds share, where two means ± std over seeds do not. The control is the
study's own τ (--temperature) in the temperature sweep, the logit-only arm in the feature-layer sweep and full
fine-tuning in the fine-tuning study; other kinds have none.
"""

from __future__ import annotations

from slimlm.experiments.axis import method_of
from slimlm.experiments.columns import markdown_table
from slimlm.experiments.control import LOGITS
from slimlm.experiments.stats import finite, paired

COMPARED_KEYS = ("perplexity", "accuracy", "general_perplexity", "general_accuracy")


def paired_control(arms: list[dict], spec: dict) -> dict | None:
    """The arm every other arm is compared with seed by seed: the study's own τ (--temperature) in the
    temperature sweep, the logit-only arm in the feature-layer sweep, full fine-tuning in the fine-tuning study."""
    kind = spec["kind"]
    if kind == "temperature":
        tau = (spec.get("protocol", {}).get("base_settings") or {}).get("temperature")
        match = [a for a in arms if not a.get("control") and finite(a.get("value")) and a["value"] == tau]
    elif kind == "feature-layer":
        match = [a for a in arms if a.get("control") == LOGITS]
    elif kind == "finetune":
        match = [a for a in arms if method_of(a) == "full"]
    else:
        match = []
    return match[0] if match else None


def paired_differences(arms: list[dict], spec: dict) -> dict | None:
    """Each arm against the control (paired_control) by seed: the relative difference of every kept metric,
    mean ± std over the seeds both have and each seed's sign (stats.paired)."""
    control = paired_control(arms, spec)
    if control is None:
        return None
    rows = {}
    for arm in arms:
        if arm is control:
            continue
        row = {
            key: d
            for key in COMPARED_KEYS
            if key in arm["metrics"] and key in control["metrics"]
            if (d := paired(arm["metrics"][key], control["metrics"][key]))
        }
        if row:
            rows[arm["name"]] = row
    return {"against": control["name"], "label": control["label"], "arms": rows}


PAIRED_KEYS = (("perplexity", "perplexity"), ("accuracy", "accuracy"), ("general_perplexity", "general ppl"))


def paired_lines(block: dict | None) -> list[str]:
    """The comparison each arm carries: its difference from the control on the same seeds, so the spread of
    what the seeds share (blocks, starting student) drops out."""
    if not block or not block["arms"]:
        return []
    lines = [
        f"### Paired differences against {block['label']}",
        "",
        f"arm / {block['against']} − 1 on the seeds both have: mean ± std over those seeds, then each seed's sign "
        "(+ higher, − lower). A difference whose seeds do not all share one sign is not one this study can carry.",
        "",
    ]
    keys = [(k, w) for k, w in PAIRED_KEYS if any(k in row for row in block["arms"].values())]
    rows = [[name] + [paired_cell(row.get(k)) for k, _ in keys] for name, row in block["arms"].items()]
    return lines + markdown_table(["arm"] + [w for _, w in keys], rows)


def paired_cell(d: dict | None) -> str:
    if not d:
        return "–"
    spread = f" ± {100 * d['std']:.1f}" if d["std"] is not None else ""
    return f"{100 * d['mean']:+.1f}{spread}% ({d['signs']}, n={d['n']})"
