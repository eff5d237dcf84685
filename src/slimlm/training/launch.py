"""Launch plumbing shared by the training stages: settings -> claimed output, TrainingArguments, DDP/FSDP/
DeepSpeed, resuming from a checkpoint and gathering the trained weights back onto rank 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slimlm import distributed
from slimlm.data.corpus import prepare_data
from slimlm.distributed import log
from slimlm.errors import SlimlmError, first_line
from slimlm.output import claim_output, discard_if_unstarted
from slimlm.settings import load_recipe, with_overrides
from slimlm.sources import load_model
from slimlm.training.checkpoints import last_good_checkpoint
from slimlm.training.trainable import split_state, student_of


def settings_from(settings_type, settings, recipe, overrides: dict):
    """The stage's settings, validated before anything loads: keywords > the recipe (or a given settings
    object, which plays the recipe's part) > the defaults (settings.with_overrides)."""
    if settings is not None and not isinstance(settings, settings_type):
        raise SlimlmError(
            f"the first argument is a {settings_type.__name__}, got {type(settings).__name__} {settings!r}; "
            "pass everything else by keyword (e.g. slimlm.finetune(model='runs/s15', out='runs/ft'))"
        )
    if settings is not None and recipe:
        raise SlimlmError(
            f"both a {settings_type.__name__} and a recipe ({recipe}) were given; pass one of them (keywords may "
            "change either)"
        )
    base = settings.to_dict() if settings is not None else load_recipe(recipe) if recipe else {}
    name = f"the {settings_type.__name__}" if settings is not None else f"recipe {recipe}"
    return settings_type.from_dict(with_overrides(base, overrides, name)).validate()


def run_training_stage(settings, body, out, *, force: bool, resume: bool, stop_after: int | None):
    """Claim the output, run `body(settings, out, stage, resume, stop_after)`, clean up on failure.

    Under torchrun/accelerate every rank runs this; rank 0 alone claims, cleans up and publishes."""
    if resume and settings.deepspeed:
        raise SlimlmError(
            "--resume with --deepspeed would load DeepSpeed's checkpoint files, which it reads with "
            "pickle (torch.load weights_only=False); slimlm loads no pickles: use --fsdp for a "
            "sharded run that can resume"
        )
    out = Path(out)
    stage = Path(distributed.on_main(lambda: str(claim_output(out, force=force, resume=resume))))
    try:
        return body(settings, out, stage, resume, stop_after)
    except BaseException:
        if distributed.is_main_process():
            discard_if_unstarted(stage)  # keep checkpoints for --resume, drop an empty staging area
        raise


def load_on_every_rank(spec, trust_remote_code):
    """load_model on every rank; rank 0 first, so a hub download or GGUF conversion fills the cache once."""
    return distributed.main_first(load_model, spec, trust_remote_code=trust_remote_code)


def prepare_data_on_every_rank(spec, tokenizer, block_size):
    return distributed.main_first(prepare_data, spec, tokenizer, block_size)


def trained_model(trainer):
    """The trained student as a plain module where rank 0 can evaluate and save it. Every rank calls this:
    under FSDP or DeepSpeed the full weights are gathered (a collective) and loaded into a fresh copy on
    rank 0 (other ranks get None); under DDP every rank already holds the whole model. Loss terms trained
    with the student (training/trainable.py) stay behind."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    student = student_of(model)
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return student
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not distributed.is_main_process():
        return None
    from transformers import AutoModelForCausalLM

    if student is not model:
        state = split_state(state)[0]
    plain = AutoModelForCausalLM.from_config(student.config)
    missing, unexpected = plain.load_state_dict({k: v.cpu() for k, v in state.items()}, strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:  # lm_head may be tied to the embeddings
        raise SlimlmError(
            f"gathering the sharded model lost weights ({(missing + unexpected)[:3]}); "
            "report this with the launch command"
        )
    plain.tie_weights()
    return plain.float()


def training_callbacks(settings, stop_after: int | None) -> list | None:
    """Trainer callbacks: `--max-time` (training/budget.py) and the tests' interruption point."""
    from slimlm.training.budget import StopAfterSteps, TimeBudget

    callbacks = [StopAfterSteps(stop_after)] if stop_after else []
    budget = settings.time_budget_s()
    if budget is not None:
        callbacks.append(TimeBudget(budget))
    return callbacks or None


