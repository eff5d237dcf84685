"""Logit distillation (paper section 2, eq. L_KD) fused with the lm_head, chunk by chunk:

    L = alpha * CE(y, s) + (1 - alpha) * tau^2 * D(p_T^tau, p_S^tau)        per token

where p^tau = softmax(logits / tau) and D is forward KL (the paper's), reverse KL, generalised JSD, or on
tokens the student sampled, the sampled reverse-KL estimate of on-policy distillation (losses/divergences.py).
CE uses tau = 1; only the KD term is tempered, and it is multiplied by tau^2 so its gradient keeps CE's scale
when tau changes (Hinton et al. 2015). Reduced as losses/reduce.py says.

The chunking, buffers and closed-form backward are the shared kernel's (losses/fused.py): this module is the
chunk function it calls, on the teacher's typed signal (losses/teachers.py: online, policy, top-k or sampled).
"""

from __future__ import annotations

import math

import torch

from slimlm.losses import IGNORE_INDEX, POLICY_DIVERGENCES
from slimlm.losses.fused import fused_head_loss
from slimlm.losses.reduce import denominator
from slimlm.losses.teachers import OnlineTeacher, PolicyTeacher, teacher_from_arguments


def distill_loss(
    student_hidden,
    student_head,
    labels,
    *,
    teacher=None,
    teacher_hidden=None,
    teacher_head=None,
    teacher_topk_values=None,
    teacher_topk_indices=None,
    teacher_samples=None,
    teacher_entropy=None,
    temperature=2.0,
    alpha=0.5,
    kl="forward",
    jsd_beta=0.5,
    chunk_size=1024,
    num_items=None,
):
    """Paper eq. L_KD: alpha*CE(y, s) + (1-alpha)*tau^2*D(p_T^tau, p_S^tau), per token, from hidden states.

    student_hidden (N, d_s): final-norm hidden states, flattened and aligned with `labels` (caller shifts).
    student_head (V_s, d_s): the student's bias-free lm_head weight.
    labels (N,) long: -100 marks an ignored position (no CE and no KD there).
    Teacher: `teacher`, a typed signal (losses/teachers.py), or the same as keywords, one of:
      online: teacher_hidden (N, d_t) + teacher_head (V_t, d_t); the divergence runs over the full vocabulary.
      cached: teacher_topk_values (N, k) raw logits (any float dtype) + teacher_topk_indices (N, k) int; the
              forward KL then runs over the teacher's top-k support (divergences.topk_forward_kl); biased.
      sampled: teacher_samples (N, n) token ids drawn from p_T^tau + teacher_entropy (N,) H(p_T^tau); an unbiased
              estimate of the forward KL and its gradient (divergences.sampled_forward_kl).
      policy: `teacher=PolicyTeacher(...)` only: the online teacher and the tokens the student sampled, for
              kl="sampled-reverse" (divergences.sampled_reverse_kl).
      none:   only with alpha = 1 (plain chunked cross-entropy).
    kl: "forward" KL(T||S) (the paper's), "reverse" KL(S||T), "jsd" generalized Jensen-Shannon, or
        "sampled-reverse" (the policy teacher's per-token estimate of KL(S||T)); reverse and jsd need the online
        teacher (they need p_T on the whole vocabulary).
    jsd_beta: generalised JSD's beta, TRL's convention M = beta p_T + (1 - beta) p_S (GKD eq. 1); 0 is forward
        and 1 reverse KL (as in TRL; not continuous in scale); 0.5 is the symmetric JSD. Read for kl="jsd" only.
    Vocab padding: when V_s != V_t the divergence compares the first min(V_s, V_t) logits of each (same
        tokenizer, padded embedding matrix), each softmax taken over those; CE uses the student's whole vocabulary.
    Precision: logits are made in the matmul dtype (bf16 under autocast, else the weights' dtype) and every
        softmax, loss and logit-gradient is computed in float32 (float64 stays float64).

    Returns (loss, parts): loss = sum over valid tokens of the per-token loss / num_items (default: the number
    of valid labels); parts = {"ce": CE, "kd": tau^2 * D}, each detached and normalised the same way, so
    loss = alpha * parts["ce"] + (1 - alpha) * parts["kd"] (parts["kd"] is computed even at alpha = 1).
    Gradients flow to student_hidden and student_head only, never to the teacher; they are computed during
    this call (when grad is enabled and an input needs it), so the loss supports one backward pass.
    Bad arguments raise ValueError or TypeError.
    """
    tau, alpha, chunk_size = _check_kd_args(temperature, alpha, kl, chunk_size, jsd_beta)
    _check_student(student_hidden, student_head, labels)
    given = teacher_from_arguments(
        teacher_hidden, teacher_head, teacher_topk_values, teacher_topk_indices, teacher_samples, teacher_entropy
    )
    if teacher is not None and given is not None:
        raise TypeError("give the teacher as `teacher` or as keywords, not both")
    teacher = teacher if teacher is not None else given
    if teacher is None and alpha < 1:
        raise TypeError(
            "distill_loss needs a teacher (teacher_hidden + teacher_head, or cached top-k or samples), "
            "or alpha=1 for plain cross-entropy"
        )
    vs = student_head.shape[0]
    if teacher is not None:
        teacher.check(student_hidden, student_head, kl)
    cols = teacher.columns(vs) if teacher is not None else vs
    divergence = teacher.divergence(kl, jsd_beta) if teacher is not None else None

    def make_chunk(buf):
        side = teacher.chunks(buf, vs) if teacher is not None else None

        def chunk_loss(idx, S, buf):
            y = labels.index_select(0, idx).unsqueeze(1)
            ce, kd, G = _chunk_loss_and_grad(S, y, side and side(idx), divergence, tau, alpha, cols, buf)
            return (ce, kd), G

        return chunk_loss

    def combine(ce_sum, kd_sum):
        kd_sum = kd_sum * (tau * tau)
        return alpha * ce_sum + (1 - alpha) * kd_sum, (ce_sum, kd_sum)

    rows = labels.ne(IGNORE_INDEX).nonzero().squeeze(1)  # valid tokens only: masked rows cost nothing
    online = isinstance(teacher, (OnlineTeacher, PolicyTeacher))  # teacher logits made chunk by chunk, in buf.T
    loss_sum, ce_sum, kd_sum = fused_head_loss(
        student_hidden, student_head, rows, chunk_size, make_chunk, combine, cols if online else 0
    )
    denom = denominator(num_items, labels)
    return loss_sum / denom, {"ce": ce_sum / denom, "kd": kd_sum / denom}


