"""The teacher's signal, one small typed value per kind, as the KD kernel (kd.py) reads it.

- `OnlineTeacher`: the teacher's final hidden states and lm_head; the divergence runs over the full vocabulary
  (forward KL, reverse KL or generalised JSD at a given beta: divergences.py).
- `PolicyTeacher`: the online teacher scoring tokens the student sampled, plus the sampler's log-probabilities;
  the sampled reverse-KL estimate of on-policy distillation (divergences.sampled_reverse_kl).
- `TopkTeacher`: a cache's top-k raw logits and their token ids; forward KL over that support (biased).
- `SampledTeacher`: a cache's token ids drawn from p_T^tau and the teacher's entropy; an unbiased estimate of
  the forward KL and its gradient (divergences.sampled_forward_kl).

Each knows how to check itself against the student, how wide a teacher-logit buffer it needs, which
divergence it supports, and what the kernel's chunk function gets for a chunk of rows; a new kind is one more
class here. The cross-tokenizer teacher lives with its own loss (uld.py): its positions, not its logits, differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimlm.losses.divergences import divergence_for, sampled_forward_kl, sampled_reverse_kl, topk_forward_kl


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
        if kl == "sampled-reverse":
            raise ValueError("kl='sampled-reverse' scores tokens the student sampled: give a PolicyTeacher")

    def columns(self, vs: int) -> int:
        """Logits compared: the first min(V_s, V_t) (same tokenizer, padded embedding matrices)."""
        return min(vs, self.head.shape[0])

    def divergence(self, kl, beta=0.5):
        """The chunk function; `beta` is generalised JSD's (read for kl='jsd' only; 1/2 is today's `jsd`)."""
        return divergence_for(kl, beta)

    def chunks(self, buf, vs: int):
        """chunk(idx) -> the teacher's fp32 logits for those rows, in buf.T (the divergence may consume them)."""
        v = self.columns(vs)
        head = self.head[:v].to(buf.mm_dtype)

        def chunk(idx):
            return buf.logits(self.hidden.index_select(0, idx).to(buf.mm_dtype), head, buf.T[: idx.numel()])

        return chunk


@dataclass(frozen=True)
class PolicyTeacher:
    """An online teacher scoring the student's own samples: row i's `tokens[i]` was drawn by the student (it is
    the row's label; ignored rows may hold anything), with log-probability `sample_logprobs[i]` under the sampler
    (None: drawn from p_S^tau itself, importance weight 1). Its teacher logits are made as `OnlineTeacher` makes
    them; only log sum exp(T / tau) and T[y] are read."""

    hidden: torch.Tensor  # (N, d_t) final-norm hidden states, aligned with the student's rows
    head: torch.Tensor  # (V_t, d_t) bias-free lm_head weight
    tokens: torch.Tensor  # (N,) int: the sampled token of each row
    sample_logprobs: torch.Tensor | None = None  # (N,) float: log q(token) when it was sampled

    def online(self) -> OnlineTeacher:
        return OnlineTeacher(self.hidden, self.head)

    def check(self, h, w, kl):
        self.online().check(h, w, "forward")
        n, lq = h.shape[0], self.sample_logprobs
        if self.tokens.shape != (n,) or (lq is not None and lq.shape != (n,)):
            raise ValueError(
                f"policy tokens {tuple(self.tokens.shape)} and sample_logprobs "
                f"{None if lq is None else tuple(lq.shape)} must be (N,) with N = {n}"
            )
        if kl != "sampled-reverse":
            raise ValueError(f"a policy teacher supports kl='sampled-reverse' only, got {kl!r}: use OnlineTeacher")
        cols = self.columns(w.shape[0])
        if self.tokens.numel() and int(self.tokens.max()) >= cols:
            raise ValueError(f"policy token {int(self.tokens.max())} is outside the {cols} logits compared")

    def columns(self, vs: int) -> int:
        return self.online().columns(vs)

    def divergence(self, kl, beta=0.5):
        return sampled_reverse_kl

    def chunks(self, buf, vs: int):
        """chunk(idx) -> (the teacher's fp32 logits in buf.T, sampled tokens (m, 1), their log q (m, 1) or None)."""
        logits, lq = self.online().chunks(buf, vs), self.sample_logprobs

        def chunk(idx):
            y = self.tokens.index_select(0, idx).long().unsqueeze(1)
            return logits(idx), y, None if lq is None else lq.index_select(0, idx).to(buf.acc).unsqueeze(1)

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

    def divergence(self, kl, beta=0.5):
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

    def divergence(self, kl, beta=0.5):
        return sampled_forward_kl

    def chunks(self, buf, vs: int):
        return lambda idx: (
            self.ids.index_select(0, idx).long(),
            self.entropy.index_select(0, idx).to(buf.acc).unsqueeze(1),
        )


TEACHERS = (OnlineTeacher, PolicyTeacher, TopkTeacher, SampledTeacher)


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
