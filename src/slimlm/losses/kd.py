"""Logit distillation (paper section 2, eq. L_KD) fused with the lm_head, chunk by chunk:

    L = alpha * CE(y, s) + (1 - alpha) * tau^2 * D(p_T^tau, p_S^tau)        per token

where p^tau = softmax(logits / tau) and D is forward KL (the paper's), reverse KL or JSD
(losses/divergences.py). CE uses tau = 1; only the KD term is tempered, and it is multiplied by tau^2 so its
gradient keeps CE's scale when tau changes (Hinton et al. 2015). Reduced as losses/reduce.py says.

Memory: full-vocabulary logits are the largest tensors in LM distillation (tokens x 49152 fp32 = 200 kB a
token, twice: teacher and student). `distill_loss` takes final hidden states and the lm_head weights
instead of logits, and works through the tokens in chunks; no more than one chunk's fp32 logits exist at
any time, in forward and in backward. Each chunk's gradient with respect to the logits is written down in
closed form and pushed through the two matmuls right away (the approach of Liger-Kernel's fused linear
losses), so backward recomputes nothing and stores only the (N, d) and (V, d) gradients. The chunking and
gradient machinery is here, once; each divergence is a small function it calls.
"""

from __future__ import annotations

import math

import torch

from slimlm.losses import IGNORE_INDEX, KL_KINDS
from slimlm.losses.divergences import DIVERGENCES, sampled_forward_kl, topk_forward_kl
from slimlm.losses.reduce import acc_dtype, denominator


