"""Pruning (paper section 2: remove low-importance weights), unstructured and structured.

Unstructured (magnitude, Wanda) and N:M sparsity zero weights in place: the model keeps its shape,
so on a CPU it gets no faster (docs/compression.md: sparse matmuls run at 0.3x on CPU) and only compresses
better. Structured pruning physically removes MLP channels or attention key/value groups, writes
a smaller config, and so really gets smaller and faster.

Importance is measured, not assumed (methods/importance.py): Wanda scores a weight by |W_ij| * ||X_j||_2
(Sun et al. 2023), with X the layer's inputs on calibration text; structured pruning ranks a channel or group
by the norm of its activations times the norm of the weights that read them (`activation_weight_norms`) and
cuts the rest with methods/cutting.py.
"""

from __future__ import annotations

import torch
from torch import nn

from slimlm.errors import SlimlmError
from slimlm.methods.cutting import cut_layer, head_dim, unit_rows
from slimlm.methods.importance import activation_weight_norms, group_norms, input_norms, top
from slimlm.methods.layers import decoder_layers

METHODS = ("magnitude", "wanda", "nm", "structured")


def check_sparsity(sparsity: float) -> None:
    """A fraction in [0, 1); a string or NaN from a recipe is refused here rather than failing mid-run."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise SlimlmError(f"--sparsity must be in [0, 1) (got {sparsity!r}); e.g. 0.5 removes half the weights")


def prunable_linears(model) -> dict[str, nn.Linear]:
    """The Linear layers inside decoder layers (embeddings and lm_head are left dense)."""
    return {
        f"model.layers.{i}.{name}": module
        for i, layer in enumerate(decoder_layers(model))
        for name, module in layer.named_modules()
        if isinstance(module, nn.Linear)
    }


def _zero_lowest(weight: torch.Tensor, scores: torch.Tensor, sparsity: float, per_row: bool) -> None:
    """Zero exactly round(sparsity * n) weights with the lowest scores (per output row for Wanda)."""
    if per_row:
        k = round(sparsity * weight.shape[1])
        if k:
            idx = scores.argsort(dim=1)[:, :k]
            weight.scatter_(1, idx, 0.0)
    else:
        k = round(sparsity * weight.numel())
        if k:
            idx = scores.reshape(-1).argsort()[:k]
            weight.view(-1)[idx] = 0.0


@torch.no_grad()
def prune_unstructured(
    model, sparsity: float, method: str = "magnitude", scope: str = "layer", calibration: torch.Tensor | None = None
) -> dict:
    """Magnitude (|W|) or Wanda (|W| * ||X||) pruning to exactly the requested sparsity."""
    check_sparsity(sparsity)
    if scope not in ("layer", "global"):
        raise SlimlmError(f"--scope must be layer or global (got {scope!r})")
    linears = prunable_linears(model)
    if method == "wanda" and calibration is None:  # before input_norms, which would fail on None
        raise SlimlmError("--method wanda needs calibration text: pass --calibration DATA")
    norms = input_norms(model, calibration, linears) if method == "wanda" else {}
    scores = {
        name: m.weight.abs() * norms[name] if method == "wanda" else m.weight.abs() for name, m in linears.items()
    }
    if scope == "global" and sparsity > 0:
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        k = round(sparsity * flat.numel())
        threshold_idx = flat.argsort()[:k]
        mask = torch.ones_like(flat, dtype=torch.bool)
        mask[threshold_idx] = False
        offset = 0
        for m in linears.values():
            n = m.weight.numel()
            m.weight.mul_(mask[offset : offset + n].view_as(m.weight))
            offset += n
    else:
        for name, m in linears.items():
            _zero_lowest(m.weight, scores[name], sparsity, per_row=method == "wanda")
    return sparsity_report(model)


@torch.no_grad()
def prune_nm(model, n: int = 2, m: int = 4, calibration: torch.Tensor | None = None) -> dict:
    """N:M sparsity: in every group of m consecutive input weights keep the n most important."""
    if not 0 < n < m:
        raise SlimlmError(f"N:M needs 0 < N < M (got {n}:{m}); the usual pattern is 2:4")
    linears = prunable_linears(model)
    norms = input_norms(model, calibration, linears) if calibration is not None else {}
    for name, lin in linears.items():
        w = lin.weight
        if w.shape[1] % m:
            raise SlimlmError(f"{name} has {w.shape[1]} inputs, not a multiple of M={m}; choose another M")
        score = w.abs() * norms[name] if name in norms else w.abs()
        groups = score.reshape(w.shape[0], -1, m)
        drop = groups.argsort(dim=-1)[..., : m - n]
        mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        w.mul_(mask.reshape_as(w))
    return sparsity_report(model)


def sparsity_report(model) -> dict:
    """Achieved sparsity per kind of layer (q_proj, up_proj, ...) and over all prunable weights."""
    zeros, totals = {}, {}
    for name, lin in prunable_linears(model).items():
        kind = name.rsplit(".", 1)[-1]
        zeros[kind] = zeros.get(kind, 0) + int((lin.weight == 0).sum())
        totals[kind] = totals.get(kind, 0) + lin.weight.numel()
    report = {kind: zeros[kind] / totals[kind] for kind in totals}
    report["all"] = sum(zeros.values()) / max(1, sum(totals.values()))
    return report


# --------------------------------------------------------------------------- structured


@torch.no_grad()
def prune_mlp_channels(model, sparsity: float, calibration: torch.Tensor) -> dict:
    """Remove the same number of MLP channels from every layer, the least important by measurement.

    Channel c's importance: ||activation_c|| (input of down_proj) * ||down_proj[:, c]|| (activation x weight norm).
    """
    check_sparsity(sparsity)
    scores = activation_weight_norms(model, calibration, "mlp.down_proj")
    inter = model.config.intermediate_size
    keep_n = max(1, inter - round(sparsity * inter))
    for layer, score in zip(decoder_layers(model), scores):
        cut_layer(layer, {"mlp": top(score, keep_n, stable=False)})
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = keep_n
    model.config.intermediate_size = keep_n
    return {"intermediate_size": [inter, keep_n]}


@torch.no_grad()
def prune_kv_groups(model, n_remove: int, calibration: torch.Tensor) -> dict:
    """Remove whole key/value groups (with their query heads) from every layer, least important first.

    Under grouped-query attention a KV head serves num_heads / num_kv_heads query heads, so the unit that
    can be removed is the group. Importance: the L2 norm, over the group's o_proj input channels, of each
    channel's activation norm times the norm of the o_proj column that reads it (activation x weight norm).
    """
    cfg = model.config
    n_kv, n_heads, size = cfg.num_key_value_heads, cfg.num_attention_heads, head_dim(cfg)
    if not 0 <= n_remove < n_kv:
        raise SlimlmError(
            f"cannot remove {n_remove} key/value groups: the model has {n_kv} per layer; remove 0..{n_kv - 1}"
        )
    if n_remove == 0:
        return {"num_key_value_heads": [n_kv, n_kv]}
    per_group = n_heads // n_kv
    scores = activation_weight_norms(model, calibration, "self_attn.o_proj")
    keep_groups = n_kv - n_remove
    for layer, score in zip(decoder_layers(model), scores):
        groups = top(group_norms(score, n_kv), keep_groups, stable=False)
        cut_layer(layer, {"q": unit_rows(unit_rows(groups, per_group), size), "kv": unit_rows(groups, size)})
        attn = layer.self_attn
        for attr, value in (("num_heads", keep_groups * per_group), ("num_key_value_heads", keep_groups)):
            if hasattr(attn, attr):
                setattr(attn, attr, value)
    cfg.num_attention_heads = keep_groups * per_group
    cfg.num_key_value_heads = keep_groups
    cfg.head_dim = size  # hidden_size / heads no longer gives it
    return {"num_key_value_heads": [n_kv, keep_groups], "num_attention_heads": [n_heads, keep_groups * per_group]}
