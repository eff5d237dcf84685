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

Under `torchrun`/`accelerate launch` the Trainer runs DDP (or FSDP/DeepSpeed when asked); the teacher is
loaded on every rank, frozen, in eval mode, and sharded like the student under FSDP or ZeRO-3. The token
count is summed over ranks (`average_tokens_across_devices`), so N ranks with batch b give the same
loss and gradients as one process with batch N*b. Checkpoints are written atomically (see
`output.commit_checkpoint`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from slimlm.training import distributed
from slimlm import precision as precisions
from slimlm.settings import SHARDED_STATE_DICT_REFUSED
from slimlm.losses.kd import attention_loss, distill_loss, feature_loss
from slimlm.errors import SlimlmError
from slimlm.output import SAVING_DIR, commit_checkpoint


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
                 precision=None, teacher_zero3=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled:
            check_fsdp_state_dict_type(self.accelerator.state.fsdp_plugin)
        self.teacher_zero3 = teacher_zero3  # the user's ZeRO-3 section when DeepSpeed should partition the teacher
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            self.teacher = self._place_teacher(teacher)
        self.temperature, self.alpha, self.kl, self.chunk_size = temperature, alpha, kl, chunk_size
        self.feature_map, self.feature_weight = list(feature_map), feature_weight
        self.teacher_std = [s.to(self.args.device) for s in teacher_std] if teacher_std else None
        self.attention_map, self.attention_weight = list(attention_map), attention_weight
        self.precision = precision  # a precision.Precision (None: fp32); every forward runs under it
        self._parts = defaultdict(float)
        self._parts_count = 0

    def _place_teacher(self, teacher):
        """The frozen teacher on this rank: whole on its device (DDP), or sharded (FSDP, DeepSpeed ZeRO-3)."""
        if self.is_deepspeed_enabled and self.teacher_zero3:
            return _deepspeed_teacher(teacher, self.accelerator, self.teacher_zero3)
        if self.is_fsdp_enabled:
            return _fsdp_teacher(teacher)
        return teacher.to(self.args.device)

    @contextlib.contextmanager
    def _teacher_head(self):
        """The teacher's output head, whole, for the chunked KD loss (read only: it has no gradient)."""
        weight = getattr(self.teacher, "module", self.teacher).get_output_embeddings().weight
        if hasattr(weight, "ds_id"):  # partitioned by ZeRO-3: gather it for the duration of the loss
            import deepspeed

            with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
                yield weight
        else:
            yield weight.full_tensor() if hasattr(weight, "full_tensor") else weight  # FSDP2 shards it as a DTensor

    def _autocast(self):
        return precisions.autocast(self.precision, self.args.device.type)

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
        head = contextlib.ExitStack()
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
                         "teacher_head": head.enter_context(self._teacher_head())}
            t_states = {t: teacher_out.hidden_states[t] for t, _ in self.feature_map}
        with head:
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
            # each part was normalised by the whole step's tokens (all ranks), so summing micro-batches and
            # ranks gives the step mean; every rank logs at the same step, so the sum over ranks cannot hang
            steps = max(1, self._parts_count // max(1, self.args.gradient_accumulation_steps))
            keys = sorted(self._parts)
            totals = distributed.all_sum([self._parts[k] for k in keys]) if self.args.world_size > 1 else \
                [self._parts[k] for k in keys]
            for key, value in zip(keys, totals):
                logs[key] = round(value / steps, 4)
            self._parts.clear()
            self._parts_count = 0
        super().log(logs, *args, **kwargs)


    # ---- atomic checkpoints: save into checkpoints/.saving/, then commit (record + rename) on rank 0
    _saving_checkpoint = False

    def _get_output_dir(self, trial):
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, SAVING_DIR) if self._saving_checkpoint else run_dir

    def _save_checkpoint(self, model, trial):
        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(run_dir / SAVING_DIR, ignore_errors=True)  # what a killed save left behind
        self.accelerator.wait_for_everyone()
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False
        self.accelerator.wait_for_everyone()  # every rank has written its part (at least its RNG state)
        if self.args.should_save:
            commit_checkpoint(run_dir / SAVING_DIR / name, run_dir / name, self.state.global_step)
            shutil.rmtree(run_dir / SAVING_DIR, ignore_errors=True)
            rotate_checkpoints(str(run_dir), save_total_limit=self.args.save_total_limit)
        self.accelerator.wait_for_everyone()


def check_fsdp_state_dict_type(plugin) -> None:
    """Refuse FSDP's SHARDED_STATE_DICT however it was chosen. settings.py refuses it in slimlm's own
    fsdp_config; this catches accelerate's plugin, which `accelerate launch --use_fsdp` configures from its
    own flags and config file, and which defaults to SHARDED_STATE_DICT under FSDP2 (--fsdp_version 2)."""
    if "SHARDED" in str(getattr(plugin, "state_dict_type", "")):
        raise SlimlmError(f"{SHARDED_STATE_DICT_REFUSED} (with accelerate launch --use_fsdp, pass "
                          "--fsdp_state_dict_type FULL_STATE_DICT or set it in the accelerate config)")


def _fsdp_teacher(teacher):
    """Shard the frozen teacher over the ranks with FSDP2 (`fully_shard` per decoder layer, then the root),
    so a teacher larger than one device still fits; its forward all-gathers one layer at a time. The teacher
    stays on the host until each `fully_shard` moves its module to the device and keeps this rank's shard,
    so no device ever holds more than one whole layer of it."""
    from torch.distributed.fsdp import fully_shard

    layer_types = tuple({type(m) for m in teacher.modules()
                         if type(m).__name__ in set(getattr(teacher, "_no_split_modules", None) or ())})
    for module in list(teacher.modules()):
        if layer_types and isinstance(module, layer_types):
            fully_shard(module)
    fully_shard(teacher)
    return teacher.eval()


def _deepspeed_teacher(teacher, accelerator, zero3: dict):
    """Partition the frozen teacher over the ranks with a ZeRO-3 inference engine (no optimizer), the way TRL
    prepares its teachers; the student's engine comes from the Trainer. `zero3`: the user's ZeRO section."""
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)  # batch sizes filled in
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    hidden = teacher.config.hidden_size
    sizes = {"reduce_bucket_size": hidden * hidden, "stage3_param_persistence_threshold": 10 * hidden,
             "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden)}
    zero = {k: v for k, v in zero3.items() if v != "auto" and k != "offload_optimizer"}
    config["zero_optimization"] = {**sizes, **zero, "stage": 3}
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


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


def perplexity_of(loss_nats: float) -> float:
    return math.exp(min(loss_nats, 700))
