"""Losses between next-token distributions over two different vocabularies, at aligned positions
(data/alignment.py).

- `uld`: Universal Logit Distillation (Boizard et al. 2024, arXiv 2402.12030): the Wasserstein-1
  distance between the two distributions under a cost that ignores which token is which, which has the
  closed form sum_i |p_s(i) - p_t(i)| over both probability vectors sorted in decreasing order, the shorter
  padded with zeros. It needs no vocabulary mapping, and it is zero when the student's sorted probabilities
  equal the teacher's.
- `shared_kl`: forward KL(teacher || student) over the entries both vocabularies share (alignment.
  shared_vocabulary), each side renormalised over that set: the one-to-one comparison GOLD makes where
  tokens match, zero when the student copies the teacher's distribution on the shared tokens.

Both reduce over positions by the mean, and take positions in chunks so that memory holds one chunk of
sorted probabilities at a time, whatever the teacher's vocabulary (a 262k-entry vocabulary is the case to
plan for).

`cross_tokenizer_kd` is what training uses: the same two terms from the models' final hidden states and
output heads, a chunk function of the shared fused kernel (losses/fused.py), so neither model's
vocabulary-sized logits outlive their chunk and the backward pass recomputes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slimlm.losses.fused import fused_head_loss, matmul_dtype

CROSS_TOKENIZER_MODES = ("aligned", "uld")
ULD_TOP = 4096  # sorted entries ULD compares one by one in training; the rest by their total mass


def uld(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0, chunk: int = 256):
    """Mean over positions of sum_i |sort(p_s)_i - sort(p_t)_i| (Boizard et al. 2024); logits (N, V_s)
    and (N, V_t) at aligned positions. Gradients flow to the student only."""
    _check(student_logits, teacher_logits, temperature, chunk)
    n = student_logits.shape[0]
    total = student_logits.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk):
        s = F.softmax(student_logits[start : start + chunk].float() / temperature, dim=-1)
        with torch.no_grad():
            t = F.softmax(teacher_logits[start : start + chunk].float() / temperature, dim=-1)
        s_sorted = s.sort(dim=-1, descending=True).values
        t_sorted = t.sort(dim=-1, descending=True).values
        width = max(s_sorted.shape[1], t_sorted.shape[1])
        s_sorted = F.pad(s_sorted, (0, width - s_sorted.shape[1]))
        t_sorted = F.pad(t_sorted, (0, width - t_sorted.shape[1]))
        total = total + (s_sorted - t_sorted).abs().sum()
    return total / max(n, 1)


def shared_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_ids: torch.Tensor,
    teacher_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk: int = 256,
):
    """Mean over positions of KL(p_t || p_s) restricted to the shared entries (student_ids[k] and teacher_ids[k]
    decode to the same text), each distribution renormalised over them."""
    _check(student_logits, teacher_logits, temperature, chunk)
    if student_ids.shape != teacher_ids.shape or student_ids.numel() == 0:
        raise ValueError("the shared vocabulary is empty or its two id lists differ in length")
    n = student_logits.shape[0]
    total = student_logits.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk):
        s = student_logits[start : start + chunk].float().index_select(-1, student_ids) / temperature
        with torch.no_grad():
            t = teacher_logits[start : start + chunk].float().index_select(-1, teacher_ids) / temperature
            log_t = F.log_softmax(t, dim=-1)
        log_s = F.log_softmax(s, dim=-1)
        total = total + (log_t.exp() * (log_t - log_s)).sum()
    return total / max(n, 1)


def _check(student_logits, teacher_logits, temperature, chunk) -> None:
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError("logits must be (positions, vocabulary)")
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(
            f"{student_logits.shape[0]} student and {teacher_logits.shape[0]} teacher positions: pass aligned rows"
        )
    if not temperature > 0 or chunk < 1:
        raise ValueError(f"temperature must be > 0 and chunk >= 1 (got {temperature}, {chunk})")


def cross_tokenizer_kd(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    *,
    shared: tuple[torch.Tensor, torch.Tensor] | None = None,
    temperature: float = 1.0,
    chunk: int | None = None,
    teacher_softcap: float | None = None,
    student_softcap: float | None = None,
    uld_top: int = ULD_TOP,
):
    """Sums over aligned positions of the cross-tokenizer KD: tau^2 * shared_kl (when `shared` = (student ids,
    teacher ids) is given: --cross-tokenizer aligned) + uld (always); returns (kd_sum, shared_kl_sum, uld_sum),
    the last two detached. student_hidden (N, d_s) and teacher_hidden (N, d_t): final hidden states at the
    aligned positions, row k of each reading the same text; heads (V, d). `*_softcap`: a model's final logit
    soft-capping (Gemma 2), applied as the model applies it. Gradients reach the student's hidden states and
    head only. `chunk` positions at a time (default: about 2^25 teacher logits, 128 rows for a 262k vocabulary).
    `uld_top`: ULD compares this many largest probabilities of each side one by one and the rest by their
    total mass (exact when it is at least both vocabularies; _uld_and_grad says what it costs otherwise).
    """
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(
            f"{student_hidden.shape[0]} student and {teacher_hidden.shape[0]} teacher rows: pass aligned rows"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    if shared is not None and (shared[0].shape != shared[1].shape or shared[0].numel() == 0):
        raise ValueError("the shared vocabulary is empty or its two id lists differ in length")
    chunk = chunk or max(16, 2**25 // teacher_head.shape[0])
    tau = float(temperature)

    def make_chunk(buf):
        s_ids, t_ids = (shared[0].to(buf.S.device), shared[1].to(buf.S.device)) if shared is not None else (None, None)
        tmm = matmul_dtype(teacher_hidden, teacher_head)
        twm = teacher_head.to(tmm)

        def chunk_loss(idx, S, buf):
            zs = _capped(S, student_softcap)
            zt = _capped((teacher_hidden.index_select(0, idx).to(tmm) @ twm.t()).to(buf.acc), teacher_softcap)
            uld_c, g = _uld_and_grad(zs, zt, tau, uld_top)
            kl_c = torch.zeros((), dtype=buf.acc, device=S.device)
            if s_ids is not None:
                kl_c, g_kl = _shared_kl_and_grad(zs, zt, s_ids, t_ids, tau)
                g.index_add_(1, s_ids, g_kl * (tau * tau))
            if student_softcap:  # d cap*tanh(x/cap) / dx = 1 - tanh^2
                g = g * (1 - (zs / student_softcap) ** 2)
            return (kl_c, uld_c), g

        return chunk_loss

    def combine(kl_sum, uld_sum):
        return kl_sum * (tau * tau) + uld_sum, (kl_sum, uld_sum)

    rows = torch.arange(student_hidden.shape[0], device=student_hidden.device)
    return fused_head_loss(student_hidden, student_head, rows, chunk, make_chunk, combine)


def _capped(z: torch.Tensor, cap: float | None) -> torch.Tensor:
    return torch.tanh(z / cap) * cap if cap else z


def _uld_and_grad(zs: torch.Tensor, zt: torch.Tensor, tau: float, top: int):
    """sum over rows of ULD over the `top` largest probabilities of each side (zero-padded where a vocabulary
    is smaller), plus |S - T| for the mass S, T each leaves outside them; and its gradient with respect to
    the student's logits: d/dp_s is the sign of each sorted difference (the tail's sign for every tail
    entry), put back in vocabulary order, then through the softmax (p * (g - <g, p>) / tau).

    With `top` at least both vocabularies this is exactly sum_i |sort(p_s)_i - sort(p_t)_i|; below, the
    tail term is a lower bound of the exact one (triangle inequality) and the two differ by at most twice
    the smaller tail mass. A full sort of a 262k-entry distribution costs 7x a top-4096 on a CPU, for
    entries that each hold a tiny share of the mass."""
    ps = torch.softmax(zs / tau, dim=-1)
    pt = torch.softmax(zt / tau, dim=-1)
    vs, vt = ps.shape[1], pt.shape[1]
    k = min(top, max(vs, vt))
    s_top, order = ps.topk(min(k, vs), dim=-1)
    t_top = pt.topk(min(k, vt), dim=-1).values
    s_pad = F.pad(s_top, (0, k - s_top.shape[1]))
    t_pad = F.pad(t_top, (0, k - t_top.shape[1]))
    tail_diff = (1 - s_top.sum(-1)).clamp_min(0) - (1 - t_top.sum(-1)).clamp_min(0)
    diff = s_pad - t_pad
    value = diff.abs().sum() + tail_diff.abs().sum()
    g_p = torch.sign(tail_diff).unsqueeze(1).expand_as(ps).clone()
    g_p.scatter_(1, order, torch.sign(diff[:, : s_top.shape[1]]))
    return value, ps * (g_p - (g_p * ps).sum(-1, keepdim=True)) / tau


def _shared_kl_and_grad(zs, zt, s_ids, t_ids, tau: float):
    """sum over rows of KL(q_t || q_s), q each model's distribution renormalised over the shared entries, and
    its gradient with respect to the student's shared logits: (q_s - q_t) / tau."""
    log_qs = torch.log_softmax(zs.index_select(1, s_ids) / tau, dim=-1)
    log_qt = torch.log_softmax(zt.index_select(1, t_ids) / tau, dim=-1)
    qt = log_qt.exp()
    return (qt * (log_qt - log_qs)).sum(), (log_qs.exp() - qt) / tau
