"""Plain-torch reference versions of slimlm's KD loss (paper section 2, eq. L_KD), for tests and the bench.

    L = alpha * CE(y, s) + (1 - alpha) * tau^2 * D(p_T^tau, p_S^tau),   mean over valid tokens

`kd_reference` spells the formula out for every divergence (generalised JSD at any beta included);
`sampled_reverse_kl_reference` is on-policy distillation's per-token estimate written as an autograd loss;
`naive_distill_loss` is the textbook script
version (F.kl_div on the whole batch's logits, kept for backward: the bench's "naive KD");
`distill_loss_checkpointed` is chunked like slimlm's fused kernel but written with autograd under activation
checkpointing, so backward recomputes each chunk's logits. tests/test_losses.py compares slimlm's
`distill_loss` with all three.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def acc_dtype(dtype):
    return torch.promote_types(dtype, torch.float32)  # float32, or float64 for float64 inputs


def kd_reference(s, t, labels, tau, alpha, kl="forward", beta=0.5):
    """alpha*CE + (1-alpha)*tau^2*D(p_T, p_S) from full logits s (N, V_s) and t (N, V_t), mean over valid
    tokens; D compares the first min(V_s, V_t) logits (padded vocabularies). kl="jsd" is the generalised JSD
    at `beta` in TRL's convention (M = beta p_T + (1 - beta) p_S; beta 0 and 1 are TRL's forward and reverse KL)."""
    if kl == "jsd" and beta in (0.0, 1.0):
        kl = "forward" if beta == 0.0 else "reverse"
    valid = labels != IGNORE_INDEX
    y = labels.clamp_min(0)
    ce = -(s.log_softmax(-1).gather(1, y[:, None]).squeeze(1))
    v = min(s.shape[1], t.shape[1])
    ls, lt = (s[:, :v] / tau).log_softmax(-1), (t[:, :v] / tau).log_softmax(-1)
    ps, pt = ls.exp(), lt.exp()
    if kl == "forward":  # KL(p_T || p_S)
        d = (pt * (lt - ls)).sum(-1)
    elif kl == "reverse":  # KL(p_S || p_T)
        d = (ps * (ls - lt)).sum(-1)
    elif beta == 0.5:  # JSD, beta = 1/2
        m = 0.5 * (ps + pt)
        d = 0.5 * (pt * (pt / m).log()).sum(-1) + 0.5 * (ps * (ps / m).log()).sum(-1)
    else:  # GKD eq. 1: beta KL(p_T || M) + (1 - beta) KL(p_S || M)
        m = beta * pt + (1 - beta) * ps
        d = beta * (pt * (pt / m).log()).sum(-1) + (1 - beta) * (ps * (ps / m).log()).sum(-1)
    per_token = alpha * ce + (1 - alpha) * tau * tau * d
    return (per_token * valid).sum() / valid.sum()


def sampled_reverse_kl_reference(s, t, labels, tau, alpha, sample_logprobs=None, clip=10.0):
    """alpha*CE + (1-alpha)*tau^2*mean(w c) over valid rows, whose label y the student sampled: Tinker's
    importance-sampling loss -ratio * A with advantage A = -c, c = log p_S^tau(y) - log p_T^tau(y) held constant,
    and the ratio p_S^tau(y) / q(y) clipped at `clip` (1 without sampling log-probs q) held constant outside
    the score function: value w c, gradient w c d log p_S^tau(y)."""
    valid = labels != IGNORE_INDEX
    y = labels.clamp_min(0)[:, None]
    ce = -(s.log_softmax(-1).gather(1, y).squeeze(1))
    v = min(s.shape[1], t.shape[1])
    ls = (s[:, :v] / tau).log_softmax(-1).gather(1, y).squeeze(1)
    lt = (t[:, :v] / tau).log_softmax(-1).gather(1, y).squeeze(1)
    advantage = -(ls - lt).detach()
    w = 1.0 if sample_logprobs is None else (ls.detach() - sample_logprobs).exp().clamp(max=clip)
    ratio = w * (ls - ls.detach()).exp()  # value w, gradient w d log p_S(y)
    per_token = alpha * ce + (1 - alpha) * tau * tau * -(ratio * advantage)
    return (per_token * valid).sum() / valid.sum()


def naive_distill_loss(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """The textbook KD loss on full logits, forward KL, the way most training scripts write it: the whole
    batch's logits are upcast and kept for backward. Returns the loss only."""
    tau = float(temperature)
    vs = student_logits.shape[-1]
    v = min(vs, teacher_logits.shape[-1])
    acc = acc_dtype(student_logits.dtype)
    s = student_logits.reshape(-1, vs).to(acc)
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1]).to(acc)
    labels = labels.reshape(-1)
    valid = labels.ne(IGNORE_INDEX)
    n = valid.sum().clamp_min(1)
    ce = F.cross_entropy(s, labels, ignore_index=IGNORE_INDEX, reduction="sum") / n
    log_ps = F.log_softmax(s[:, :v] / tau, dim=-1)
    log_pt = F.log_softmax(t[:, :v] / tau, dim=-1)
    kd = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)  # KL(p_T || p_S) per token
    kd = (kd * valid).sum() / n
    return alpha * ce + (1 - alpha) * tau * tau * kd


