"""Where an arm, and a point of the paper, sits on the swept axis (KD temperature τ, relative teacher depth,
or the fine-tuning method), so ours and the paper's can be matched, ordered and drawn side by side.

Depth is relative (layer / teacher layers) because the paper's teacher (about 12 layers, section 3.2,
Figure 2) and ours differ in depth.
"""

from __future__ import annotations

import math

from slimlm.experiments import paper as paper_data
from slimlm.experiments.stats import finite


def teacher_layers(spec: dict) -> int:
    return int(spec.get("parameter", {}).get("teacher_layers") or spec.get("protocol", {}).get("teacher_layers") or 1)


def method_of(arm: dict) -> str:
    """'lora' or 'full' from an arm's value or name, so any arm naming works against Figure 3."""
    text = f"{arm.get('value', '')} {arm.get('name', '')}".lower()
    return "lora" if "lora" in text else "full" if "full" in text else str(arm.get("value"))


def arm_x(arm: dict, spec: dict):
    """Where an arm sits on the swept axis: τ, relative teacher depth, or the method name."""
    kind = spec["kind"]
    if kind == "feature-layer":
        return float(arm["value"]) / teacher_layers(spec)
    if kind == "finetune":
        return method_of(arm)
    if spec.get("parameter", {}).get("numeric") and finite(arm.get("value")):
        return float(arm["value"])
    return arm.get("value")


def point_x(point: dict, kind: str):
    """Where one of the paper's points sits on the same axis."""
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


def describe(arm: dict, spec: dict) -> str:
    """How a sentence names an arm: its label, plus relative depth for layer sweeps."""
    if spec["kind"] == "feature-layer" and not arm.get("control"):
        return f"layer {arm['value']} of {teacher_layers(spec)} (depth {arm_x(arm, spec):.2f})"
    return arm["label"]


def describe_point(point: dict, kind: str) -> str:
    """How a sentence names one of the paper's points."""
    if kind == "temperature":
        return f"τ={point['temperature']:g}"
    if kind == "feature-layer":
        return f"layer {point['layer']} of {paper_data.FIGURE2['teacher_layers']} (depth {point_x(point, kind):.2f})"
    return point.get("method", "?")