def training_args(settings, stage: Path, steps: int):
    """TrainingArguments for the stage. Multi-process runs need nothing extra: under torchrun/accelerate the
    Trainer runs DDP (gloo on CPU, NCCL on CUDA); `fsdp`/`deepspeed` settings pass through. The blocks are
    already in a seeded order (`training_blocks`), so the sampler is sequential: N ranks with batch b see
    exactly the global batches that one process with batch N*b sees (accelerate deals batch i to rank i % N)."""
    from transformers import TrainingArguments

    parallel = {}
    if settings.fsdp:
        parallel = {"fsdp": settings.fsdp, "fsdp_config": settings.fsdp_config}
    elif settings.deepspeed:
        parallel = {"deepspeed": _deepspeed_configs(settings.deepspeed)[0]}
    try:
        return TrainingArguments(
            output_dir=str(stage / "checkpoints"),
            max_steps=steps,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.grad_accum,
            learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay,
            warmup_steps=int(settings.warmup_ratio * steps),
            lr_scheduler_type="cosine",
            optim=settings.optim,
            max_grad_norm=settings.max_grad_norm,
            logging_steps=settings.logging_steps,
            save_steps=settings.save_steps,
            save_total_limit=2,
            save_strategy="steps",
            seed=settings.seed,
            data_seed=settings.seed,
            report_to=[],
            remove_unused_columns=False,
            dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=not distributed.is_main_process(),
            average_tokens_across_devices=True,
            train_sampling_strategy="sequential",
            ddp_find_unused_parameters=False,
            **parallel,
        )
    except ImportError as exc:
        raise SlimlmError(
            f"{first_line(exc)}; install what it names (e.g. pip install deepspeed) or drop --deepspeed/--fsdp"
        ) from None


def check_sharding(settings, trainer) -> None:
    if settings.fsdp and not trainer.is_fsdp_enabled:
        log(
            "--fsdp is ignored: accelerate runs FSDP only on accelerators, launched by torchrun or accelerate "
            "launch; this run is plain data parallel (DDP) or a single process"
        )


def teacher_zero3(settings) -> dict | None:
    zero3 = _deepspeed_configs(settings.deepspeed)[1] if settings.deepspeed else None
    if zero3 is not None:
        log(
            "DeepSpeed ZeRO-3: the teacher is partitioned over the processes; the student trains under ZeRO-2 "
            "(docs/multi-gpu.md)"
        )
    return zero3


def _deepspeed_configs(path: str) -> tuple[dict, dict | None]:
    """(the student's DeepSpeed config, the teacher's ZeRO-3 section or None) from the user's JSON file.

    slimlm's chunked KD loss reads the student's output head outside the model's forward pass, which
    ZeRO-3 would have partitioned, so a stage-3 config trains the student under ZeRO-2 (gradients and
    optimizer state sharded; the student is the small model) and partitions the frozen teacher with
    ZeRO-3 (inference only): the case of a teacher that does not fit one device."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SlimlmError(f"--deepspeed {path} is not a readable JSON file ({type(exc).__name__}); fix it") from None
    zero = dict(config.get("zero_optimization") or {})
    if zero.get("stage") != 3:
        return config, None
    student = {
        **config,
        "zero_optimization": {
            k: v for k, v in zero.items() if not k.startswith("stage3") and k not in ("offload_param",)
        },
    }
    student["zero_optimization"]["stage"] = 2
    return student, zero


def resume_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose completion record verifies (rank 0 looks; every rank gets the answer).
    A truncated or half-written newer one is logged, moved aside as `damaged-N`, and the one before is used."""
    found = distributed.on_main(lambda: str(last_good_checkpoint(folder, log=log) or ""))
    if found:
        log(f"resuming from {Path(found).name}")
    return Path(found) if found else None
