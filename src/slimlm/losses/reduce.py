"""How every loss term is reduced: a sum over the valid tokens, divided by the token count of the whole
optimizer step (`num_items`), in float32 (float64 stays float64). The trainer passes the step's count, so a
loss and its gradient do not depend on how a batch is split into micro-batches or devices."""

from __future__ import annotations

import torch

from slimlm.losses import IGNORE_INDEX


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for softmaxes and losses, or float64 when the inputs are float64."""
    return torch.promote_types(dtype, torch.float32)


def denominator(num_items, labels: torch.Tensor):
    """`num_items` (int or tensor), or the number of valid labels when it is None."""
    if num_items is None:
        return labels.ne(IGNORE_INDEX).sum().clamp_min(1)
    if torch.is_tensor(num_items):
        return num_items.to(labels.device).clamp_min(1)
    if num_items <= 0:
        raise ValueError(f"num_items must be > 0, got {num_items}: pass the count of valid tokens in the step")
    return num_items


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor | None, num_items) -> torch.Tensor:
    """Sum of `per_token` (N,) where `mask` (N,) is True, divided by num_items (default: the mask's count)."""
    if mask is not None:
        mask = mask.reshape(-1).to(per_token.device)
        if mask.shape[0] != per_token.shape[0]:
            raise ValueError(
                f"mask has {mask.shape[0]} entries for {per_token.shape[0]} tokens: flatten it "
                "the same way as the states"
            )
        per_token = per_token * mask
    if num_items is None:
        num_items = mask.sum().clamp_min(1) if mask is not None else per_token.shape[0]
    elif torch.is_tensor(num_items):
        num_items = num_items.to(per_token.device).clamp_min(1)
    elif num_items <= 0:
        raise ValueError(f"num_items must be > 0, got {num_items}: pass the count of valid tokens in the step")
    return per_token.sum() / num_items
