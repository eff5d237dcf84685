"""Student shapes at a parameter budget: how many layers, how wide, for `--target-params F --axes A`.

A shape is (layers, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads). Its parameter
count is read off the model its config builds on the meta device (no memory, exact for any architecture,
tied heads counted once), so a budget means the same thing as `sum(p.numel())` of the written model.
Depth-only shapes keep the teacher's width; width-only shapes keep its layers and cut the hidden size to a
few ratios, solving the MLP width to the budget; `both` adds shapes that do some of each. Which one keeps
most of the teacher is measured afterwards (methods/student.py), not assumed: Minitron found width better
than depth on quality for the same size, and depth faster (arXiv 2408.11796, section 4).
"""

from __future__ import annotations

import copy
import math

import torch

from slimlm.errors import SlimlmError

AXES = ("depth", "width", "both")
HIDDEN_RATIOS = (1.0, 0.875, 0.75, 0.625)  # width candidates: hidden size kept, MLP solved to the budget
DEPTH_RATIOS = (0.9, 0.8)  # `both`: share of the teacher's layers kept before width fills the budget


def parameter_count(config) -> int:
    """Parameters of the model `config` builds (shared tensors once), without allocating its weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def shape_of(config) -> dict:
    return {
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
    }


def config_for(config, shape: dict):
    """The teacher's config with `shape`'s sizes (per-layer lists cut to the first `layers` entries only for
    counting; the real student keeps the chosen layers' entries)."""
    new = copy.deepcopy(config)
    new.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for key, value in shape.items():
        if key == "layers":
            new.num_hidden_layers = value
            if isinstance(getattr(new, "layer_types", None), list):
                new.layer_types = new.layer_types[:value]
        else:
            setattr(new, key, value)
    return new


def check_target(target: float) -> None:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
        raise SlimlmError(
            f"--target-params must be a fraction of the teacher's parameters in (0, 1) (got {target!r}); "
            "e.g. 0.55 keeps 55%"
        )


def _granule(size: int, coarse: int) -> int:
    """Widths are kept to multiples of `coarse` (what matmul kernels like) where the model is that wide, else 8."""
    return coarse if size >= 512 and size % coarse == 0 else 8 if size >= 16 else 1


def _hidden_step(hidden: int, heads: int) -> int:
    """Hidden sizes are kept to multiples of the head count (transformers refuses to save a config whose hidden
    size is not one, even with an explicit head_dim: SmolLM2's 9 heads) and of what matmul kernels like: 64,
    or 8 where 64 would leave the width candidates (down to 0.625 of the hidden size) nothing to choose."""
    for coarse in (64, 8):
        step = math.lcm(_granule(hidden, coarse), heads)
        if step <= hidden // 4:
            return step
    return heads


def _solve_intermediate(config, shape: dict, target: int) -> int | None:
    """The MLP width that brings `shape` nearest to `target` parameters (the count is linear in it)."""
    full = config.intermediate_size
    step = _granule(full, 32)  # finer than the hidden size's, so every shape lands near the budget
    at_full = parameter_count(config_for(config, {**shape, "intermediate_size": full}))
    at_step = parameter_count(config_for(config, {**shape, "intermediate_size": step}))
    per_unit = (at_full - at_step) / max(1, full - step)
    if per_unit <= 0:
        return None
    size = round((target - at_step) / per_unit / step) * step + step
    return size if step <= size <= full else None


def smallest_student(config, axes: str) -> tuple[float, str]:
    """(fraction of the teacher's parameters, description) of the smallest shape `axes` can reach: one layer
    (depth), the narrowest hidden size with the narrowest MLP (width), or the fewest of `both`'s layers so."""
    teacher, total = shape_of(config), parameter_count(config)
    n = teacher["layers"]
    step = _hidden_step(teacher["hidden_size"], teacher["num_attention_heads"])
    hidden = max(step, round(teacher["hidden_size"] * min(HIDDEN_RATIOS) / step) * step)
    narrow = {"hidden_size": hidden, "intermediate_size": _granule(config.intermediate_size, 32)}
    shapes = {}
    if axes in ("depth", "both"):
        shapes["1 layer"] = {"layers": 1}
    if axes in ("width", "both"):
        layers = min([n] + ([round(n * r) for r in DEPTH_RATIOS] if axes == "both" else []))
        shapes[f"{layers} layers, hidden {hidden}, MLP {narrow['intermediate_size']}"] = {"layers": layers, **narrow}
    fractions = {name: parameter_count(config_for(config, {**teacher, **s})) / total for name, s in shapes.items()}
    name = min(fractions, key=fractions.get)
    return fractions[name], name


def check_reachable(config, target: float, axes: str) -> None:
    """Refuse a --target-params below the smallest student `axes` can build, instead of building that one."""
    check_target(target)
    if axes not in AXES:
        raise SlimlmError(f"--axes must be one of {', '.join(AXES)} (got {axes!r})")
    smallest, name = smallest_student(config, axes)
    if target < smallest:
        floor = math.ceil(smallest * 1000) / 1000
        raise SlimlmError(
            f"--target-params {target:g} is below the smallest student --axes {axes} can build ({name}: "
            f"{smallest:.1%} of the teacher's parameters); give --target-params {floor:g} or more"
            + (", or --axes both" if axes != "both" and target >= smallest_student(config, "both")[0] else "")
        )


def candidate_shapes(config, target: float, axes: str) -> list[dict]:
    """Shapes near `target` x the teacher's parameters along `axes`, each with its name, params and fraction."""
    check_reachable(config, target, axes)
    teacher = shape_of(config)
    total = parameter_count(config)
    budget = round(target * total)
    n = teacher["layers"]
    shapes = []
    if axes in ("depth", "both"):
        counts = {layers: parameter_count(config_for(config, {"layers": layers})) for layers in (1, n)}
        per_layer = (counts[n] - counts[1]) / max(1, n - 1)
        layers = min(n, max(1, round(1 + (budget - counts[1]) / per_layer))) if per_layer else n
        shapes.append({"name": f"depth: {layers} layers", **teacher, "layers": layers})
    if axes in ("width", "both"):
        depths = [n] + ([round(n * r) for r in DEPTH_RATIOS] if axes == "both" else [])
        for layers in dict.fromkeys(d for d in depths if 1 <= d <= n):
            for ratio in HIDDEN_RATIOS:
                step = _hidden_step(teacher["hidden_size"], teacher["num_attention_heads"])
                hidden = max(step, round(teacher["hidden_size"] * ratio / step) * step)
                shape = {**teacher, "layers": layers, "hidden_size": hidden}
                mlp = _solve_intermediate(config, shape, budget)
                if mlp is None:
                    continue
                where = "width" if layers == n else f"both: {layers} layers"
                shapes.append({"name": f"{where}, hidden {hidden}, MLP {mlp}", **shape, "intermediate_size": mlp})
    for shape in shapes:
        shape["params"] = parameter_count(config_for(config, {k: shape[k] for k in teacher}))
        shape["fraction"] = shape["params"] / total
    unique = {tuple(s[k] for k in teacher): s for s in shapes}
    if not unique:
        raise SlimlmError(
            f"no student shape along --axes {axes} reaches {target:g} of the teacher's {total:,} parameters; "
            "choose a larger --target-params or --axes both"
        )
    return list(unique.values())
