"""Attention-map distillation, the optional third signal of the paper's Figure 1: the KL between the
attention distributions of mapped teacher and student layers."""

from __future__ import annotations

import torch

from slimlm.losses.reduce import acc_dtype, masked_mean


def attention_loss(teacher_attn, student_attn, mask=None, num_items=None):
    """KL(A^T || A^S) between attention maps of mapped layers (paper Fig. 1), per query token.

    teacher_attn, student_attn: lists of (B, H, T, T) attention probabilities (or a single tensor each).
    If the head counts differ, both maps are averaged over heads first; otherwise the KL is averaged over
    heads. Per query token: layers summed; valid query tokens (mask (B, T) or (B*T,)) summed / num_items.
    """
    if torch.is_tensor(teacher_attn):
        teacher_attn, student_attn = [teacher_attn], [student_attn]
    if len(teacher_attn) != len(student_attn) or not teacher_attn:
        raise ValueError(
            f"attention_loss got {len(teacher_attn)} teacher and {len(student_attn)} student maps: "
            "pass one of each per layer-map pair"
        )
    total = None
    for a_t, a_s in zip(teacher_attn, student_attn):
        if a_t is None or a_s is None:
            raise ValueError(
                "attention maps are missing: load both models with attn_implementation='eager' "
                "and call them with output_attentions=True"
            )
        if a_t.shape[-2:] != a_s.shape[-2:] or a_t.shape[0] != a_s.shape[0]:
            raise ValueError(f"attention maps differ in batch or length: {tuple(a_t.shape)} vs {tuple(a_s.shape)}")
        acc = acc_dtype(a_s.dtype)
        a_t, a_s = a_t.to(acc), a_s.to(acc)
        if a_t.shape[1] != a_s.shape[1]:
            a_t, a_s = a_t.mean(1, keepdim=True), a_s.mean(1, keepdim=True)
        # KL per (b, h, query) row; masked keys have p_T = 0 and contribute 0 (xlogy(0, .) = 0)
        tiny = torch.finfo(acc).tiny
        rows = (torch.xlogy(a_t, a_t) - a_t * a_s.clamp_min(tiny).log()).sum(-1)  # (B, H, T)
        per_token = rows.mean(1).reshape(-1)  # (B*T,)
        total = per_token if total is None else total + per_token
    return masked_mean(total, None if mask is None else mask.reshape(-1), num_items)
