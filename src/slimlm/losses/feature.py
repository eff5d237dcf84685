"""Feature distillation (paper section 2, eq. L_feature): the squared distance between mapped hidden states
of teacher and student, on standardised dimensions, through a learned projection when widths differ."""

from __future__ import annotations

import torch
from torch import nn

from slimlm.losses.reduce import acc_dtype, masked_mean


def feature_loss(teacher_states, student_states, projections=None, teacher_std=None, mask=None, num_items=None):
    """Paper eq. L_feature: sum_l ||h_l^T - P_l(h_m(l)^S)||^2, per token, on standardised dimensions.

    teacher_states, student_states: lists (one entry per mapped layer pair) of (N, d) or (B, T, d) tensors.
    Each layer contributes mean_dims(((h_T - P h_S) / teacher_std_l)^2) per token: a few hidden dimensions of
    real LMs are huge (raw MSE ~1e3 against a KL ~1), so each dimension is divided by the teacher's std,
    which the caller computes once from calibration data (None -> 1). Layers are summed; tokens where
    mask (N,) is True are summed and divided by num_items (default: the number of such tokens).
    projections: list of modules P_l (None entries or None = identity, for equal widths).
    """
    if len(teacher_states) != len(student_states):
        raise ValueError(
            f"feature_loss got {len(teacher_states)} teacher and {len(student_states)} student "
            "layers: pass one of each per layer-map pair"
        )
    if not teacher_states:
        raise ValueError("feature_loss needs at least one (teacher, student) layer pair")
    projections = projections or [None] * len(teacher_states)
    teacher_std = teacher_std or [None] * len(teacher_states)
    total = None
    for h_t, h_s, proj, std in zip(teacher_states, student_states, projections, teacher_std):
        h_t, h_s = h_t.reshape(-1, h_t.shape[-1]), h_s.reshape(-1, h_s.shape[-1])
        if proj is not None:
            h_s = proj(h_s)
        acc = acc_dtype(h_s.dtype)
        if h_s.shape != h_t.shape:
            raise ValueError(
                f"feature pair shapes differ: teacher {tuple(h_t.shape)}, student (projected) "
                f"{tuple(h_s.shape)}: add a projection with make_projection(d_s, d_t)"
            )
        diff = h_t.to(acc) - h_s.to(acc)
        if std is not None:
            diff = diff / std.to(device=diff.device, dtype=acc)
        per_token = diff.square().mean(-1)
        total = per_token if total is None else total + per_token
    return masked_mean(total, mask, num_items)


def make_projection(d_student, d_teacher):
    """P_l for a layer pair: None (identity) when widths match, else Linear(d_s -> d_t, no bias).

    Initialised to a truncated identity (student dim i -> teacher dim i), the right start when the student's
    channels were sliced from the teacher's, and a norm-preserving one otherwise (DistillKit's "identity" init).
    """
    if d_student == d_teacher:
        return None
    proj = nn.Linear(d_student, d_teacher, bias=False)
    with torch.no_grad():
        nn.init.eye_(proj.weight)
    return proj
