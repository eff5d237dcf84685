"""The loss as a configured list of weighted terms (paper section 2), summed by the trainer:

    L = 1 * output + beta * feature + gamma * attention
    output    = alpha * CE + (1 - alpha) * tau^2 * D(p_T || p_S)     (eq. L_KD; CE alone without a teacher)
                on the rows of tokens the student sampled itself (training/on_policy.py): (1 - alpha) * tau^2 * D'
                alone, D' the on-policy divergence (GKD, Agarwal et al. 2024): no CE on the student's own text
    feature   = sum_l ||(h_l^T - P_l(h_m(l)^S)) / sigma_l||^2          (eq. L_feature, standardised)
    attention = sum_l KL(A_l^T || A_m(l)^S)                           (Fig. 1, optional)

CE and KD are one term, "output", weighted by alpha and 1 - alpha inside it: both come out of the same
fused chunked kernel (losses/kd.py), which never holds a whole batch's logits, so computing them apart would
make the vocabulary-sized logits twice. Every term reads one `Step` (the student's forward and the teacher's
`Signal`), returns (value, parts to log), and is an nn.Module: a term with parameters of its own (the feature
term's projections) is trained with the student (training/trainable.py). The logged part names ("ce", "kd",
"feature", "attention") are slimlm.json's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimlm import precision as precisions
from slimlm.losses import IGNORE_INDEX
from slimlm.losses.attention import attention_loss
from slimlm.losses.feature import feature_loss, make_projection
from slimlm.losses.kd import distill_loss
from slimlm.losses.reduce import denominator
from slimlm.losses.teachers import PolicyTeacher
from slimlm.losses.uld import cross_tokenizer_kd
from slimlm.training.signal import Signal


@dataclass
class Step:
    """What every term reads for one micro-batch."""

    student: nn.Module  # the plain student (its output head feeds the chunked KD kernel)
    out: object  # the student's forward output, with hidden states (and attentions when a term asks)
    signal: Signal
    labels: torch.Tensor  # (N,) next-token labels, IGNORE_INDEX where nothing is scored
    num_items: object  # valid tokens of the whole optimizer step (all micro-batches and ranks)
    policy_rows: torch.Tensor | None = None  # (N,) bool: rows whose label the student sampled (on-policy steps)
    sample_logprobs: torch.Tensor | None = None  # (N,) the sampler's log-probability of those labels


class OutputTerm(nn.Module):
    """alpha * CE + (1 - alpha) * tau^2 * D over the final hidden states (eq. L_KD), from one fused kernel."""

    needs_attentions = False
    teacher_layers = ()

    def __init__(
        self,
        temperature: float,
        alpha: float,
        kl: str = "forward",
        chunk_size: int = 1024,
        *,
        policy_divergence: str | None = None,
        jsd_beta: float = 0.5,
    ):
        super().__init__()
        self.weight = 1.0  # alpha and 1 - alpha weigh CE and KD inside the kernel
        self.temperature, self.alpha, self.kl, self.chunk_size = temperature, alpha, kl, chunk_size
        self.policy_divergence, self.jsd_beta = policy_divergence or kl, jsd_beta

    def forward(self, step: Step):
        if step.policy_rows is None:
            loss, parts = self._loss(step, step.labels, self.alpha, self.kl, step.signal.teacher)
            return loss, {k: v.detach() for k, v in parts.items()}
        # an on-policy step: the prompt's rows as usual, the sampled rows with the divergence alone (one kernel, two
        # disjoint row sets, both normalised by the step's tokens)
        data = step.labels.masked_fill(step.policy_rows, IGNORE_INDEX)
        sampled = step.labels.masked_fill(~step.policy_rows, IGNORE_INDEX)
        loss, parts = self._loss(step, data, self.alpha, self.kl, step.signal.teacher)
        teacher = step.signal.teacher
        if self.policy_divergence == "sampled-reverse":
            teacher = PolicyTeacher(teacher.hidden, teacher.head, sampled.clamp(min=0), step.sample_logprobs)
        policy_loss, policy_parts = self._loss(step, sampled, 0.0, self.policy_divergence, teacher)
        parts.update(kd_policy=policy_parts["kd"], nll_policy=policy_parts["ce"])
        return loss + (1 - self.alpha) * policy_loss, {k: v.detach() for k, v in parts.items()}

    def _loss(self, step: Step, labels, alpha: float, kl: str, teacher):
        return distill_loss(
            step.out.hidden_states[-1].flatten(0, 1),
            step.student.get_output_embeddings().weight,
            labels,
            temperature=self.temperature,
            alpha=alpha,
            kl=kl,
            jsd_beta=self.jsd_beta,
            chunk_size=self.chunk_size,
            num_items=step.num_items,
            teacher=teacher,
        )


class CrossTokenizerTerm(nn.Module):
    """alpha * CE + (1 - alpha) * KD for a teacher with another tokenizer (`--cross-tokenizer`): CE on the
    student's own tokens (the fused kernel, no teacher), KD at the positions where both models have read the
    same text (data/aligned_blocks.py): tau^2 * KL over the vocabulary entries both share plus ULD over the
    sorted distributions (`aligned`), or ULD alone (`uld`, `shared` None); losses/uld.py. KD is a sum over
    aligned positions divided by the step's student tokens, like every term."""

    needs_attentions = False
    teacher_layers = ()

    def __init__(
        self,
        temperature,
        alpha,
        shared=None,
        chunk_size=1024,
        teacher_softcap=None,
        student_softcap=None,
        teacher_head=None,
    ):
        super().__init__()
        self.weight = 1.0
        self.temperature, self.alpha, self.chunk_size = temperature, alpha, chunk_size
        self.shared = shared  # plain tensors (student ids, teacher ids): fixed, not trained or saved
        self.teacher_softcap, self.student_softcap = teacher_softcap, student_softcap
        self.teacher_head = teacher_head  # with a cached teacher: its output head (plain tensor, not saved)

    def forward(self, step: Step):
        cross = step.signal.cross
        if not cross:
            raise ValueError(
                f"the cross-tokenizer term needs the teacher on its own tokens; the signal is {step.signal.kind}"
            )
        hidden = step.out.hidden_states[-1].flatten(0, 1)
        head = step.student.get_output_embeddings().weight
        if self.shared is not None and self.shared[0].device != head.device:  # moved once, not per step
            self.shared = tuple(ids.to(head.device) for ids in self.shared)
        ce, _ = distill_loss(hidden, head, step.labels, alpha=1.0, chunk_size=self.chunk_size, num_items=step.num_items)
        kd_sum, kl_sum, uld_sum = cross_tokenizer_kd(
            hidden.index_select(0, cross["student_rows"]),
            head,
            cross["teacher_hidden"],
            cross["teacher_head"] if cross["teacher_head"] is not None else self._teacher_head_on(head.device),
            shared=self.shared,
            temperature=self.temperature,
            teacher_softcap=self.teacher_softcap,
            student_softcap=self.student_softcap,
        )
        n = denominator(step.num_items, step.labels)
        kd = kd_sum / n
        parts = {"ce": ce.detach(), "kd": kd.detach(), "uld": (uld_sum / n).detach()}
        if self.shared is not None:
            parts["shared_kl"] = (kl_sum / n).detach()
        return self.alpha * ce + (1 - self.alpha) * kd, parts

    def _teacher_head_on(self, device):
        """The cached run's teacher head on the training device, moved once."""
        if self.teacher_head is None:
            raise ValueError("a cached cross-tokenizer signal needs the term to hold the teacher's output head")
        if self.teacher_head.device != device:
            self.teacher_head = self.teacher_head.to(device)
        return self.teacher_head