def distill_loss_checkpointed(
    student_hidden,
    student_head,
    labels,
    *,
    teacher_hidden=None,
    teacher_head=None,
    teacher_topk_values=None,
    teacher_topk_indices=None,
    temperature=2.0,
    alpha=0.5,
    kl="forward",
    chunk_size=1024,
    num_items=None,
):
    """slimlm's `distill_loss` (same arguments and result) written with autograd and activation checkpointing:
    each chunk (logits, log-softmaxes, CE + divergence) runs under `torch.utils.checkpoint`, so backward
    recomputes the chunk's logits instead of storing them: the same memory bound, but the vocab-sized matmuls
    and softmaxes run twice."""
    tau, n = float(temperature), labels.shape[0]
    mm = (
        torch.get_autocast_dtype(student_hidden.device.type)
        if torch.is_autocast_enabled(student_hidden.device.type)
        else torch.promote_types(student_hidden.dtype, student_head.dtype)
    )
    total = ce_total = kd_total = torch.zeros((), dtype=acc_dtype(mm), device=student_hidden.device)
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        teacher = (None, None, None, None)
        if teacher_hidden is not None:
            teacher = (teacher_hidden[sl], teacher_head, None, None)
        elif teacher_topk_values is not None:
            teacher = (None, None, teacher_topk_values[sl], teacher_topk_indices[sl])
        loss, ce, kd = checkpoint(
            _chunk_loss, student_hidden[sl], student_head, labels[sl], *teacher, tau, alpha, kl, use_reentrant=False
        )
        total, ce_total, kd_total = total + loss, ce_total + ce, kd_total + kd
    denom = labels.ne(IGNORE_INDEX).sum().clamp_min(1) if num_items is None else num_items
    return total / denom, {"ce": ce_total / denom, "kd": kd_total / denom}


def _chunk_loss(h, w, labels, th, tw, tv, ti, tau, alpha, kl):
    """One chunk's summed loss, the plain-autograd way (run under checkpoint)."""
    s = F.linear(h.to(w.dtype), w)
    acc = acc_dtype(s.dtype)
    s = s.to(acc)
    valid = labels.ne(IGNORE_INDEX)
    ce = F.cross_entropy(s, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    kd = torch.zeros((), dtype=acc, device=h.device)
    if th is not None or tv is not None:
        if th is not None:
            t = F.linear(th.to(tw.dtype), tw).to(acc)
            v = min(s.shape[1], t.shape[1])
            log_ps = F.log_softmax(s[:, :v] / tau, dim=-1)
            log_pt = F.log_softmax(t[:, :v] / tau, dim=-1)
        else:  # top-k teacher: KL over its support, renormalised
            log_ps = F.log_softmax(s / tau, dim=-1).gather(1, ti.long())
            log_pt = F.log_softmax(tv.to(acc) / tau, dim=-1)
        if kl == "forward":
            rows = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)
        elif kl == "reverse":
            rows = F.kl_div(log_pt, log_ps, log_target=True, reduction="none").sum(-1)
        else:
            log_m = torch.logaddexp(log_ps, log_pt) - math.log(2.0)
            rows = 0.5 * (
                F.kl_div(log_m, log_ps, log_target=True, reduction="none").sum(-1)
                + F.kl_div(log_m, log_pt, log_target=True, reduction="none").sum(-1)
            )
        kd = tau * tau * (rows * valid).sum()
    return alpha * ce + (1 - alpha) * kd, ce.detach(), kd.detach()
