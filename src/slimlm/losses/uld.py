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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