class FeatureTerm(nn.Module):
    """beta * eq. L_feature over mapped hidden states. Owns what it needs: the projections P_l (trained with
    the student when widths differ) and the teacher's per-dimension std sigma_l (measured once)."""

    needs_attentions = False

    def __init__(self, layer_map, weight: float, teacher_std, d_student: int, d_teacher: int):
        super().__init__()
        self.layer_map, self.weight = list(layer_map), weight
        self.teacher_layers = tuple(t for t, _ in self.layer_map)
        self.teacher_std = list(teacher_std) or None  # plain tensors: fixed statistics, not trained or saved
        self.projections = None
        if d_student != d_teacher:
            self.projections = nn.ModuleList([make_projection(d_student, d_teacher) for _ in self.layer_map])

    def forward(self, step: Step):
        feat = feature_loss(
            [step.signal.hidden[t].flatten(0, 1) for t, _ in self.layer_map],
            [step.out.hidden_states[s].flatten(0, 1) for _, s in self.layer_map],
            projections=list(self.projections) if self.projections is not None else None,
            teacher_std=self._teacher_std_on(step.labels.device),
            mask=step.labels.ne(IGNORE_INDEX),
            num_items=step.num_items,
        )
        return feat, {"feature": feat.detach()}

    def _teacher_std_on(self, device):
        """The statistics on the training device, moved once (not per micro-batch)."""
        if self.teacher_std and self.teacher_std[0].device != device:
            self.teacher_std = [s.to(device) for s in self.teacher_std]
        return self.teacher_std


