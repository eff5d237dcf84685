"""What the two training stages, `distill` and `finetune`, do alike: plan the steps over the ranks, then build
the DistillTrainer and fit it (training/fit.py). One copy, so a change to how a run trains reaches both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimlm import distributed
from slimlm.training.fit import Trained, fit
from slimlm.training.launch import check_sharding, teacher_zero3, training_args, training_callbacks


@dataclass
class Plan:
    """How much the run trains: its optimizer steps, and the examples one step takes over all ranks."""

    world: int  # processes training together
    steps: int
    per_step: int  # the global batch: batch_size x grad_accum x world


def plan(settings) -> Plan:
    """The run's steps and global batch for the processes this run was launched with."""
    world = distributed.world_size()
    return Plan(world, settings.steps(world), settings.batch_size * settings.grad_accum * world)


def build_and_fit(
    settings,
    model,
    stage: Path,
    run: Plan,
    *,
    terms: list,
    teacher,
    precision,
    dataset,
    resume: bool,
    stop_after: int | None,
    data_collator=None,
    around=None,
    on_policy=None,
) -> tuple[object, Trained | None]:
    """(the trainer, what fit left): `model` trained on `dataset` with `terms` for the planned steps, resumed
    from `stage`'s checkpoints when asked; `teacher` None reads the signal from the dataset (or has none);
    `on_policy` (training/on_policy.py) has the student write part of its own training text."""
    from slimlm.training.trainer import DistillTrainer  # transformers: not at `import slimlm`

    trainer = DistillTrainer(
        model,
        terms=terms,
        teacher=teacher,
        precision=precision,
        teacher_zero3=teacher_zero3(settings),
        args=training_args(settings, stage, run.steps),
        train_dataset=dataset,
        data_collator=data_collator,
        callbacks=training_callbacks(settings, stop_after),
        on_policy=on_policy,
    )
    check_sharding(settings, trainer)
    trained = fit(
        trainer,
        stage,
        run.steps,
        resume=resume,
        stop_after=stop_after,
        tokens_per_step=run.per_step * settings.block_size,
        around=around,
    )
    return trainer, trained
