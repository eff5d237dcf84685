"""Distillation on top of `transformers.Trainer`: only the loss is ours.

Checkpoints, `--resume`, gradient accumulation, logging, progress bars and multi-GPU launch come from the
Trainer people already use. The loss is a list of weighted terms (training/terms.py: output = CE + KD,
feature, attention; paper section 2) summed over the teacher's signal for the batch (training/signal.py:
online, cached or none). Every term is a sum over tokens divided by the token count of the whole optimizer
step (the Trainer's `num_items_in_batch`), so it does not depend on how a batch is split into micro-batches.

Under `torchrun`/`accelerate launch` the Trainer runs DDP (or FSDP/DeepSpeed when asked); the teacher is
loaded on every rank, frozen, in eval mode, and sharded like the student under FSDP or ZeRO-3. The token
count is summed over ranks (`average_tokens_across_devices`), so N ranks with batch b give the same
loss and gradients as one process with batch N*b. Checkpoints are written atomically (see
`training/checkpoints.py`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from slimlm import distributed
from slimlm import precision as precisions
from slimlm.errors import SlimlmError
from slimlm.losses import IGNORE_INDEX
from slimlm.settings import SHARDED_STATE_DICT_REFUSED
from slimlm.training.checkpoints import SAVING_DIR, commit_checkpoint
from slimlm.training.signal import place_teacher, teacher_signal
from slimlm.training.terms import Step, weighted_sum
from slimlm.training.trainable import TERMS_FILE, StudentWithTerms, split_state, student_of, trainable


class BlockDataset(Dataset):
    """Token blocks as causal-LM examples; `shift_labels[t]` is the token after position t."""

    def __init__(self, blocks: torch.Tensor, cached_teacher=None):
        self.blocks = blocks
        self.cached_teacher = cached_teacher

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        ids = self.blocks[i]
        item = {
            "input_ids": ids,
            "labels": ids,
            "shift_labels": torch.cat([ids[1:], torch.tensor([IGNORE_INDEX], dtype=ids.dtype)]),
        }
        if self.cached_teacher is not None:
            item.update(self.cached_teacher[i])
        return item


class NonFiniteLoss(SlimlmError):
    pass


class DistillTrainer(Trainer):
    """A Trainer whose loss is the weighted sum of `terms` over the teacher's signal.

    model: the student; `terms` (training/terms.py) are trained with it when they have parameters.
    teacher: the online teacher (None: cached signal from the dataset, or none). precision: a
    precision.Precision under which every forward runs (None: fp32). teacher_zero3: the user's ZeRO-3
    section when DeepSpeed should partition the teacher. on_policy: a training/on_policy.OnPolicy when a share of
    the steps trains on the student's own continuations (None: every step on the data).
    """

    def __init__(self, model, *, terms, teacher=None, precision=None, teacher_zero3=None, on_policy=None, **kwargs):
        self.terms = list(terms)
        super().__init__(model=trainable(model, self.terms), **kwargs)
        if self.is_fsdp_enabled:
            check_fsdp_state_dict_type(self.accelerator.state.fsdp_plugin)
        self.teacher = None if teacher is None else place_teacher(teacher, self, teacher_zero3)
        self.precision = precision
        self.teacher_layers = sorted({t for term in self.terms for t in term.teacher_layers})
        self.want_attentions = any(term.needs_attentions for term in self.terms)
        self._parts = defaultdict(float)
        self._parts_count = defaultdict(int)  # micro-batches each part was added over (on-policy parts: due steps)
        self.on_policy = on_policy
        self._sampling_mark = (time.perf_counter(), 0.0)  # (wall clock, sampling seconds) at the last log

    def _autocast(self):
        return precisions.autocast(self.precision, self.args.device.type)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        policy = self.on_policy is not None and model.training and self.on_policy.due(self.state.global_step)
        if policy:  # the block's end rewritten by the student; same length, so num_items_in_batch still holds
            student = student_of(self.accelerator.unwrap_model(model))
            inputs = self.on_policy.batch(student, inputs, self.state.global_step, self.precision)
        labels = inputs["shift_labels"]
        with self._autocast():
            # logits_to_keep=1: the model computes logits for one position only; the loss makes its own, in chunks.
            out = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs.get("attention_mask"),
                output_hidden_states=True,
                output_attentions=self.want_attentions,
                logits_to_keep=1,
                use_cache=False,
            )
        n_items = num_items_in_batch if num_items_in_batch is not None else labels.ne(IGNORE_INDEX).sum()
        with contextlib.ExitStack() as stack:  # holds a gathered (ZeRO-3) teacher head while the terms run
            signal = teacher_signal(
                self.teacher, inputs, self.teacher_layers, self.want_attentions, self.precision, stack
            )
            step = Step(
                student_of(self.accelerator.unwrap_model(model)),
                out,
                signal,
                labels.flatten(),
                n_items,
                inputs["policy_rows"].flatten() if policy else None,
                inputs["sample_logprobs"].flatten() if policy else None,
            )
            loss, parts = weighted_sum(self.terms, step)
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLoss(
                f"loss became {loss.item()} at step {self.state.global_step + 1}; the last good "
                "checkpoint is kept: lower --learning-rate or check the data, then --resume"
            )
        for key, value in parts.items():
            self._parts[key] += float(value)
            self._parts_count[key] += 1
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
        return (loss, out) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self._parts_count and "loss" in logs:
            # each part was normalised by the whole step's tokens (all ranks), so summing micro-batches and
            # ranks gives the step mean; a part present on some steps only (kd_policy, nll_policy on the due
            # steps) is the mean over those steps (still over the step's tokens: the sampled rows are C of each
            # block's). Every rank logs at the same step, so the sum cannot hang.
            accumulation = max(1, self.args.gradient_accumulation_steps)
            keys = sorted(self._parts)
            totals = (
                distributed.all_sum([self._parts[k] for k in keys])
                if self.args.world_size > 1
                else [self._parts[k] for k in keys]
            )
            for key, value in zip(keys, totals):
                # six significant digits, not a fixed number of decimals: a sampled-cache KD estimate near
                # zero must not be logged as exactly 0
                logs[key] = float(f"{value / max(1, self._parts_count[key] // accumulation):.6g}")
            self._parts.clear()
            self._parts_count.clear()
        if self.on_policy is not None and "loss" in logs:
            logs["sampling_share"] = self._sampling_share()
        super().log(logs, *args, **kwargs)

    def _sampling_share(self) -> float:
        """The share of the wall time since the last log that the student spent sampling its continuations."""
        now, sampled = time.perf_counter(), self.on_policy.seconds
        wall, before = now - self._sampling_mark[0], self._sampling_mark[1]
        self._sampling_mark = (now, sampled)
        return round((sampled - before) / wall, 3) if wall > 0 else 0.0

    # ---- a student trained with its loss terms: the student saved as itself, the terms' parameters beside it

    def _save(self, output_dir=None, state_dict=None):
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, StudentWithTerms):
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return None
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        student, terms = split_state(model.state_dict() if state_dict is None else state_dict)
        model.student.save_pretrained(output_dir, state_dict=student)
        save_file({k: v.detach().contiguous().cpu() for k, v in terms.items()}, os.path.join(output_dir, TERMS_FILE))
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if model is None and isinstance(self.model, StudentWithTerms):  # not sharded: the files _save wrote
            terms_file = os.path.join(resume_from_checkpoint, TERMS_FILE)
            if not os.path.isfile(terms_file):  # written by slimlm before the terms owned their parameters
                raise SlimlmError(
                    f"{resume_from_checkpoint} has no {TERMS_FILE} (the feature projections), so it cannot resume "
                    "this run; it was written by an older slimlm: rerun with --force instead of --resume"
                )
            super()._load_from_checkpoint(resume_from_checkpoint, model=self.model.student)
            self.model.terms.load_state_dict(load_file(terms_file))
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)  # FSDP: its own whole-module checkpoint

    def _load_rng_state(self, checkpoint):  # called once on resume, before the first step: the sampler's state too
        super()._load_rng_state(checkpoint)
        if self.on_policy is not None and checkpoint:
            self.on_policy.load(Path(checkpoint), self.args.process_index)
            self._sampling_mark = (time.perf_counter(), self.on_policy.seconds)

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
        if self.on_policy is not None:  # before the barrier below: rank 0 commits every rank's files
            self.on_policy.save(run_dir / SAVING_DIR / name, self.args.process_index)
        self.accelerator.wait_for_everyone()  # every rank has written its part (at least its RNG state)
        if self.args.should_save:
            commit_checkpoint(run_dir / SAVING_DIR / name, run_dir / name, self.state.global_step)
            shutil.rmtree(run_dir / SAVING_DIR, ignore_errors=True)
            rotate_checkpoints(str(run_dir), save_total_limit=self.args.save_total_limit)
        self.accelerator.wait_for_everyone()


def check_fsdp_state_dict_type(plugin) -> None:
    """Refuse FSDP's SHARDED_STATE_DICT however it was chosen. settings/training.py refuses it in slimlm's own
    fsdp_config; this catches accelerate's plugin, which `accelerate launch --use_fsdp` configures from its
    own flags and config file, and which defaults to SHARDED_STATE_DICT under FSDP2 (--fsdp_version 2)."""
    if "SHARDED" in str(getattr(plugin, "state_dict_type", "")):
        raise SlimlmError(
            f"{SHARDED_STATE_DICT_REFUSED} (with accelerate launch --use_fsdp, pass "
            "--fsdp_state_dict_type FULL_STATE_DICT or set it in the accelerate config)"
        )
