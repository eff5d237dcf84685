"""Width pruning by activation importance: a narrower student that keeps the channels that carry the signal.

Minitron (Muralidharan et al. 2024, arXiv 2407.14679, section 2.2) ranks MLP neurons, attention heads and
hidden (embedding) channels from activations alone on a small calibration set, and found that the pruned model
keeps far more of the teacher than one cut to the leading slice of every weight. The ranking is
methods/importance.py's `activation_importance`. `prune_width` cuts every weight that reads or writes a
removed channel (embeddings, a tied or untied head, every norm, every projection) by name (methods/cutting.py),
builds the new model from its config and loads the cut weights strictly, so its parameter count is its config's.
Heads are removed within their key/value group (each group keeps the same number of query heads) or as whole
groups, so grouped-query attention keeps its grouping. With nothing removed it is the same network.
"""

from __future__ import annotations

import copy

import torch

from slimlm.errors import SlimlmError
from slimlm.methods.cutting import cut_parameter, head_dim, unit_rows
from slimlm.methods.importance import top

# Config fields `prune_width` can change; head_dim is not one (RoPE pairs dimensions i and i + d/2, and a
# head's dimensions are not independent channels).
WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


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
    """A new, narrower model: `widths` (WIDTH_FIELDS) kept by `importance` (importance.activation_importance, per
    layer of `model`), every weight that reads or writes a removed channel cut to match."""
    from transformers import AutoModelForCausalLM

    cfg = model.config
    widths = check_widths(cfg, widths)
    size, groups, heads = head_dim(cfg), cfg.num_key_value_heads, cfg.num_attention_heads
    per_group, new_groups = heads // groups, widths["num_key_value_heads"]
    new_per_group = widths["num_attention_heads"] // new_groups
    hidden = top(importance["hidden"], widths.get("hidden_size", cfg.hidden_size))
    layers = []
    for mlp, scores in zip(importance["mlp"], importance["heads"]):  # keep whole groups, then heads within each
        by_group = scores.reshape(groups, per_group)
        kept_groups = top(by_group.sum(1), new_groups)
        kept_heads = [g * per_group + top(by_group[g], new_per_group) for g in kept_groups.tolist()]
        layers.append(
            {
                "mlp": top(mlp, widths.get("intermediate_size", cfg.intermediate_size)),
                "q": unit_rows(torch.cat(kept_heads), size),
                "kv": unit_rows(kept_groups, size),
            }
        )
    config = copy.deepcopy(cfg)
    for key, value in widths.items():
        setattr(config, key, value)
    config.head_dim = size  # hidden_size / num_attention_heads no longer gives it
    state = {name: cut_parameter(name, t, hidden, layers, cfg).contiguous() for name, t in model.state_dict().items()}
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
