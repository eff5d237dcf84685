"""How much each MLP channel, query head, key/value group and hidden channel carries, measured on calibration text.

Structured pruning (methods/pruning.py) and width students (methods/width.py) both keep the channels that matter
and cut the rest (methods/cutting.py); they rank them by different rules, one function each here, so each command
can name the rule it uses:

- `activation_weight_norms` (`slimlm prune --method structured`): input channel c of a projection scores
  ||X_c||_2 over every calibration token times ||W[:, c]||_2, the norm of the weights that read it. MLP channels
  are scored on down_proj; a key/value group by the L2 norm of the scores of its o_proj input channels
  (`group_norms`). Wanda's ||X_j||_2 is the first factor (`input_norms`).
- `activation_importance` (`slimlm student --student-config` and `--target-params`): Minitron's (Muralidharan
  et al. 2024, arXiv 2407.14679, section 2.2) activations alone, each aggregated per block by the mean over the
  sequence and over the blocks by the L2 norm: MLP neuron c, |x_c| of down_proj's input; query head h, the L2 norm
  of the head's slice of o_proj's input; hidden channel c, |x_c| of every hidden-sized norm's output (the inputs of
  attention and MLP, and the final norm), summed over the norms.

`top` turns scores into the kept indices, in their original order.
"""

from __future__ import annotations

import torch
from torch import nn

from slimlm.errors import SlimlmError
from slimlm.methods.cutting import head_dim
from slimlm.methods.layers import decoder_layers


def top(scores: torch.Tensor, n: int, stable: bool = True) -> torch.Tensor:
    """Indices of the n highest scores, in their original order (so kept channels stay in sequence).

    Ties (dead channels score exactly 0) go to the lower index with `stable`; structured pruning has always used
    torch's default sort, whose ties fall where they fall, and keeps it so the same model keeps the same channels.
    """
    return scores.argsort(descending=True, stable=stable)[:n].sort().values


@torch.no_grad()
def input_norms(model, blocks: torch.Tensor, linears: dict[str, nn.Linear], batch_size: int = 4) -> dict:
    """||X_j||_2 over all calibration tokens for every input column j of each of `linears` (name -> Linear)."""
    sums, hooks = {}, []
    for name, module in linears.items():

        def hook(mod, args, _out, name=name):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + x.square().sum(0)

        hooks.append(module.register_forward_hook(hook))
    try:
        for start in range(0, len(blocks), batch_size):
            model(input_ids=blocks[start : start + batch_size], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {name: s.sqrt() for name, s in sums.items()}


@torch.no_grad()
def activation_weight_norms(model, blocks: torch.Tensor, projection: str) -> list[torch.Tensor]:
    """Per decoder layer, ||X_c||_2 * ||W[:, c]||_2 for every input channel c of `projection` of that layer
    ("mlp.down_proj": MLP channels, "self_attn.o_proj": the heads' output channels)."""
    layers = decoder_layers(model)
    linears = {f"model.layers.{i}.{projection}": layer.get_submodule(projection) for i, layer in enumerate(layers)}
    norms = input_norms(model, blocks, linears)
    return [norms[name] * linear.weight.norm(dim=0) for name, linear in linears.items()]


def group_norms(scores: torch.Tensor, groups: int) -> torch.Tensor:
    """The L2 norm of each of `groups` equal runs of channel scores: a key/value group's from its channels'."""
    return scores.reshape(groups, scores.numel() // groups).norm(dim=1)


def _hidden_norms(model) -> dict[str, nn.Module]:
    """Norm modules over the hidden size (not q_norm/k_norm, which normalise one head)."""
    hidden = model.config.hidden_size
    return {
        name: module
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1].endswith("norm")
        and not name.endswith(("q_norm", "k_norm"))
        and getattr(module, "weight", None) is not None
        and module.weight.numel() == hidden
    }


@torch.no_grad()
def activation_importance(model, blocks: torch.Tensor, batch_size: int = 4) -> dict:
    """Activation importance (Minitron): {"hidden": (h,), "mlp": [(i,) per layer], "heads": [(H,) per layer]}."""
    cfg = model.config
    n_heads, size = cfg.num_attention_heads, head_dim(cfg)
    layers = decoder_layers(model)
    squares = {"hidden": 0, "mlp": [0] * len(layers), "heads": [0] * len(layers)}

    def per_sample(x):  # (B, T, C) -> (B, C): mean over the sequence of |x|
        return x.detach().float().abs().mean(1)

    def mlp_hook(i):
        def hook(_module, args):
            squares["mlp"][i] = squares["mlp"][i] + per_sample(args[0]).square().sum(0)

        return hook

    def head_hook(i):
        def hook(_module, args):
            x = args[0].detach().float()
            per_head = x.reshape(*x.shape[:2], n_heads, size).norm(dim=-1).mean(1)  # (B, H)
            squares["heads"][i] = squares["heads"][i] + per_head.square().sum(0)

        return hook

    def norm_hook(_module, _args, out):
        squares["hidden"] = squares["hidden"] + per_sample(out).square().sum(0)

    hooks = []
    try:
        for i, layer in enumerate(layers):
            try:
                down, o_proj = layer.mlp.down_proj, layer.self_attn.o_proj
            except AttributeError:
                raise SlimlmError(
                    f"width pruning needs decoder layers with mlp.down_proj and self_attn.o_proj "
                    f"({type(model).__name__} has other names); use --layers/--keep-layers (depth) instead"
                ) from None
            hooks.append(down.register_forward_pre_hook(mlp_hook(i)))
            hooks.append(o_proj.register_forward_pre_hook(head_hook(i)))
        hooks.extend(m.register_forward_hook(norm_hook) for m in _hidden_norms(model).values())
        for start in range(0, len(blocks), batch_size):
            model(input_ids=blocks[start : start + batch_size], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {
        "hidden": squares["hidden"].sqrt(),
        "mlp": [s.sqrt() for s in squares["mlp"]],
        "heads": [s.sqrt() for s in squares["heads"]],
    }


def for_layers(importance: dict, kept: list[int]) -> dict:
    """`activation_importance` of a teacher restricted to the decoder layers a student keeps, in its order."""
    return {**importance, "mlp": [importance["mlp"][i] for i in kept], "heads": [importance["heads"][i] for i in kept]}
