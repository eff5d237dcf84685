"""Distillation losses (paper section 2) as plain functions.

    logit KD (eq. KD):   L = alpha * CE(y, s) + (1 - alpha) * tau^2 * KL(p_T^tau || p_S^tau)   per token
    feature (eq. feat):  L = sum_l || h_l^T - P_l(h_m(l)^S) ||^2                             per token
    attention (Fig. 1):  L = sum_l KL(A_l^T || A_m(l)^S)                                       per query token

where p^tau = softmax(logits / tau). CE uses tau = 1; only the KD term is tempered, and it is multiplied
by tau^2 so its gradient keeps the same scale as CE's when tau changes (Hinton et al. 2015): the gradient
of tau^2 * KL with respect to the student logits is tau * (p_S^tau - p_T^tau).

Every loss is a *sum over valid tokens divided by `num_items`*. The trainer passes the number of valid
tokens in the whole optimizer step, so the loss (and its gradient) does not depend on how a batch is
split into micro-batches or devices.

Memory: full-vocabulary logits are the largest tensors in LM distillation (tokens x 49152 fp32 = 200 kB a
token, twice: teacher and student). `distill_loss` takes final hidden states and the lm_head weights
instead of logits, and works through the tokens in chunks; no more than one chunk's fp32 logits exist at
any time, in forward and in backward. Each chunk's gradient with respect to the logits is written down in
closed form and pushed through the two matmuls right away (the approach of Liger-Kernel's fused linear
losses), so backward recomputes nothing and stores only the (N, d) and (V, d) gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from slimlm.errors import SlimlmError
from slimlm.losses import IGNORE_INDEX, KL_KINDS



# ----------------------------------------------------------------------------------------------------------
# logit distillation
# ----------------------------------------------------------------------------------------------------------

def distill_loss(student_hidden, student_head, labels, *, teacher_hidden=None, teacher_head=None,
                 teacher_topk_values=None, teacher_topk_indices=None,
                 temperature=2.0, alpha=0.5, kl="forward", chunk_size=1024, num_items=None):
    """Paper eq. (KD): alpha*CE(y, s) + (1-alpha)*tau^2*KL(p_T^tau || p_S^tau), per token, from hidden states.

    student_hidden (N, d_s): final-norm hidden states, flattened and aligned with `labels` (caller shifts).
    student_head (V_s, d_s): the student's bias-free lm_head weight.
    labels (N,) long: -100 marks an ignored position (no CE and no KD there).
    Teacher, one of:
      online: teacher_hidden (N, d_t) + teacher_head (V_t, d_t); the KL runs over the full vocabulary.
      cached: teacher_topk_values (N, k) raw logits (any float dtype) + teacher_topk_indices (N, k) int.
              The KL then runs over the teacher's top-k support only: p_T = softmax(values / tau)
              renormalised over the k entries, against log p_S gathered at those indices from the student's
              full-vocabulary log-softmax. This is an approximation of the full KL (exact when k = V); it
              ignores the teacher's tail mass, which is small for k >= 64 at tau <= 2.
      none:   only with alpha = 1 (plain chunked cross-entropy).
    kl: "forward" KL(T||S) (the paper's), "reverse" KL(S||T), "jsd" generalized Jensen-Shannon with beta 0.5;
        reverse and jsd need the online teacher (they need p_T on the whole vocabulary).
    Vocab padding: when V_s != V_t the KL compares the first min(V_s, V_t) logits of each (same tokenizer,
        padded embedding matrix), each softmax taken over those; CE uses the student's whole vocabulary.
    Precision: logits are made in the matmul dtype (bf16 under autocast, else the weights' dtype) and every
        softmax, loss and logit-gradient is computed in float32 (float64 stays float64).

    Returns (loss, parts): loss = sum over valid tokens of the per-token loss / num_items (default: the number
    of valid labels); parts = {"ce": CE, "kd": tau^2 * KL}, each detached and normalised the same way, so
    loss = alpha * parts["ce"] + (1 - alpha) * parts["kd"] (parts["kd"] is computed even at alpha = 1).
    Gradients flow to student_hidden and student_head only, never to the teacher; they are computed during
    this call (when grad is enabled and an input needs it), so the loss supports one backward pass.
    """
    tau, alpha, chunk_size = _check_kd_args(temperature, alpha, kl, chunk_size)
    mode = _check_kd_inputs(student_hidden, student_head, labels, teacher_hidden, teacher_head,
                            teacher_topk_values, teacher_topk_indices, alpha, kl)
    loss_sum, ce_sum, kd_sum = _FusedLinearDistill.apply(
        student_hidden, student_head, labels, teacher_hidden, teacher_head, teacher_topk_values,
        teacher_topk_indices, tau, alpha, kl, mode, chunk_size)
    denom = _denominator(num_items, labels)
    return loss_sum / denom, {"ce": ce_sum / denom, "kd": kd_sum / denom}


def naive_distill_loss(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """The textbook KD loss on full logits (the reference `distill_loss` must match; the bench's "naive KD").

    Same formula, normalisation (mean over valid tokens) and vocab alignment as `distill_loss` with
    kl="forward", written the way most training scripts write it: the whole batch's logits are upcast and
    kept for backward. Returns the loss only.
    """
    tau, alpha, _ = _check_kd_args(temperature, alpha, "forward", 1)
    vs = student_logits.shape[-1]
    v = min(vs, teacher_logits.shape[-1])
    acc = _acc_dtype(student_logits.dtype)
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


class _FusedLinearDistill(torch.autograd.Function):
    """Chunked lm_head + KD loss whose backward recomputes nothing.

    For each chunk of valid tokens: logits = h @ W^T (fp32), the per-token losses, and their gradient with
    respect to the logits in closed form; that gradient goes through the matmuls at once (dh = G W, dW += G^T h)
    and the chunk's logits are dropped. Only dh (N, d) and dW (V, d) are kept for backward, which just scales
    them by the incoming gradient. All (chunk, V) work buffers are allocated once per call and reused, because
    on a CPU a fresh 200 MB tensor costs more in page faults than the softmax that fills it.
    """

    @staticmethod
    def forward(ctx, h, w, labels, th, tw, tv, ti, tau, alpha, kl, mode, chunk_size):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dev = h.device
        mm_dtype = _matmul_dtype(h, w)
        acc = _acc_dtype(mm_dtype)
        rows = labels.ne(IGNORE_INDEX).nonzero().squeeze(1)  # valid tokens only: masked rows cost nothing
        n, vs = rows.numel(), w.shape[0]
        v = min(vs, tw.shape[0]) if mode == "online" else vs
        ce_sum = torch.zeros((), dtype=acc, device=dev)
        kd_sum = torch.zeros((), dtype=acc, device=dev)
        grad_h = torch.zeros(h.shape, dtype=acc, device=dev) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=dev) if need_w else None
        c = min(chunk_size, max(n, 1))
        with torch.autocast(dev.type, enabled=False):  # dtypes are chosen explicitly below
            wm = w.to(mm_dtype)
            twm = tw[:v].to(mm_dtype) if mode == "online" else None
            buf = _Buffers(c, vs, v if mode == "online" else 0, acc, mm_dtype, dev)
            for start in range(0, n, c):
                idx = rows[start:start + c]
                m = idx.numel()
                hc = h.index_select(0, idx).to(mm_dtype)
                y = labels.index_select(0, idx).unsqueeze(1)
                S = buf.logits(hc, wm, buf.S[:m])
                teacher = None  # at alpha = 1 the KD term is still computed, for parts["kd"]
                if mode == "online":
                    teacher = buf.logits(th.index_select(0, idx).to(mm_dtype), twm, buf.T[:m])
                elif mode == "topk":
                    teacher = (tv.index_select(0, idx).to(acc), ti.index_select(0, idx).long())
                ce, kd, G = _chunk_loss_and_grad(S, y, teacher, mode, kl, tau, alpha, v, buf)
                ce_sum += ce
                kd_sum += kd
                if need_h or need_w:
                    Gm = buf.scratch(m, vs, mm_dtype).copy_(G) if mm_dtype != acc else G
                    if need_h:
                        grad_h.index_copy_(0, idx, (Gm @ wm).to(acc))
                    if need_w:
                        grad_w.add_(Gm.t() @ hc)  # low-precision product added into the fp32 sum
        kd_sum = kd_sum * (tau * tau)
        loss_sum = alpha * ce_sum + (1 - alpha) * kd_sum
        ctx.save_for_backward(grad_h, grad_w)
        ctx.input_dtypes, ctx.used = (h.dtype, w.dtype), False
        ctx.mark_non_differentiable(ce_sum, kd_sum)
        return loss_sum, ce_sum, kd_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        if ctx.used:
            raise SlimlmError("distill_loss supports one backward pass (its gradients are scaled in place): "
                              "call it again instead of retain_graph=True")
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.input_dtypes
        # in place: no second (V, d) tensor next to the saved one
        gh = grad_h.mul_(grad_loss).to(h_dtype) if grad_h is not None else None
        gw = grad_w.mul_(grad_loss).to(w_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None, None, None, None, None, None


class _Buffers:
    """Three (chunk, V) work tensors, reused by every chunk: S (student logits, then G), T (teacher logits), X.

    X is scratch: p_T^tau, exp(S - max), and, viewed as bf16/fp16, the matmul outputs and G's low-precision
    copy, so no fourth buffer is needed.
    """

    def __init__(self, c, vs, vt, acc, mm_dtype, dev):
        self.S = torch.empty(c, vs, dtype=acc, device=dev)
        self.X = torch.empty(c, vs, dtype=acc, device=dev)
        self.T = torch.empty(c, vt, dtype=acc, device=dev) if vt else None
        self.acc, self.mm_dtype = acc, mm_dtype

    def scratch(self, m, cols, dtype=None):
        """A contiguous (m, cols) tensor on X's storage (dtype at most as wide as X's)."""
        return self.X.view(-1).view(dtype or self.acc)[:m * cols].view(m, cols)

    def logits(self, x, weight, out):
        if self.mm_dtype == self.acc:
            return torch.mm(x, weight.t(), out=out)
        low = self.scratch(out.shape[0], out.shape[1], self.mm_dtype)
        torch.mm(x, weight.t(), out=low)  # bf16 matmul, as autocast would run it; softmaxes in fp32 below
        return out.copy_(low)


def _chunk_loss_and_grad(S, y, teacher, mode, kl, tau, alpha, v, buf):
    """Per-chunk sums of CE and KL, and G = d(alpha*CE + (1-alpha)*tau^2*KL)/dS summed over the chunk's rows.

    S (m, V_s) is the fp32 student logits; G is returned in S's storage. With p = softmax(logits / tau):
      CE:          dCE/dS = softmax(S) - onehot(y)
      forward KL:  d(tau^2 KL(p_T||p_S))/dS = tau * (p_S - p_T)
      reverse KL:  d(tau^2 KL(p_S||p_T))/dS = tau * p_S * (log p_S - log p_T - KL)
      JSD:         with M = (p_S + p_T)/2, u = (log p_S - log M)/2:  d(tau^2 JSD)/dS = tau * p_S * (u - sum p_S u)
    Everything is done in place on S, T and X: no other (m, V) tensor is allocated on the forward-KL paths.
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
    k = (1 - alpha) * tau  # weight of p_S^tau - p_T^tau in G (chain rule through S / tau: tau^2 / tau)
    vv = vs if mode == "topk" else v  # columns the tempered student softmax runs over
    if tau == 1.0 and vv == vs:
        lse_s = lse1
    else:
        ms = S[:, :vv].amax(1, keepdim=True)
        zs = torch.sub(S[:, :vv], ms, out=buf.scratch(m, vv)).mul_(1 / tau).exp_().sum(1, keepdim=True)
        lse_s = ms / tau + zs.log()

    if mode == "topk":
        values, indices = teacher
        log_pt = torch.log_softmax(values / tau, dim=1)  # teacher renormalised over its top-k
        pt = log_pt.exp()
        log_ps_k = S.gather(1, indices).div_(tau).sub_(lse_s)  # student log-probs at the teacher's top-k
        kd = (pt * (log_pt - log_ps_k)).sum()
        # G = alpha (softmax(S) - onehot) + k (p_S^tau - scatter(p_T))
        if tau == 1.0:
            G = S.sub_(lse1).exp_().mul_(alpha + k)
        else:
            ps = torch.div(S, tau, out=buf.scratch(m, vs)).sub_(lse_s).exp_()
            G = S.sub_(lse1).exp_().mul_(alpha).add_(ps, alpha=k)
        G.scatter_add_(1, y, minus_alpha)
        return ce, kd, G.scatter_add_(1, indices, pt.mul_(-k))

    T = teacher  # (m, v) raw teacher logits
    mt = T.amax(1, keepdim=True)
    P = torch.sub(T, mt, out=buf.scratch(m, v)).mul_(1 / tau).exp_()
    zt = P.sum(1, keepdim=True)
    P.div_(zt)  # p_T^tau
    lse_t = mt / tau + zt.log()
    if kl == "forward":
        # KL(p_T||p_S) = sum p_T (T - S) / tau - lse_t + lse_s   (both log-softmaxes written out; sum p_T = 1)
        dot = T.sub_(S[:, :v]).mul_(P).sum(1, keepdim=True)  # T is consumed here
        kd = (dot / tau - lse_t + lse_s).sum()
        if tau == 1.0 and v == vs:  # p_S^tau = softmax(S): G = (alpha + k) softmax(S) - alpha onehot - k p_T
            G = S.sub_(lse1).exp_().mul_(alpha + k)
        else:
            ps = torch.div(S[:, :v], tau, out=T).sub_(lse_s).exp_().sub_(P)  # p_S^tau - p_T^tau, in T
            G = S.sub_(lse1).exp_().mul_(alpha)
            G[:, :v].add_(ps, alpha=k)
            P = None
        if P is not None:
            G[:, :v].sub_(P, alpha=k)
        return ce, kd, G.scatter_add_(1, y, minus_alpha)
    # reverse KL and JSD: rarer, so written with plain temporaries
    log_pt = T.div_(tau).sub_(lse_t)
    log_ps = S[:, :v].div(tau).sub_(lse_s)
    ps = log_ps.exp()
    if kl == "reverse":
        r = log_ps - log_pt
        kd_rows = (ps * r).sum(1, keepdim=True)
        g = ps * (r - kd_rows)
    else:  # jsd, beta = 1/2
        log_m = torch.logaddexp(log_ps, log_pt) - math.log(2.0)
        kd_rows = 0.5 * ((ps * (log_ps - log_m)).sum(1, keepdim=True) + (P * (log_pt - log_m)).sum(1, keepdim=True))
        u = 0.5 * (log_ps - log_m)
        g = ps * (u - (ps * u).sum(1, keepdim=True))
    G = S.sub_(lse1).exp_().mul_(alpha)
    G[:, :v].add_(g, alpha=k)
    return ce, kd_rows.sum(), G.scatter_add_(1, y, minus_alpha)


def distill_loss_checkpointed(student_hidden, student_head, labels, *, teacher_hidden=None, teacher_head=None,
                              teacher_topk_values=None, teacher_topk_indices=None,
                              temperature=2.0, alpha=0.5, kl="forward", chunk_size=1024, num_items=None):
    """`distill_loss` written with autograd and activation checkpointing, for comparison and cross-checks.

    Each chunk (logits, log-softmaxes, CE + KL) runs under `torch.utils.checkpoint`, so backward recomputes
    the chunk's logits instead of storing them: same memory bound, but the two vocab-sized matmuls and the
    softmaxes run twice. The bench measures both; `distill_loss` is the fused one.
    """
    tau, alpha, chunk_size = _check_kd_args(temperature, alpha, kl, chunk_size)
    mode = _check_kd_inputs(student_hidden, student_head, labels, teacher_hidden, teacher_head,
                            teacher_topk_values, teacher_topk_indices, alpha, kl)
    n = labels.shape[0]
    acc = _acc_dtype(_matmul_dtype(student_hidden, student_head))
    total = ce_total = kd_total = torch.zeros((), dtype=acc, device=student_hidden.device)
    for s in range(0, n, chunk_size):
        sl = slice(s, s + chunk_size)
        t_args = (None, None, None, None)
        if mode == "online":
            t_args = (teacher_hidden[sl], teacher_head, None, None)
        elif mode == "topk":
            t_args = (None, None, teacher_topk_values[sl], teacher_topk_indices[sl])
        loss, ce, kd = checkpoint(_chunk_loss_autograd, student_hidden[sl], student_head, labels[sl], *t_args,
                                  tau, alpha, kl, use_reentrant=False)
        total, ce_total, kd_total = total + loss, ce_total + ce, kd_total + kd
    denom = _denominator(num_items, labels)
    return total / denom, {"ce": ce_total / denom, "kd": kd_total / denom}


def _chunk_loss_autograd(h, w, labels, th, tw, tv, ti, tau, alpha, kl):
    """One chunk's summed loss, the plain-autograd way (used under checkpoint)."""
    acc = _acc_dtype(_matmul_dtype(h, w))
    s = F.linear(h.to(w.dtype), w).to(acc)
    valid = labels.ne(IGNORE_INDEX)
    ce = F.cross_entropy(s, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    kd = torch.zeros((), dtype=acc, device=h.device)
    if th is not None or tv is not None:
        if th is not None:
            t = F.linear(th.to(tw.dtype), tw).to(acc)
            v = min(s.shape[1], t.shape[1])
            log_ps = F.log_softmax(s[:, :v] / tau, dim=-1)
            log_pt = F.log_softmax(t[:, :v] / tau, dim=-1)
        else:
            log_ps = F.log_softmax(s / tau, dim=-1).gather(1, ti.long())
            log_pt = F.log_softmax(tv.to(acc) / tau, dim=-1)
        if kl == "forward":
            rows = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)
        elif kl == "reverse":
            rows = F.kl_div(log_pt, log_ps, log_target=True, reduction="none").sum(-1)
        else:
            log_m = torch.logaddexp(log_ps, log_pt) - math.log(2.0)
            rows = 0.5 * (F.kl_div(log_m, log_ps, log_target=True, reduction="none").sum(-1)
                          + F.kl_div(log_m, log_pt, log_target=True, reduction="none").sum(-1))
        kd = tau * tau * (rows * valid).sum()
    return alpha * ce + (1 - alpha) * kd, ce.detach(), kd.detach()


def _check_kd_args(temperature, alpha, kl, chunk_size):
    tau, alpha = float(temperature), float(alpha)
    if not tau > 0 or not math.isfinite(tau):
        raise SlimlmError(f"temperature must be > 0, got {temperature}: pass e.g. --temperature 2")
    if not 0.0 <= alpha <= 1.0:
        raise SlimlmError(f"alpha (the CE weight) must be in [0, 1], got {alpha}: pass e.g. --alpha 0.5")
    if kl not in KL_KINDS:
        raise SlimlmError(f"kl must be one of {', '.join(KL_KINDS)}, got {kl!r}")
    if int(chunk_size) < 1:
        raise SlimlmError(f"chunk_size must be >= 1, got {chunk_size}: pass e.g. --chunk-size 1024")
    return tau, alpha, int(chunk_size)


def _check_kd_inputs(h, w, labels, th, tw, tv, ti, alpha, kl):
    if h.dim() != 2 or labels.dim() != 1 or h.shape[0] != labels.shape[0]:
        raise SlimlmError(f"distill_loss wants student_hidden (N, d) and labels (N,), got {tuple(h.shape)} and "
                          f"{tuple(labels.shape)}: flatten batch and time first")
    if w.dim() != 2 or w.shape[1] != h.shape[1]:
        raise SlimlmError(f"student_head must be (V, {h.shape[1]}), got {tuple(w.shape)}: pass lm_head.weight")
    online, cached = th is not None or tw is not None, tv is not None or ti is not None
    if online and cached:
        raise SlimlmError("give the teacher either online (teacher_hidden + teacher_head) or cached "
                          "(teacher_topk_values + teacher_topk_indices), not both")
    if online:
        if th is None or tw is None:
            raise SlimlmError("the online teacher needs both teacher_hidden and teacher_head")
        if th.shape[0] != h.shape[0] or tw.dim() != 2 or tw.shape[1] != th.shape[-1]:
            raise SlimlmError(f"teacher_hidden {tuple(th.shape)} and teacher_head {tuple(tw.shape)} do not match "
                              f"{h.shape[0]} student tokens: pass (N, d_t) and (V_t, d_t)")
        return "online"
    if cached:
        if tv is None or ti is None:
            raise SlimlmError("the cached teacher needs both teacher_topk_values and teacher_topk_indices")
        if tv.shape != ti.shape or tv.dim() != 2 or tv.shape[0] != h.shape[0]:
            raise SlimlmError(f"teacher_topk_values {tuple(tv.shape)} and teacher_topk_indices {tuple(ti.shape)} "
                              f"must both be (N, k) with N = {h.shape[0]}")
        if kl != "forward":
            raise SlimlmError(f"kl={kl!r} needs the teacher's full distribution; with a top-k teacher cache "
                              "use kl='forward' or drop the cache")
        if ti.numel() and int(ti.max()) >= w.shape[0]:
            raise SlimlmError(f"teacher top-k index {int(ti.max())} is outside the student vocabulary "
                              f"({w.shape[0]}): the cache was made with a different tokenizer; rebuild it")
        return "topk"
    if alpha < 1:
        raise SlimlmError("distill_loss needs a teacher (teacher_hidden + teacher_head, or cached top-k), "
                          "or alpha=1 for plain cross-entropy")
    return "ce"


def _matmul_dtype(h, w):
    """bf16/fp16 under autocast (as F.linear would run), else the wider of the two input dtypes."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, w.dtype)


def _acc_dtype(dtype):
    """float32 for softmax and losses, or float64 when the inputs are float64."""
    return torch.promote_types(dtype, torch.float32)


def _denominator(num_items, labels):
    if num_items is None:
        return labels.ne(IGNORE_INDEX).sum().clamp_min(1)
    if torch.is_tensor(num_items):
        return num_items.to(labels.device).clamp_min(1)
    if num_items <= 0:
        raise SlimlmError(f"num_items must be > 0, got {num_items}: pass the count of valid labels in the step")
    return num_items


# ----------------------------------------------------------------------------------------------------------
# feature and attention distillation
# ----------------------------------------------------------------------------------------------------------

def feature_loss(teacher_states, student_states, projections=None, teacher_std=None, mask=None, num_items=None):
    """Paper eq. (feature): sum_l ||h_l^T - P_l(h_m(l)^S)||^2, per token, on standardised dimensions.

    teacher_states, student_states: lists (one entry per mapped layer pair) of (N, d) or (B, T, d) tensors.
    Each layer contributes mean_dims(((h_T - P h_S) / teacher_std_l)^2) per token: a few hidden dimensions of
    real LMs are huge (raw MSE ~1e3 against a KL ~1), so each dimension is divided by the teacher's std,
    which the caller computes once from calibration data (None -> 1). Layers are summed; tokens where
    mask (N,) is True are summed and divided by num_items (default: the number of such tokens).
    projections: list of modules P_l (None entries or None = identity, for equal widths).
    """
    if len(teacher_states) != len(student_states):
        raise SlimlmError(f"feature_loss got {len(teacher_states)} teacher and {len(student_states)} student "
                          "layers: pass one of each per layer-map pair")
    if not teacher_states:
        raise SlimlmError("feature_loss needs at least one layer pair: give a layer map such as --feature-layers 6:3")
    projections = projections or [None] * len(teacher_states)
    teacher_std = teacher_std or [None] * len(teacher_states)
    total = None
    for h_t, h_s, proj, std in zip(teacher_states, student_states, projections, teacher_std):
        h_t, h_s = h_t.reshape(-1, h_t.shape[-1]), h_s.reshape(-1, h_s.shape[-1])
        if proj is not None:
            h_s = proj(h_s)
        acc = _acc_dtype(h_s.dtype)
        if h_s.shape != h_t.shape:
            raise SlimlmError(f"feature pair shapes differ: teacher {tuple(h_t.shape)}, student (projected) "
                              f"{tuple(h_s.shape)}: add a projection with make_projection(d_s, d_t)")
        diff = h_t.to(acc) - h_s.to(acc)
        if std is not None:
            diff = diff / std.to(device=diff.device, dtype=acc)
        per_token = diff.square().mean(-1)
        total = per_token if total is None else total + per_token
    return _masked_mean(total, mask, num_items)


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


def attention_loss(teacher_attn, student_attn, mask=None, num_items=None):
    """Optional third signal (paper Fig. 1): KL(A^T || A^S) between attention maps of mapped layers.

    teacher_attn, student_attn: lists of (B, H, T, T) attention probabilities (or a single tensor each).
    If the head counts differ, both maps are averaged over heads first; otherwise the KL is averaged over
    heads. Per query token: layers summed; valid query tokens (mask (B, T) or (B*T,)) summed / num_items.
    """
    if torch.is_tensor(teacher_attn):
        teacher_attn, student_attn = [teacher_attn], [student_attn]
    if len(teacher_attn) != len(student_attn) or not teacher_attn:
        raise SlimlmError(f"attention_loss got {len(teacher_attn)} teacher and {len(student_attn)} student maps: "
                          "pass one of each per layer-map pair")
    total = None
    for a_t, a_s in zip(teacher_attn, student_attn):
        if a_t is None or a_s is None:
            raise SlimlmError("attention maps are missing: load both models with attn_implementation='eager' "
                              "and call them with output_attentions=True")
        if a_t.shape[-2:] != a_s.shape[-2:] or a_t.shape[0] != a_s.shape[0]:
            raise SlimlmError(f"attention maps differ in batch or length: {tuple(a_t.shape)} vs {tuple(a_s.shape)}")
        acc = _acc_dtype(a_s.dtype)
        a_t, a_s = a_t.to(acc), a_s.to(acc)
        if a_t.shape[1] != a_s.shape[1]:
            a_t, a_s = a_t.mean(1, keepdim=True), a_s.mean(1, keepdim=True)
        # KL per (b, h, query) row; masked keys have p_T = 0 and contribute 0 (xlogy(0, .) = 0)
        tiny = torch.finfo(acc).tiny
        rows = (torch.xlogy(a_t, a_t) - a_t * a_s.clamp_min(tiny).log()).sum(-1)  # (B, H, T)
        per_token = rows.mean(1).reshape(-1)  # (B*T,)
        total = per_token if total is None else total + per_token
    return _masked_mean(total, None if mask is None else mask.reshape(-1), num_items)


def _masked_mean(per_token, mask, num_items):
    if mask is not None:
        mask = mask.reshape(-1).to(per_token.device)
        if mask.shape[0] != per_token.shape[0]:
            raise SlimlmError(f"mask has {mask.shape[0]} entries for {per_token.shape[0]} tokens: flatten it "
                              "the same way as the states")
        per_token = per_token * mask
    if num_items is None:
        num_items = mask.sum().clamp_min(1) if mask is not None else per_token.shape[0]
    elif not torch.is_tensor(num_items) and num_items <= 0:
        raise SlimlmError(f"num_items must be > 0, got {num_items}: pass the count of valid tokens in the step")
    elif torch.is_tensor(num_items):
        num_items = num_items.to(per_token.device).clamp_min(1)
    return per_token.sum() / num_items
