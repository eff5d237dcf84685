"""The training skeleton both training stages share: resume from the last good checkpoint, train (within
--max-time), stop early when a test asks, gather the trained weights, and report what the run did."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from slimlm.distributed import log
from slimlm.training.launch import resume_checkpoint, trained_model
from slimlm.training.trainable import student_of


@dataclass
class Trained:
    """What a finished training run left."""

    model: nn.Module | None  # the plain trained student; None on ranks other than 0 when it was sharded
    sharded: bool  # gathered from shards onto rank 0: measure it there alone (shared=False)
    steps: int  # optimizer steps trained (fewer than planned when --max-time stopped the run)
    runtime_s: float | None  # the Trainer's train_runtime
    budget: dict | None  # what --max-time did (budget.budget_record), None without it
    log: list[dict]  # the logged steps (loss and its parts): slimlm.json's training.log


def fit(
    trainer, stage: Path, steps: int, *, resume: bool, stop_after: int | None, tokens_per_step: int, around=None
) -> Trained | None:
    """Run `trainer` to `steps` and gather the result on every rank (a collective when sharded).

    resume: continue from the newest checkpoint in `stage` that verifies. stop_after: end after that many
    steps, keeping the checkpoints (tests interrupt runs with it); then None is returned and nothing is to be
    published. around(train): runs train() for the caller, e.g. to measure peak memory around it.
    """
    # imported here: budget.py pulls in transformers' Trainer stack, which `import slimlm` should not pay for
    from slimlm.training.budget import budget_record, budget_stopped, restore_time_budget

    checkpoint = resume_checkpoint(stage / "checkpoints") if resume else None
    if resume and checkpoint is None:
        log(f"no checkpoint in {stage}; starting from the beginning")
    restore_time_budget(trainer, checkpoint)
    result = {}

    def train():
        result["run"] = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    (around or (lambda run: run()))(train)
    if stop_after and trainer.state.global_step < steps and not budget_stopped(trainer):
        log(f"stopped after step {trainer.state.global_step}; checkpoints in {stage}, finish with --resume")
        return None
    model = trained_model(trainer)
    sharded = model is None or model is not student_of(trainer.accelerator.unwrap_model(trainer.model))
    if model is not None:
        model.eval()
    return Trained(
        model=model,
        sharded=sharded,
        steps=trainer.state.global_step,
        runtime_s=result["run"].metrics.get("train_runtime"),
        budget=budget_record(trainer, tokens_per_step),
        log=[h for h in trainer.state.log_history if "loss" in h],
    )