def _chunk_loss_and_grad(S, y, teacher, divergence, tau, alpha, v, buf):
    """Per-chunk sums of CE and D, and G = d(alpha*CE + (1-alpha)*tau^2*D)/dS summed over the chunk's rows,
    returned in S's storage (S (m, V_s) is the fp32 student logits):
        dCE/dS = softmax(S) - onehot(y),    d(tau^2 D)/dS = tau * g    (g from the divergence)
    """
    m, vs = S.shape
    # CE at tau = 1, through lse1 = log sum exp S (exp(S - max) goes to scratch and is summed)
    m1 = S.amax(1, keepdim=True)
    z1 = torch.sub(S, m1, out=buf.scratch(m, vs)).exp_().sum(1, keepdim=True)
    lse1 = m1 + z1.log()
    ce = (lse1 - S.gather(1, y)).sum()
    minus_alpha = torch.full(y.shape, -alpha, dtype=S.dtype, device=S.device)
    if teacher is None:  # G = alpha * (softmax(S) - onehot(y))
        G = S.sub_(lse1).exp_().mul_(alpha).scatter_add_(1, y, minus_alpha)
        return ce, torch.zeros((), dtype=S.dtype, device=S.device), G
    cols = v  # logits the tempered student softmax runs over (the teacher's columns)
    if tau == 1.0 and cols == vs:
        lse_s = lse1
    else:
        ms = S[:, :cols].amax(1, keepdim=True)
        zs = torch.sub(S[:, :cols], ms, out=buf.scratch(m, cols)).mul_(1 / tau).exp_().sum(1, keepdim=True)
        lse_s = ms / tau + zs.log()
    kd, g = divergence(S, teacher, tau, lse_s, buf)
    G = S.sub_(lse1).exp_().mul_(alpha)
    G[:, :cols].add_(g, alpha=(1 - alpha) * tau)  # chain rule through S / tau: tau^2 / tau
    return ce, kd, G.scatter_add_(1, y, minus_alpha)


def _check_kd_args(temperature, alpha, kl, chunk_size, jsd_beta):
    """(tau, alpha, chunk_size) as numbers, or ValueError."""
    tau, alpha = float(temperature), float(alpha)
    if not tau > 0 or not math.isfinite(tau):
        raise ValueError(f"temperature must be > 0 and finite, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the CE weight) must be in [0, 1], got {alpha}")
    if kl not in POLICY_DIVERGENCES:
        raise ValueError(f"kl must be one of {', '.join(POLICY_DIVERGENCES)}, got {kl!r}")
    if not 0.0 <= float(jsd_beta) <= 1.0:
        raise ValueError(f"jsd_beta must be in [0, 1], got {jsd_beta}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return tau, alpha, int(chunk_size)


def _check_student(h, w, labels) -> None:
    if h.dim() != 2 or labels.dim() != 1 or h.shape[0] != labels.shape[0]:
        raise ValueError(
            f"distill_loss wants student_hidden (N, d) and labels (N,), got {tuple(h.shape)} and "
            f"{tuple(labels.shape)}: flatten batch and time first"
        )
    if w.dim() != 2 or w.shape[1] != h.shape[1]:
        raise ValueError(f"student_head must be (V, {h.shape[1]}), got {tuple(w.shape)}: pass lm_head.weight")
