"""Distillation on top of `transformers.Trainer`: only the loss is ours.

Checkpoints, `--resume`, gradient accumulation, logging, progress bars and multi-GPU launch come
from the Trainer people already use. The loss (paper section 2) is
    L = alpha*CE + (1-alpha)*tau^2*KL(teacher || student)          (logit KD, per token)
      + beta * sum_l ||h_l^T - P_l(h_m(l)^S)||^2                    (feature KD, standardised)
      + gamma * attention-map KL                                    (optional, Fig. 1)
computed from final hidden states in chunks, so full-vocabulary fp32 logits never exist for more
than one chunk of tokens. Every term is a sum over tokens divided by the token count of the whole
optimizer step (the Trainer's `num_items_in_batch`), so it does not depend on how a batch is split
into micro-batches.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback

from slimlm.kd.losses import attention_loss, distill_loss, feature_loss
from slimlm.errors import SlimlmError


class BlockDataset(Dataset):
    """Token blocks as causal-LM examples; `shift_labels[t]` is the token after position t."""

    def __init__(self, blocks: torch.Tensor, cached_teacher=None):
        self.blocks = blocks
        self.cached_teacher = cached_teacher

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        ids = self.blocks[i]
        item = {"input_ids": ids, "labels": ids,
                "shift_labels": torch.cat([ids[1:], torch.tensor([-100], dtype=ids.dtype)])}
        if self.cached_teacher is not None:
            item.update(self.cached_teacher[i])
        return item


class NonFiniteLoss(SlimlmError):
    pass


class DistillTrainer(Trainer):
    """A Trainer whose loss is the paper's distillation loss against an online or cached teacher."""

    def __init__(self, *args, teacher=None, temperature=2.0, alpha=0.5, kl="forward", chunk_size=1024,
                 feature_map=(), feature_weight=0.0, teacher_std=None, attention_map=(), attention_weight=0.0,
                 bf16=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            teacher.to(self.args.device)
        self.temperature, self.alpha, self.kl, self.chunk_size = temperature, alpha, kl, chunk_size
        self.feature_map, self.feature_weight = list(feature_map), feature_weight
        self.teacher_std = [s.to(self.args.device) for s in teacher_std] if teacher_std else None
        self.attention_map, self.attention_weight = list(attention_map), attention_weight
        self.bf16 = bf16
        self._parts = defaultdict(float)
        self._parts_count = 0

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.args.device.type, dtype=torch.bfloat16)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, labels = inputs["input_ids"], inputs["shift_labels"]
        want_attn = bool(self.attention_map) and self.attention_weight > 0
        with self._autocast():
            # logits_to_keep=1: the model computes logits for one position only; the loss makes its own, in chunks.
            out = model(input_ids=ids, attention_mask=inputs.get("attention_mask"), output_hidden_states=True,
                        output_attentions=want_attn, logits_to_keep=1, use_cache=False)
        student = self.accelerator.unwrap_model(model)
        n_items = num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum()
        flat_labels = labels.flatten()
        s_final = out.hidden_states[-1].flatten(0, 1)
        teacher_out = None
        if "topk_values" in inputs:
            kd_kwargs = {"teacher_topk_values": inputs["topk_values"].flatten(0, 1),
                         "teacher_topk_indices": inputs["topk_indices"].flatten(0, 1).long()}
            t_states = {t: inputs[f"teacher_hidden_{t}"] for t, _ in self.feature_map}
        elif self.teacher is None:  # plain fine-tuning: distill_loss is chunked cross-entropy (alpha must be 1)
            kd_kwargs, t_states = {}, {}
        else:
            with torch.no_grad(), self._autocast():
                teacher_out = self.teacher(input_ids=ids, attention_mask=inputs.get("attention_mask"),
                                           output_hidden_states=True, output_attentions=want_attn,
                                           logits_to_keep=1, use_cache=False)
            kd_kwargs = {"teacher_hidden": teacher_out.hidden_states[-1].flatten(0, 1),
                         "teacher_head": self.teacher.get_output_embeddings().weight}
            t_states = {t: teacher_out.hidden_states[t] for t, _ in self.feature_map}
        loss, parts = distill_loss(s_final, student.get_output_embeddings().weight, flat_labels,
                                   temperature=self.temperature, alpha=self.alpha, kl=self.kl,
                                   chunk_size=self.chunk_size, num_items=n_items, **kd_kwargs)
        parts = {k: v.detach() for k, v in parts.items()}
        mask = flat_labels.ne(-100)
        if self.feature_map and self.feature_weight > 0:
            projections = getattr(student, "slimlm_projections", None)
            feat = feature_loss([t_states[t].flatten(0, 1) for t, _ in self.feature_map],
                                [out.hidden_states[s].flatten(0, 1) for _, s in self.feature_map],
                                projections=list(projections) if projections is not None else None,
                                teacher_std=self.teacher_std, mask=mask, num_items=n_items)
            loss = loss + self.feature_weight * feat
            parts["feature"] = feat.detach()
        if want_attn:
            if teacher_out is None:
                raise SlimlmError("attention distillation needs the online teacher; drop --teacher-cache")
            att = attention_loss([teacher_out.attentions[t] for t, _ in self.attention_map],
                                 [out.attentions[s] for _, s in self.attention_map],
                                 mask=labels.ne(-100), num_items=n_items)
            loss = loss + self.attention_weight * att
            parts["attention"] = att.detach()
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLoss(f"loss became {loss.item()} at step {self.state.global_step + 1}; the last good "
                                "checkpoint is kept: lower --learning-rate or check the data, then --resume")
        for key, value in parts.items():
            self._parts[key] += float(value)
        self._parts_count += 1
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
        return (loss, out) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self._parts_count and "loss" in logs:
            # each part was normalised by the whole step's tokens, so summing micro-batches gives the step mean
            steps = max(1, self._parts_count // max(1, self.args.gradient_accumulation_steps))
            for key, value in self._parts.items():
                logs[key] = round(value / steps, 4)
            self._parts.clear()
            self._parts_count = 0
        super().log(logs, *args, **kwargs)


class StopAfterSteps(TrainerCallback):
    """Stop (after the step's checkpoint is saved) once `global_step` reaches `stop_at`; used to test resume."""

    def __init__(self, stop_at: int):
        self.stop_at = stop_at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.stop_at:
            control.should_training_stop = True
        return control


def teacher_feature_std(teacher, blocks: torch.Tensor, layers: list[int], bf16: bool) -> list[torch.Tensor]:
    """Per-dimension std of the teacher's hidden states on calibration blocks, one vector per mapped layer.

    A few hidden dimensions of real models are huge (raw MSE ~1e3 against a KL ~1), so the feature loss
    is taken on standardised dimensions. Computed once, so the loss does not depend on batch composition.
    """
    if not layers:
        return []
    device = next(teacher.parameters()).device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = teacher(input_ids=blocks.to(device), output_hidden_states=True, logits_to_keep=1, use_cache=False)
    return [out.hidden_states[t].float().flatten(0, 1).std(0).clamp_min(1e-3).cpu() for t in layers]


def perplexity_of(loss_nats: float) -> float:
    return math.exp(min(loss_nats, 700))
