"""Width pruning by activation importance: a narrower student that keeps the channels that carry the signal.

Minitron (Muralidharan et al. 2024, arXiv 2407.14679, section 2.2) ranks MLP neurons, attention heads and
hidden (embedding) channels from activations alone on a small calibration set, aggregating per sample by the
mean over the sequence and over the batch by the L2 norm, and found that the pruned model keeps far more of
the teacher than one cut to the leading slice of every weight. `measure_importance` does the same with one
forward pass and hooks:

- MLP neuron c of a layer: the input of down_proj, |x_c| averaged over the sequence;
- query head h: the L2 norm of the head's output (the o_proj input slice), averaged over the sequence;
- hidden channel c: the output of every hidden-sized norm (the inputs of attention and MLP, and the final
  norm), |x_c| averaged over the sequence, summed over the norms;

each then the L2 norm over the calibration blocks. `prune_width` cuts every weight that reads or writes a
removed channel (embeddings, a tied or untied head, every norm, every projection) by name, builds the new
model from its config and loads the cut weights strictly, so its parameter count is its config's. Heads are
removed within their key/value group (each group keeps the same number of query heads) or as whole groups,
so grouped-query attention keeps its grouping. With nothing removed it is the same network.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from slimlm.errors import SlimlmError
from slimlm.methods.layers import decoder_layers

# Config fields `prune_width` can change; head_dim is not one (RoPE pairs dimensions i and i + d/2, and a
# head's dimensions are not independent channels).
WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_READ_HIDDEN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # Linear layers whose input is hidden


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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
def measure_importance(model, blocks: torch.Tensor, batch_size: int = 4) -> dict:
    """Activation importance (Minitron): {"hidden": (h,), "mlp": [(i,) per layer], "heads": [(H,) per layer]}."""
    cfg = model.config
    n_heads, head_dim = cfg.num_attention_heads, _head_dim(cfg)
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
            per_head = x.reshape(*x.shape[:2], n_heads, head_dim).norm(dim=-1).mean(1)  # (B, H)
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
    """The teacher's importance restricted to the decoder layers a student keeps, in its order."""
    return {**importance, "mlp": [importance["mlp"][i] for i in kept], "heads": [importance["heads"][i] for i in kept]}


