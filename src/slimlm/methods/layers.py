"""Depth: a student that keeps some of the teacher's decoder layers, chosen by measurement.

Starting from the teacher's own weights is what makes distillation on a small budget work, and
*which* layers are kept matters by orders of magnitude (docs/distillation.md: every other layer of the
built-in teacher gives perplexity ~1e6, the first 5 + last 10 ~771). So `select_layers` measures
it: it drops each contiguous run of layers in turn and keeps the run whose removal raises
calibration perplexity least (the "block" view of layer redundancy, Gromov et al. 2024).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from slimlm.errors import SlimlmError

# Per-layer list attributes that some configs carry and that must follow the kept layers.
_PER_LAYER_CONFIG_LISTS = ("layer_types",)


def decoder_layers(model) -> nn.ModuleList:
    try:
        return model.model.layers
    except AttributeError:
        raise SlimlmError(
            f"{type(model).__name__} has no model.layers; slimlm supports decoder-only models "
            "laid out like Llama, Qwen, Mistral or Gemma"
        ) from None


def parse_keep_layers(spec: str | list[int], n_layers: int) -> list[int]:
    """'0,1,2,20-29' -> sorted unique layer indices, each checked against the teacher's depth."""
    if isinstance(spec, (list, tuple)):
        items = [str(i) for i in spec]
    else:
        items = [s.strip() for s in str(spec).split(",") if s.strip()]
    layers = []
    try:
        for item in items:
            if "-" in item:
                lo, hi = (int(x) for x in item.split("-"))
                if lo > hi:  # else range() is empty and the message would be about a missing layer
                    raise SlimlmError(
                        f"--keep-layers {spec}: the range {item} is reversed; write it low-high, {hi}-{lo}"
                    )
                if hi >= n_layers:  # before range() builds a list as long as a hostile number
                    layers.append(hi)
                    break
                layers.extend(range(lo, hi + 1))
            else:
                layers.append(int(item))
    except ValueError:
        raise SlimlmError(f"--keep-layers '{spec}' is not a list of layer indices; write e.g. 0,1,2,20-29") from None
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad or not layers:
        raise SlimlmError(
            f"--keep-layers {spec}: layer {bad[0] if bad else '(none)'} is out of range; the teacher "
            f"has layers 0..{n_layers - 1}"
        )
    return sorted(set(layers))


def build_student(teacher, keep_layers: list[int]):
    """A new model with the teacher's layers `keep_layers` and their weights (narrower: methods/width.py)."""
    from transformers import AutoModelForCausalLM

    n_teacher = len(decoder_layers(teacher))
    keep_layers = parse_keep_layers(keep_layers, n_teacher)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep_layers)
    for name in _PER_LAYER_CONFIG_LISTS:
        values = getattr(config, name, None)
        if isinstance(values, list) and len(values) == n_teacher:
            setattr(config, name, [values[i] for i in keep_layers])
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(config, dtype=next(teacher.parameters()).dtype)
    source = teacher.state_dict()
    renamed = {f"model.layers.{new}.": f"model.layers.{old}." for new, old in enumerate(keep_layers)}
    with torch.no_grad():
        for name, param in student.state_dict().items():
            src_name = name
            for new_prefix, old_prefix in renamed.items():
                if name.startswith(new_prefix):
                    src_name = old_prefix + name[len(new_prefix) :]
                    break
            if src_name not in source:
                continue
            param.copy_(source[src_name])
    student.config.slimlm_kept_layers = keep_layers
    return student


@torch.inference_mode()
def calibration_perplexity(model, blocks: torch.Tensor, batch_size: int = 4) -> float:
    """Mean-token perplexity of `model` on (n, T) blocks; used to rank candidate students."""
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start : start + batch_size]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
        total, count = total + nll.item(), count + ids[:, 1:].numel()
    return math.exp(min(total / count, 700))


def select_layers(teacher, calibration: torch.Tensor, n_keep: int, progress=None) -> tuple[list[int], list[dict]]:
    """Keep `n_keep` layers: drop the contiguous run of layers whose removal hurts calibration perplexity least.

    Returns the kept indices and a table of every candidate (dropped range, perplexity), best first.
    """
    layers = decoder_layers(teacher)
    n = len(layers)
    if not 1 <= n_keep <= n:
        raise SlimlmError(f"--layers {n_keep} is out of range; the teacher has {n} layers, keep 1..{n}")
    if n_keep == n:
        return list(range(n)), []
    n_drop = n - n_keep
    table = []
    starts = range(0, n - n_drop + 1)
    iterator = progress(starts, desc="measuring layer importance") if progress else starts
    try:
        for start in iterator:
            kept = [i for i in range(n) if not start <= i < start + n_drop]
            teacher.model.layers = nn.ModuleList([layers[i] for i in kept])
            table.append(
                {
                    "dropped": [start, start + n_drop - 1],
                    "kept": kept,
                    "perplexity": calibration_perplexity(teacher, calibration),
                }
            )
    finally:
        teacher.model.layers = layers
    table.sort(key=lambda row: row["perplexity"])
    return table[0]["kept"], table