def distill_loss(
    student_hidden,
    student_head,
    labels,
    *,
    teacher_hidden=None,
    teacher_head=None,
    teacher_topk_values=None,
    teacher_topk_indices=None,
    teacher_samples=None,
    teacher_entropy=None,
    temperature=2.0,
    alpha=0.5,
    kl="forward",
    chunk_size=1024,
    num_items=None,
):
    """Paper eq. L_KD: alpha*CE(y, s) + (1-alpha)*tau^2*D(p_T^tau, p_S^tau), per token, from hidden states.

    student_hidden (N, d_s): final-norm hidden states, flattened and aligned with `labels` (caller shifts).
    student_head (V_s, d_s): the student's bias-free lm_head weight.
    labels (N,) long: -100 marks an ignored position (no CE and no KD there).
    Teacher, one of:
      online: teacher_hidden (N, d_t) + teacher_head (V_t, d_t); the divergence runs over the full vocabulary.
      cached: teacher_topk_values (N, k) raw logits (any float dtype) + teacher_topk_indices (N, k) int; the
              forward KL then runs over the teacher's top-k support (divergences.topk_forward_kl); biased.
      sampled: teacher_samples (N, n) token ids drawn from p_T^tau + teacher_entropy (N,) H(p_T^tau); an unbiased
              estimate of the forward KL and its gradient (divergences.sampled_forward_kl).
      none:   only with alpha = 1 (plain chunked cross-entropy).
    kl: "forward" KL(T||S) (the paper's), "reverse" KL(S||T), "jsd" generalized Jensen-Shannon with beta 0.5;
        reverse and jsd need the online teacher (they need p_T on the whole vocabulary).
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
    tau, alpha, chunk_size = _check_kd_args(temperature, alpha, kl, chunk_size)
    sampled = teacher_samples is not None or teacher_entropy is not None
    mode = _teacher_mode(
        student_hidden,
        student_head,
        labels,
        teacher_hidden,
        teacher_head,
        teacher_topk_values,
        teacher_topk_indices,
        1.0 if sampled else alpha,  # a sampled teacher is a teacher: not "CE only"
        kl,
    )
    if sampled:
        mode = _sampled_mode(student_hidden, student_head, teacher_samples, teacher_entropy, mode, kl)
        # the sampled teacher travels in the top-k slots of the autograd function: (entropy, ids)
        teacher_topk_values, teacher_topk_indices = teacher_entropy, teacher_samples
    loss_sum, ce_sum, kd_sum = _FusedLinearDistill.apply(
        student_hidden,
        student_head,
        labels,
        teacher_hidden,
        teacher_head,
        teacher_topk_values,
        teacher_topk_indices,
        tau,
        alpha,
        kl,
        mode,
        chunk_size,
    )
    denom = denominator(num_items, labels)
    return loss_sum / denom, {"ce": ce_sum / denom, "kd": kd_sum / denom}


class _FusedLinearDistill(torch.autograd.Function):
    """Chunked lm_head + KD loss whose backward recomputes nothing.

    For each chunk of valid tokens: logits = h @ W^T (fp32), the per-token losses, and their gradient with
    respect to the logits in closed form; that gradient goes through the matmuls at once (dh = G W, dW += G^T h)
    and the chunk's logits are dropped. Only dh (N, d) and dW (V, d) are kept for backward, which just scales
    them by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, h, w, labels, th, tw, tv, ti, tau, alpha, kl, mode, chunk_size):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dev = h.device
        mm_dtype = matmul_dtype(h, w)
        acc = acc_dtype(mm_dtype)
        rows = labels.ne(IGNORE_INDEX).nonzero().squeeze(1)  # valid tokens only: masked rows cost nothing
        n, vs = rows.numel(), w.shape[0]
        v = min(vs, tw.shape[0]) if mode == "online" else vs
        divergence = {"online": DIVERGENCES[kl], "topk": topk_forward_kl, "sampled": sampled_forward_kl}.get(mode)
        ce_sum = torch.zeros((), dtype=acc, device=dev)
        kd_sum = torch.zeros((), dtype=acc, device=dev)
        grad_h = torch.zeros(h.shape, dtype=acc, device=dev) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=dev) if need_w else None
        c = min(chunk_size, max(n, 1))
        with torch.autocast(dev.type, enabled=False):  # dtypes are chosen explicitly below
            wm = w.to(mm_dtype)
            twm = tw[:v].to(mm_dtype) if mode == "online" else None
            buf = ChunkBuffers(c, vs, v if mode == "online" else 0, acc, mm_dtype, dev)
            for start in range(0, n, c):
                idx = rows[start : start + c]
                m = idx.numel()
                hc = h.index_select(0, idx).to(mm_dtype)
                y = labels.index_select(0, idx).unsqueeze(1)
                S = buf.logits(hc, wm, buf.S[:m])
                teacher = None  # at alpha = 1 the KD term is still computed, for parts["kd"]
                if mode == "online":
                    teacher = buf.logits(th.index_select(0, idx).to(mm_dtype), twm, buf.T[:m])
                elif mode == "topk":
                    teacher = (tv.index_select(0, idx).to(acc), ti.index_select(0, idx).long())
                elif mode == "sampled":
                    teacher = (ti.index_select(0, idx).long(), tv.index_select(0, idx).to(acc).unsqueeze(1))
                ce, kd, G = _chunk_loss_and_grad(S, y, teacher, divergence, tau, alpha, v, buf)
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
            raise RuntimeError(
                "distill_loss supports one backward pass (its gradients are scaled in place): "
                "call it again instead of retain_graph=True"
            )
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.input_dtypes
        # in place: no second (V, d) tensor next to the saved one
        gh = grad_h.mul_(grad_loss).to(h_dtype) if grad_h is not None else None
        gw = grad_w.mul_(grad_loss).to(w_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None, None, None, None, None, None


class ChunkBuffers:
    """Three (chunk, V) work tensors, allocated once per call and reused by every chunk: S (student logits,
    then G), T (teacher logits) and X (scratch: p_T^tau, exp(S - max), and, viewed as bf16/fp16, the matmul
    outputs and G's low-precision copy). On a CPU a fresh 200 MB tensor costs more in page faults than the
    softmax that fills it, hence the reuse."""

    def __init__(self, c, vs, vt, acc, mm_dtype, dev):
        self.S = torch.empty(c, vs, dtype=acc, device=dev)
        self.X = torch.empty(c, vs, dtype=acc, device=dev)
        self.T = torch.empty(c, vt, dtype=acc, device=dev) if vt else None
        self.acc, self.mm_dtype = acc, mm_dtype

    def scratch(self, m, cols, dtype=None):
        """A contiguous (m, cols) tensor on X's storage (dtype at most as wide as X's)."""
        return self.X.view(-1).view(dtype or self.acc)[: m * cols].view(m, cols)

    def logits(self, x, weight, out):
        if self.mm_dtype == self.acc:
            return torch.mm(x, weight.t(), out=out)
        low = self.scratch(out.shape[0], out.shape[1], self.mm_dtype)
        torch.mm(x, weight.t(), out=low)  # bf16 matmul, as autocast would run it; softmaxes in fp32 below
        return out.copy_(low)


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
    cols = v if torch.is_tensor(teacher) else vs  # logits the tempered student softmax runs over
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


def _check_kd_args(temperature, alpha, kl, chunk_size):
    """(tau, alpha, chunk_size) as numbers, or ValueError."""
    tau, alpha = float(temperature), float(alpha)
    if not tau > 0 or not math.isfinite(tau):
        raise ValueError(f"temperature must be > 0 and finite, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the CE weight) must be in [0, 1], got {alpha}")
    if kl not in KL_KINDS:
        raise ValueError(f"kl must be one of {', '.join(KL_KINDS)}, got {kl!r}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return tau, alpha, int(chunk_size)


def _teacher_mode(h, w, labels, th, tw, tv, ti, alpha, kl):
    """ "online", "topk" or "ce" (no teacher) from the arguments given, which are checked for shape here."""
    if h.dim() != 2 or labels.dim() != 1 or h.shape[0] != labels.shape[0]:
        raise ValueError(
            f"distill_loss wants student_hidden (N, d) and labels (N,), got {tuple(h.shape)} and "
            f"{tuple(labels.shape)}: flatten batch and time first"
        )
    if w.dim() != 2 or w.shape[1] != h.shape[1]:
        raise ValueError(f"student_head must be (V, {h.shape[1]}), got {tuple(w.shape)}: pass lm_head.weight")
    online, cached = th is not None or tw is not None, tv is not None or ti is not None
    if online and cached:
        raise TypeError(
            "give the teacher either online (teacher_hidden + teacher_head) or cached "
            "(teacher_topk_values + teacher_topk_indices), not both"
        )
    if online:
        if th is None or tw is None:
            raise TypeError("the online teacher needs both teacher_hidden and teacher_head")
        if th.shape[0] != h.shape[0] or tw.dim() != 2 or tw.shape[1] != th.shape[-1]:
            raise ValueError(
                f"teacher_hidden {tuple(th.shape)} and teacher_head {tuple(tw.shape)} do not match "
                f"{h.shape[0]} student tokens: pass (N, d_t) and (V_t, d_t)"
            )
        return "online"
    if cached:
        if tv is None or ti is None:
            raise TypeError("the cached teacher needs both teacher_topk_values and teacher_topk_indices")
        if tv.shape != ti.shape or tv.dim() != 2 or tv.shape[0] != h.shape[0]:
            raise ValueError(
                f"teacher_topk_values {tuple(tv.shape)} and teacher_topk_indices {tuple(ti.shape)} "
                f"must both be (N, k) with N = {h.shape[0]}"
            )
        if kl != "forward":
            raise ValueError(
                f"kl={kl!r} needs the teacher's full distribution; a top-k teacher supports kl='forward' only"
            )
        if ti.numel() and int(ti.max()) >= w.shape[0]:
            raise ValueError(
                f"teacher top-k index {int(ti.max())} is outside the student vocabulary "
                f"({w.shape[0]}): the top-k logits come from a different tokenizer"
            )
        return "topk"
    if alpha < 1:
        raise TypeError(
            "distill_loss needs a teacher (teacher_hidden + teacher_head, or cached top-k), "
            "or alpha=1 for plain cross-entropy"
        )
    return "ce"


def _sampled_mode(h, w, ids, entropy, mode, kl):
    """ "sampled" when the teacher is given as drawn token ids and its entropy, which are checked here."""
    if mode != "ce" or ids is None or entropy is None:
        raise TypeError(
            "the sampled teacher needs both teacher_samples and teacher_entropy, and no other teacher arguments"
        )
    if ids.dim() != 2 or ids.shape[0] != h.shape[0] or ids.shape[1] < 1 or entropy.shape != (h.shape[0],):
        raise ValueError(
            f"teacher_samples {tuple(ids.shape)} and teacher_entropy {tuple(entropy.shape)} must be (N, n) and "
            f"(N,) with N = {h.shape[0]}"
        )
    if kl != "forward":
        raise ValueError(f"kl={kl!r} needs the teacher's full distribution; a sampled teacher supports 'forward'")
    if ids.numel() and int(ids.long().max()) >= w.shape[0]:
        raise ValueError(
            f"sampled teacher token {int(ids.long().max())} is outside the student vocabulary ({w.shape[0]}): "
            "the samples come from a different tokenizer"
        )
    return "sampled"


def matmul_dtype(h, w):
    """bf16/fp16 under autocast (as F.linear would run), else the wider of the two input dtypes."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, w.dtype)