def _top(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n highest scores, in their original order (so kept channels stay in sequence)."""
    return scores.argsort(descending=True, stable=True)[:n].sort().values


def check_widths(config, widths: dict) -> dict:
    """The requested widths, every one a positive integer no larger than the model's, heads divisible by groups."""
    for key, value in widths.items():
        if key == "head_dim":
            raise SlimlmError(
                "student config head_dim cannot be changed: a head's dimensions are rotary pairs, not independent "
                "channels; remove heads instead (num_attention_heads, num_key_value_heads)"
            )
        if key not in WIDTH_FIELDS:
            raise SlimlmError(f"student config key '{key}' cannot be changed; allowed: {', '.join(WIDTH_FIELDS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SlimlmError(f"student config {key}={value!r} must be a positive integer")
        if value > getattr(config, key):
            raise SlimlmError(
                f"student config {key}={value} is wider than the teacher's {getattr(config, key)}; a student built "
                "from the teacher can only be narrower"
            )
    groups = widths.get("num_key_value_heads", config.num_key_value_heads)
    per_group = config.num_attention_heads // config.num_key_value_heads
    heads = widths.get("num_attention_heads", groups * per_group)
    if heads % groups or heads // groups > per_group:
        raise SlimlmError(
            f"student config: {heads} attention heads over {groups} key/value groups; each group keeps 1..{per_group} "
            f"query heads, so num_attention_heads must be a multiple of num_key_value_heads up to {groups * per_group}"
        )
    checked = {"num_key_value_heads": groups, "num_attention_heads": heads, **widths}
    _check_saveable(config, checked)
    return checked


def _check_saveable(config, widths: dict) -> None:
    """Some architectures' configs (Llama, Gemma 3) refuse a hidden size that is not a multiple of the head
    count, even with an explicit head_dim, and only say so when the model is saved: ask the config now."""
    narrowed = copy.deepcopy(config)
    for key, value in widths.items():
        setattr(narrowed, key, value)
    validate = getattr(narrowed, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except Exception as exc:  # the library's own validation error, whatever its class
        cause = str(getattr(exc, "__cause__", None) or exc).strip().splitlines()[-1]
        heads = widths["num_attention_heads"]
        hidden = widths.get("hidden_size", config.hidden_size)
        raise SlimlmError(
            f"student config: transformers refuses this shape ({cause}); e.g. keep hidden_size a multiple of the "
            f"{heads} attention heads ({max(heads, hidden // heads * heads)})"
        ) from None


@torch.no_grad()
def prune_width(model, importance: dict, widths: dict):
    """A new, narrower model: `widths` (WIDTH_FIELDS) kept by `importance` (measure_importance, per layer of
    `model`), every weight that reads or writes a removed channel cut to match."""
    from transformers import AutoModelForCausalLM

    cfg = model.config
    widths = check_widths(cfg, widths)
    head_dim, groups, heads = _head_dim(cfg), cfg.num_key_value_heads, cfg.num_attention_heads
    per_group, new_groups = heads // groups, widths["num_key_value_heads"]
    new_per_group = widths["num_attention_heads"] // new_groups
    hidden = _top(importance["hidden"], widths.get("hidden_size", cfg.hidden_size))
    mlp = [_top(s, widths.get("intermediate_size", cfg.intermediate_size)) for s in importance["mlp"]]
    q_rows, kv_rows = [], []
    for scores in importance["heads"]:  # per layer: keep whole groups, then heads within each kept group
        by_group = scores.reshape(groups, per_group)
        kept_groups = _top(by_group.sum(1), new_groups)
        kept_heads = [g * per_group + _top(by_group[g], new_per_group) for g in kept_groups.tolist()]
        q_rows.append(_rows(torch.cat(kept_heads), head_dim))
        kv_rows.append(_rows(kept_groups, head_dim))

    def cut(name: str, tensor: torch.Tensor) -> torch.Tensor:
        match = _LAYER.match(name)
        if match is None and tensor.shape[-1] == cfg.hidden_size:  # embeddings, head, final norm
            return tensor[..., hidden]
        if match is None:
            raise SlimlmError(
                f"width pruning does not know how to cut {name} of a {cfg.model_type} model; use "
                "--layers/--keep-layers (depth) for this architecture"
            )
        i, part = int(match[1]), match[2]
        module, _, kind = part.rpartition(".")
        leaf = module.rsplit(".", 1)[-1]
        if leaf in ("q_norm", "k_norm"):
            return tensor
        rows = {"q_proj": q_rows[i], "k_proj": kv_rows[i], "v_proj": kv_rows[i], "gate_proj": mlp[i]}
        rows["up_proj"] = mlp[i]
        if leaf in rows:
            return tensor[rows[leaf]][:, hidden] if kind == "weight" else tensor[rows[leaf]]
        if leaf in ("o_proj", "down_proj"):
            columns = q_rows[i] if leaf == "o_proj" else mlp[i]
            return tensor[hidden][:, columns] if kind == "weight" else tensor[hidden]
        if leaf.endswith("norm") and tensor.dim() == 1 and tensor.numel() == cfg.hidden_size:
            return tensor[hidden]
        raise SlimlmError(
            f"width pruning does not know how to cut {name} of a {cfg.model_type} model; use --layers/--keep-layers "
            "(depth) for this architecture"
        )

    config = copy.deepcopy(cfg)
    for key, value in widths.items():
        setattr(config, key, value)
    config.head_dim = head_dim  # hidden_size / num_attention_heads no longer gives it
    state = {name: cut(name, t).contiguous() for name, t in model.state_dict().items()}
    pruned = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    try:
        pruned.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SlimlmError(
            f"width pruning could not fit the cut weights into a {cfg.model_type} model of the new config "
            f"({str(exc).splitlines()[0]}); use --layers/--keep-layers (depth) for this architecture"
        ) from None
    _keep_embedding_scale(model, pruned)
    for key in ("slimlm_kept_layers",):
        if hasattr(cfg, key):
            setattr(pruned.config, key, getattr(cfg, key))
    return pruned.train(model.training)


def _rows(units: torch.Tensor, size: int) -> torch.Tensor:
    """Weight rows of whole units (heads or groups) of `size` rows each."""
    return (units[:, None] * size + torch.arange(size)).flatten()


def _keep_embedding_scale(original, pruned) -> None:
    """Gemma scales its embeddings by sqrt(hidden_size), a buffer rebuilt from the config: a narrower model
    would scale them less. Fold the old scale into the embedding weights; where the head shares them, undo
    that factor on the final norm's gain, so the logits are unchanged."""
    old = getattr(original.get_input_embeddings(), "embed_scale", None)
    new = getattr(pruned.get_input_embeddings(), "embed_scale", None)
    if old is None or new is None or torch.equal(torch.as_tensor(old).float(), torch.as_tensor(new).float()):
        return
    factor = float(old) / float(new)
    embedding = pruned.get_input_embeddings().weight
    embedding.mul_(factor)
    head = pruned.get_output_embeddings()
    if head is not None and head.weight.data_ptr() == embedding.data_ptr():
        norm = pruned.model.norm
        offset = _gain_offset(norm)
        norm.weight.copy_((norm.weight.float() + offset) / factor - offset)


def _gain_offset(norm) -> float:
    """1.0 for a norm whose gain is (1 + weight) (Gemma), 0.0 for one whose gain is the weight (Llama)."""
    saved = norm.weight.detach().clone()
    try:
        norm.weight.zero_()
        out = norm(torch.ones(1, saved.numel(), dtype=saved.dtype, device=saved.device))
    finally:
        norm.weight.copy_(saved)
    return 1.0 if float(out.abs().mean()) > 0.5 else 0.0
