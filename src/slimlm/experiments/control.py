"""Control arms: arms run beside a sweep that are not points of it. Today one: the temperature study's
online-teacher arm (`slimlm experiment temperature --online-control`), distilled at `--temperature` with the
teacher run live every step while every swept arm reads the teacher cache, so the report can say whether the
cache changes the result at that τ.

A control arm is an ordinary arm of the run folder (resumed and reported like the others) whose spec entry
carries `"control"`: the report gives it its own row, the plots draw it apart from the swept line, and the
comparison with the paper never matches it with the paper's point at the same setting.
"""

from __future__ import annotations

from slimlm.experiments.axis import arm_x, describe, same_x
from slimlm.experiments.columns import ratio, said
from slimlm.experiments.stats import within_spread

ONLINE = "online teacher"
ONLINE_LEGEND = "online teacher (control)"
LOGITS = "logit-only KD"  # the feature-layer study's control: the same run with no feature loss
ATTENTION = "attention maps"  # the feature-layer study's attention-distillation arm (paper Fig. 1)
COMPARED = (("perplexity", "perplexity"), ("accuracy", "next-token accuracy"))


def online_arm(temperature: float) -> dict:
    """The control arm of the temperature study: the study's τ, the teacher run online (no teacher cache)."""
    return {
        "name": f"t{temperature:g}-online",
        "value": temperature,
        "label": f"τ={temperature:g}, {ONLINE_LEGEND}",
        "settings": {"temperature": temperature, "teacher_cache": False},
        "control": ONLINE,
    }


def logit_arm() -> dict:
    """The feature-layer study's control: logit KD alone (feature weight 0), drawn at depth 0."""
    return {
        "name": "logits",
        "value": 0,
        "label": f"{LOGITS} (control)",
        "settings": {"feature_layers": "", "feature_weight": 0.0},
        "control": LOGITS,
    }


def attention_arm(teacher_layer: int, student_layer: int, weight: float) -> dict:
    """Attention-map distillation (the paper's Fig. 1) from one teacher layer, beside the feature arms."""
    return {
        "name": f"attention{teacher_layer}",
        "value": teacher_layer,
        "label": f"{ATTENTION}, layer {teacher_layer}",
        "settings": {"attention_layers": f"{teacher_layer}:{student_layer}", "attention_weight": weight},
        "control": ATTENTION,
    }


def is_control(arm: dict) -> bool:
    return bool(arm.get("control"))


def swept(arms: list[dict]) -> list[dict]:
    """The arms that are points of the sweep: what is drawn as one line and matched with the paper."""
    return [a for a in arms if not is_control(a)]


def controls(arms: list[dict]) -> list[dict]:
    return [a for a in arms if is_control(a)]


def cache_lines(arms: list[dict], cache: dict | None, settings_text) -> list[str]:
    """The protocol's teacher-cache lines of a run with control arms: which arms read the cache (in which
    mode) and which ran the teacher live. `settings_text` renders the cache's settings."""
    online = [a["name"] for a in arms if (a.get("settings") or {}).get("teacher_cache") is False]
    cached = [a["name"] for a in arms if a["name"] not in online]
    read = f"{settings_text(cache) if cache else 'none'}; read by the arms {', '.join(cached) or '–'}"
    live = [f"- {ONLINE} (no cache, the teacher run live every step): {', '.join(online)}"] if online else []
    return [f"- teacher cache: {read}"] + live


def control_sentences(arms: list[dict], spec: dict) -> list[str]:
    """Each online-teacher control against the swept arm at its setting: does the difference exceed our seed
    spread? (The other controls are compared by seed in the report's paired table.)"""
    out = []
    for control in (a for a in controls(arms) if a["control"] == ONLINE):
        x = arm_x(control, spec)
        twin = next((a for a in swept(arms) if same_x(arm_x(a, spec), x, spec["kind"])), None)
        head = f"Control (not a paper comparison): {describe(control, spec)}"
        if twin is None:
            out.append(f"{head} has no swept arm at the same setting to compare with.")
            continue
        parts = [_versus(control, twin, key, words) for key, words in COMPARED]
        parts = [p for p in parts if p]
        if not parts:
            out.append(f"{head}: no results for it and {describe(twin, spec)} yet.")
            continue
        out.append(f"{head} vs the cached arm {describe(twin, spec)}: " + "; ".join(parts) + ".")
    return out


def _versus(control: dict, twin: dict, key: str, words: str) -> str | None:
    a, b = control["metrics"].get(key), twin["metrics"].get(key)
    if not (a and b):
        return None
    state = {
        None: "one seed per arm, so our seed spread cannot say whether the cache changes it",
        True: "within our seed spread: the cache does not measurably change it",
        False: "beyond our seed spread: the cache changes it",
    }[within_spread(a, b)]
    times = ratio(a["mean"], b["mean"])
    return f"{words} {said(a, key)} online vs {said(b, key)} cached (online/cached = {times}), {state}"
