"""The teacher's signal, one small typed value per kind, as the KD kernel (kd.py) reads it.

- `OnlineTeacher`: the teacher's final hidden states and lm_head; the divergence runs over the full vocabulary
  (forward KL, reverse KL or JSD: divergences.py).
- `TopkTeacher`: a cache's top-k raw logits and their token ids; forward KL over that support (biased).
- `SampledTeacher`: a cache's token ids drawn from p_T^tau and the teacher's entropy; an unbiased estimate of
  the forward KL and its gradient (divergences.sampled_forward_kl).

Each knows how to check itself against the student, how wide a teacher-logit buffer it needs, which
divergence it supports, and what the kernel's chunk function gets for a chunk of rows. A new kind (an
on-policy teacher scoring the student's own samples, say) is one more class here. The cross-tokenizer
teacher lives with its own loss (uld.py): its positions, not its logits, differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimlm.losses.divergences import DIVERGENCES, sampled_forward_kl, topk_forward_kl


@dataclass(frozen=True)
class OnlineTeacher:
    hidden: torch.Tensor  # (N, d_t) final-norm hidden states, aligned with the student's rows
    head: torch.Tensor  # (V_t, d_t) bias-free lm_head weight

    def check(self, h, w, kl):
        if self.hidden.shape[0] != h.shape[0] or self.head.dim() != 2 or self.head.shape[1] != self.hidden.shape[-1]:
            raise ValueError(
                f"teacher_hidden {tuple(self.hidden.shape)} and teacher_head {tuple(self.head.shape)} do not match "
                f"{h.shape[0]} student tokens: pass (N, d_t) and (V_t, d_t)"
            )

    def columns(self, vs: int) -> int:
        """Logits compared: the first min(V_s, V_t) (same tokenizer, padded embedding matrices)."""
        return min(vs, self.head.shape[0])

    def divergence(self, kl):
        return DIVERGENCES[kl]

    def chunks(self, buf, vs: int):
        """chunk(idx) -> the teacher's fp32 logits for those rows, in buf.T (the divergence may consume them)."""
        v = self.columns(vs)
        head = self.head[:v].to(buf.mm_dtype)

        def chunk(idx):
            return buf.logits(self.hidden.index_select(0, idx).to(buf.mm_dtype), head, buf.T[: idx.numel()])

        return chunk


@dataclass(frozen=True)
class TopkTeacher:
    values: torch.Tensor  # (N, k) raw logits, any float dtype
    indices: torch.Tensor  # (N, k) token ids

    def check(self, h, w, kl):
        tv, ti = self.values, self.indices
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

    def columns(self, vs: int) -> int:
        return vs

    def divergence(self, kl):
        return topk_forward_kl

    def chunks(self, buf, vs: int):
        return lambda idx: (self.values.index_select(0, idx).to(buf.acc), self.indices.index_select(0, idx).long())


@dataclass(frozen=True)
class SampledTeacher:
    ids: torch.Tensor  # (N, n) token ids drawn from p_T^tau
    entropy: torch.Tensor  # (N,) H(p_T^tau)

    def check(self, h, w, kl):
        ids, entropy = self.ids, self.entropy
        if ids.dim() != 2 or ids.shape[0] != h.shape[0] or ids.shape[1] < 1 or entropy.shape != (h.shape[0],):
            raise ValueError(
                f"teacher_samples {tuple(ids.shape)} and teacher_entropy {tuple(entropy.shape)} must be (N, n) "
                f"and (N,) with N = {h.shape[0]}"
            )
        if kl != "forward":
            raise ValueError(f"kl={kl!r} needs the teacher's full distribution; a sampled teacher supports 'forward'")
        if ids.numel() and int(ids.long().max()) >= w.shape[0]:
            raise ValueError(
                f"sampled teacher token {int(ids.long().max())} is outside the student vocabulary "
                f"({w.shape[0]}): the samples come from a different tokenizer"
            )

    def columns(self, vs: int) -> int:
        return vs

    def divergence(self, kl):
        return sampled_forward_kl

    def chunks(self, buf, vs: int):
        return lambda idx: (
            self.ids.index_select(0, idx).long(),
            self.entropy.index_select(0, idx).to(buf.acc).unsqueeze(1),
        )


TEACHERS = (OnlineTeacher, TopkTeacher, SampledTeacher)


def teacher_from_arguments(hidden=None, head=None, topk_values=None, topk_indices=None, samples=None, entropy=None):
    """The typed teacher from distill_loss's keyword arguments (None: no teacher), or TypeError for a mixture
    or a half-given kind."""
    given = {
        "online": (hidden, head),
        "cached": (topk_values, topk_indices),
        "sampled": (samples, entropy),
    }
    kinds = [k for k, pair in given.items() if any(x is not None for x in pair)]
    if len(kinds) > 1:
        raise TypeError(
            "give the teacher one way: online (teacher_hidden + teacher_head), cached top-k "
            "(teacher_topk_values + teacher_topk_indices) or sampled (teacher_samples + teacher_entropy), not "
            + " and ".join(kinds)
        )
    if not kinds:
        return None
    kind = kinds[0]
    if any(x is None for x in given[kind]):
        raise TypeError(
            {
                "online": "the online teacher needs both teacher_hidden and teacher_head",
                "cached": "the cached teacher needs both teacher_topk_values and teacher_topk_indices",
                "sampled": "the sampled teacher needs both teacher_samples and teacher_entropy",
            }[kind]
        )
    cls = {"online": OnlineTeacher, "cached": TopkTeacher, "sampled": SampledTeacher}[kind]
    return cls(*given[kind])
