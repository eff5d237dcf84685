"""LoRA (peft) and full fine-tuning of a model: which weights train, and what that costs.

LoRA (paper section 2) freezes W and trains ΔW = B·A with A (r × d_in), B (d_out × r), r ≪ d, so a
targeted Linear adds r·(d_in + d_out) trainable parameters. After training the update is merged
(W + (lora_alpha / r)·B·A), so the published model is a plain Hugging Face model of the original
shape; the adapter is kept beside it in peft's own format.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from slimlm.errors import SlimlmError


def layer_linear_names(model) -> list[str]:
    """Leaf names of every Linear inside the decoder layers (attention and MLP projections; not lm_head)."""
    from slimlm.methods.layers import decoder_layers

    names = set()
    for layer in decoder_layers(model):
        for name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear):
                names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def target_modules(model, requested: str | None) -> list[str]:
    """The requested comma list, checked against the model, or every attention and MLP projection."""
    available = layer_linear_names(model)
    if requested is None:
        if not available:
            raise SlimlmError("found no Linear layers in the model's decoder layers; name them with --target-modules")
        return available
    names = [n.strip() for n in requested.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SlimlmError(
            f"--target-modules {', '.join(unknown)} not found in the model; available: {', '.join(available)}"
        )
    return names


def add_lora(model, *, rank: int, lora_alpha: float, dropout: float, targets: list[str], seed: int = 0):
    """Wrap `model` in a peft LoRA model; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=targets, bias="none", task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def trainable_parameters(model) -> dict:
    """Trainable and total unique parameters (tied weights once) and the trainable share in percent."""
    total, trainable = {}, {}
    for p in model.parameters():
        total[p.data_ptr()] = p.numel()
        if p.requires_grad:
            trainable[p.data_ptr()] = p.numel()
    n_total, n_train = sum(total.values()), sum(trainable.values())
    return {"trainable": n_train, "total": n_total, "percent": 100.0 * n_train / max(n_total, 1)}


def optimizer_state_bytes(optimizer) -> int:
    """Bytes held in the optimizer's state tensors (AdamW: two moments per trainable parameter)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    return sum(
        t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)
    )


class MergedWithAdapter:
    """What `output.publish` saves: the merged plain model, plus the adapter folder copied into `adapter/`.

    The adapter must be saved before merging (merging folds it into the base weights), so it is written
    to the staging area first and copied in here, inside the same atomic publish.
    """

    def __init__(self, merged, adapter_dir: Path):
        self.merged, self.adapter_dir = merged, Path(adapter_dir)

    def save_pretrained(self, path, **kwargs):
        self.merged.save_pretrained(path, **kwargs)
        shutil.copytree(self.adapter_dir, Path(path) / "adapter")