class AttentionTerm(nn.Module):
    """gamma * the attention-map KL of mapped decoder layers (Fig. 1); needs the online teacher."""

    needs_attentions = True
    teacher_layers = ()

    def __init__(self, layer_map, weight: float):
        super().__init__()
        self.layer_map, self.weight = list(layer_map), weight

    def forward(self, step: Step):
        if step.signal.attentions is None:
            raise ValueError(
                f"the attention term needs the online teacher's attention maps; the signal is {step.signal.kind}"
            )
        att = attention_loss(
            [step.signal.attentions[t] for t, _ in self.layer_map],
            [step.out.attentions[s] for _, s in self.layer_map],
            mask=step.labels.ne(IGNORE_INDEX),
            num_items=step.num_items,
        )
        return att, {"attention": att.detach()}


def weighted_sum(terms, step: Step):
    """(sum of weight * value over the terms, their logged parts)."""
    total, parts = None, {}
    for term in terms:
        value, term_parts = term(step)
        total = term.weight * value if total is None else total + term.weight * value
        parts.update(term_parts)
    return total, parts


def feature_term(teacher, student, layer_map, weight: float, calibration: torch.Tensor, precision):
    """The feature term for `layer_map`, its statistics measured on `calibration` blocks; None when it is off."""
    if not layer_map or weight <= 0:
        return None
    std = teacher_feature_std(teacher, calibration, [t for t, _ in layer_map], precision)
    return FeatureTerm(layer_map, weight, std, student.config.hidden_size, teacher.config.hidden_size)


def teacher_feature_std(teacher, blocks: torch.Tensor, layers: list[int], precision) -> list[torch.Tensor]:
    """Per-dimension std of the teacher's hidden states on calibration blocks, one vector per mapped layer.

    A few hidden dimensions of real models are huge (raw MSE ~1e3 against a KL ~1), so the feature loss
    is taken on standardised dimensions. Computed once, so the loss does not depend on batch composition.
    """
    if not layers:
        return []
    device = next(teacher.parameters()).device
    with torch.inference_mode(), precisions.autocast(precision, device.type):
        out = teacher(input_ids=blocks.to(device), output_hidden_states=True, logits_to_keep=1, use_cache=False)
    return [out.hidden_states[t].float().flatten(0, 1).std(0).clamp_min(1e-3).cpu() for t in layers]
