"""Cutting a Llama-like decoder down to kept channels: the one place that slices its weights.

Structured pruning (methods/pruning.py) narrows a model in place; a width student (methods/width.py) is a new
model built from a narrower config and loaded with cut weights. Both keep some MLP channels ("mlp"), query heads
("q": their q_proj rows), key/value groups ("kv": their k_proj/v_proj rows) and, for width students, hidden
channels ("hidden"), chosen by methods/importance.py. Which of these a projection's rows (outputs) and columns
(inputs) follow is written once, in `PROJECTIONS`; `cut_layer` applies it to a layer's modules, `cut_parameter`
to a state dict entry by name. A kept set that is absent (or None) keeps everything.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from slimlm.errors import SlimlmError

# projection -> (the kept set its rows follow, the one its columns follow)
PROJECTIONS = {
    "q_proj": ("q", "hidden"),
    "k_proj": ("kv", "hidden"),
    "v_proj": ("kv", "hidden"),
    "o_proj": ("hidden", "q"),
    "gate_proj": ("mlp", "hidden"),
    "up_proj": ("mlp", "hidden"),
    "down_proj": ("hidden", "mlp"),
}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")  # under layer.self_attn; the rest under layer.mlp
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def unit_rows(units: torch.Tensor, size: int) -> torch.Tensor:
    """Rows of whole units of `size` rows each: the heads of kept groups, or the weight rows of kept heads."""
    return (units[:, None] * size + torch.arange(size)).flatten()


def cut_tensor(tensor: torch.Tensor, rows=None, columns=None) -> torch.Tensor:
    """`tensor` with only the kept rows and then the kept columns (None keeps all)."""
    if rows is not None:
        tensor = tensor[rows]
    if columns is not None:
        tensor = tensor[:, columns]
    return tensor


@torch.no_grad()
def narrow_linear(linear: nn.Linear, rows=None, columns=None) -> nn.Linear:
    """A new Linear holding the kept output rows and input columns of `linear` (and its bias's kept rows)."""
    weight = cut_tensor(linear.weight, rows, columns)
    bias = None if linear.bias is None else cut_tensor(linear.bias, rows)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return new


def cut_layer(layer: nn.Module, kept: dict) -> None:
    """Replace, in place, every projection of a decoder layer that reads or writes a cut channel by its narrower
    copy (attention first, in PROJECTIONS' order); the module attributes that count heads are the caller's."""
    for name, (rows, columns) in PROJECTIONS.items():
        if kept.get(rows) is None and kept.get(columns) is None:
            continue
        parent = layer.self_attn if name in ATTENTION else layer.mlp
        setattr(parent, name, narrow_linear(getattr(parent, name), kept.get(rows), kept.get(columns)))


def cut_parameter(name: str, tensor: torch.Tensor, hidden, layers: list[dict], config) -> torch.Tensor:
    """The state dict entry `name` cut to the kept `hidden` channels and, in decoder layer i, to `layers[i]`;
    embeddings, head and every hidden-sized norm follow `hidden`, per-head norms (q_norm, k_norm) stay whole."""
    match = _LAYER.match(name)
    if match is None and tensor.shape[-1] == config.hidden_size:  # embeddings, head, final norm
        return tensor if hidden is None else tensor[..., hidden]
    if match is None:
        raise _cannot_cut(name, config)
    i, part = int(match[1]), match[2]
    module, _, kind = part.rpartition(".")
    leaf = module.rsplit(".", 1)[-1]
    if leaf in ("q_norm", "k_norm"):
        return tensor
    if leaf in PROJECTIONS:
        kept = {**layers[i], "hidden": hidden}
        rows, columns = PROJECTIONS[leaf]
        return cut_tensor(tensor, kept.get(rows), kept.get(columns) if kind == "weight" else None)
    if leaf.endswith("norm") and tensor.dim() == 1 and tensor.numel() == config.hidden_size:
        return cut_tensor(tensor, hidden)
    raise _cannot_cut(name, config)


def _cannot_cut(name: str, config) -> SlimlmError:
    return SlimlmError(
        f"width pruning does not know how to cut {name} of a {config.model_type} model; use --layers/--keep-layers "
        "(depth) for this architecture"
    )
