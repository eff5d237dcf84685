"""The arms of the paper's three studies (section 3.2): which runs each sweep holds and what sets them apart.

- temperature   (Table 1): one arm per τ, plus the online-teacher control with --online-control
- feature-layer (Fig. 2): the logit-only control, one arm per teacher layer (mapped to the student layer at
                 the same relative depth), and one attention-map arm (Fig. 1) from the middle layer; β from
                 the validation split with --weight-grid (validation_grid.py)
- finetune      (Fig. 3): LoRA and full fine-tuning, each at its own learning rate with --lr-grid
"""

from __future__ import annotations

from slimlm.errors import SlimlmError
from slimlm.experiments.common import layer_count, parse_list
from slimlm.experiments.control import attention_arm, logit_arm, online_arm
from slimlm.experiments.validation_grid import lr_rates

METHODS = {"lora": "LoRA", "full": "full"}


def temperature_arms(s, values) -> tuple[dict, list[dict]]:
    values = parse_list(values, float)
    parameter = {"name": "temperature", "label": "KD temperature τ", "numeric": True}
    arms = [{"name": f"t{v:g}", "value": v, "label": f"τ={v:g}", "settings": {"temperature": v}} for v in values]
    arms += [online_arm(s.temperature)] if s.online_control else []  # the control: no cache, same τ
    return parameter, arms


def feature_layer_arms(s, values, teacher_layers: int) -> tuple[dict, list[dict], list[int], dict | None]:
    """(parameter, arms, the teacher layers distilled from, the feature-weight grid or None: its candidates
    trained as the arm nearest the middle of the teacher)."""
    layers = parse_list(values if values is not None else default_layers(teacher_layers), int, "--layers")
    if any(not 1 <= v <= teacher_layers for v in layers):
        raise SlimlmError(f"--layers {layers}: teacher layers are 1..{teacher_layers} (outputs of decoder layers)")
    n_student = layer_count(s.student) if s.student else s.student_layers
    parameter = {
        "name": "layer",
        "label": "teacher layer distilled from",
        "numeric": True,
        "teacher_layers": teacher_layers,
    }
    arms = [logit_arm()] + [
        {
            "name": f"layer{v}",
            "value": v,
            "label": f"layer {v}",
            "settings": {
                "feature_layers": f"{v}:{max(1, round(v * n_student / teacher_layers))}",
                "feature_weight": s.feature_weight,
            },
        }
        for v in layers
    ]
    # the paper's Fig. 1 attention transfer, from the middle layer (0-based decoder layers): attention maps are
    # not cached, so this arm runs the teacher online
    middle = (teacher_layers - 1) // 2
    attention = attention_arm(middle, round(middle * (n_student - 1) / max(1, teacher_layers - 1)), s.attention_weight)
    attention["settings"]["teacher_cache"] = False
    weights = _positive(s.weight_grid, "--weight-grid")
    middle_arm = min(arms[1:], key=lambda a: abs(a["value"] / teacher_layers - 0.5))["name"]
    return parameter, arms + [attention], layers, {middle_arm: weights} if weights else None


def finetune_arms(s, values) -> tuple[dict, list[dict], dict | None]:
    """(parameter, arms, the learning-rate grid per method or None)."""
    methods = parse_list(values, str, "--methods")
    bad = [v for v in methods if v not in METHODS]
    if bad:
        raise SlimlmError(f"--methods {methods}: unknown {', '.join(bad)}; use lora and/or full")
    parameter = {"name": "method", "label": "fine-tuning method", "numeric": False}
    arms = [
        {
            "name": v,
            "value": v,
            "label": METHODS[v],
            "settings": {"method": v, "rank": s.rank} if v == "lora" else {"method": v},
        }
        for v in methods
    ]
    multiples = _positive(s.lr_grid, "--lr-grid")
    return parameter, arms, lr_rates(methods, multiples) if multiples else None


def _positive(text, flag: str) -> list[float] | None:
    values = parse_list(text, float, flag) if text is not None else None
    if values is not None and not all(v > 0 for v in values):
        raise SlimlmError(f"{flag} {text}: every value must be > 0")
    return values


def default_layers(teacher_layers: int) -> list[int]:
    """Layers at the paper's relative depths (its 12-layer model's 1, 6, 12) plus two between."""
    picks = [1 / 12, 0.25, 0.5, 0.75, 1.0]
    return sorted({max(1, round(f * teacher_layers)) for f in picks})
