"""Stage `finetune`: LoRA or full fine-tuning (paper section 2, Figure 3), with the teacher in the loss when
one is given, on plain text or instruction JSONL; writes the merged model and what it cost.

Reads top to bottom: load the model, the data and the teacher -> add LoRA -> measure -> train
(training/fit.py, peak memory measured around it) -> merge, measure again -> publish with slimlm.json.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from slimlm import distributed
from slimlm import precision as precisions
from slimlm.data.corpus import training_blocks
from slimlm.distributed import log
from slimlm.output import model_card, publish
from slimlm.settings import FinetuneSettings
from slimlm.sources import check_same_tokenizer
from slimlm.training.fit import fit
from slimlm.training.launch import (
    check_sharding,
    load_on_every_rank,
    prepare_data_on_every_rank,
    run_training_stage,
    settings_from,
    teacher_zero3,
    training_args,
    training_callbacks,
)
from slimlm.training.validation import validation_perplexity


def finetune(
    settings: FinetuneSettings | None = None,
    *,
    out: str,
    force: bool = False,
    resume: bool = False,
    recipe: str | None = None,
    stop_after: int | None = None,
    **overrides,
) -> Path:
    """Stage `finetune`: LoRA or full fine-tuning (paper section 2, Figure 3), with the teacher in the loss
    when one is given, on plain text or instruction JSONL; writes the merged model and what it cost.
    `stop_after` works as in `distill` (tests interrupt a run with it and finish it with `resume=True`)."""
    settings = settings_from(FinetuneSettings, settings, recipe, overrides)
    return run_training_stage(settings, _finetune, out, force=force, resume=resume, stop_after=stop_after)


def _finetune(settings: FinetuneSettings, out: Path, stage: Path, resume: bool, stop_after: int | None) -> Path:
    from slimlm.data.instructions import is_instruction_data, prepare_instructions, response_perplexity
    from slimlm.eval.metrics import peak_memory
    from slimlm.methods.lora import (
        MergedWithAdapter,
        add_lora,
        optimizer_state_bytes,
        target_modules,
        trainable_parameters,
    )
    from slimlm.training.terms import OutputTerm
    from slimlm.training.trainer import BlockDataset, DistillTrainer

    # ---- load
    start_time = time.time()
    torch.manual_seed(settings.seed)
    precision = precisions.resolve(settings.precision, announce=log)
    model, tokenizer, model_dir = load_on_every_rank(settings.model, settings.trust_remote_code)
    targets = target_modules(model, settings.target_modules) if settings.method == "lora" else None
    instruct = is_instruction_data(settings.data)
    if instruct:
        splits = prepare_instructions(settings.data, tokenizer, settings.block_size)
    else:
        splits = prepare_data_on_every_rank(settings.data, tokenizer, settings.block_size)
    log(splits.summary())
    teacher = teacher_dir = None
    if settings.teacher is not None:
        teacher, teacher_tok, teacher_dir = load_on_every_rank(settings.teacher, settings.trust_remote_code)
        check_same_tokenizer(teacher_tok, tokenizer)
    world = distributed.world_size()
    steps = settings.steps(world)
    per_step = settings.batch_size * settings.grad_accum * world  # the global batch, over all ranks
    if instruct:
        g = torch.Generator().manual_seed(settings.seed)
        n = len(splits.train)
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(steps * per_step / n))])
        train = type(splits.train)([splits.train[int(i)] for i in order[: steps * per_step]])
        train_tokens = train.tokens()
    else:
        train = BlockDataset(training_blocks(splits.train, steps * per_step, settings.seed))
        train_tokens = len(train) * settings.block_size

    def validation(m, shared=True):  # plain text: shared out over the ranks (see validation_perplexity)
        if instruct:
            with precisions.autocast(precision, next(m.parameters()).device.type):
                return response_perplexity(m, splits.val, max_tokens=settings.eval_tokens)
        return validation_perplexity(
            m, splits.val[: settings.eval_tokens], settings.eval_window, precision, shared=shared
        )

    # ---- measure, train
    before = validation(model)
    if settings.method == "lora":
        model = add_lora(
            model,
            rank=settings.rank,
            lora_alpha=settings.lora_alpha,
            dropout=settings.dropout,
            targets=targets,
            seed=settings.seed,
        )
    params = trainable_parameters(model)
    log(
        f"{settings.method} fine-tuning: {params['trainable']:,} trainable parameters "
        f"({params['percent']:.2f}% of {params['total']:,}); validation perplexity {before['perplexity']:.2f}; "
        f"{steps} steps, {'distillation loss against ' + settings.teacher if teacher else 'cross-entropy'}"
    )
    # without a teacher the output term is plain cross-entropy (alpha = 1)
    terms = [
        OutputTerm(
            settings.temperature, settings.alpha if teacher is not None else 1.0, settings.kl, settings.chunk_size
        )
    ]
    trainer = DistillTrainer(
        model,
        terms=terms,
        teacher=teacher,
        precision=precision,
        teacher_zero3=teacher_zero3(settings),
        args=training_args(settings, stage, steps),
        train_dataset=train,
        callbacks=training_callbacks(settings, stop_after),
    )
    check_sharding(settings, trainer)
    memory = {}
    trained = fit(
        trainer,
        stage,
        steps,
        resume=resume,
        stop_after=stop_after,
        tokens_per_step=per_step * settings.block_size,
        around=lambda train_fn: memory.update(peak_memory(model, train_fn)),
    )
    if trained is None:
        return stage
    planned_tokens = train_tokens
    if trained.steps < steps:  # --max-time stopped it: count what was trained
        seen = trained.steps * per_step
        train_tokens = type(train)(train.examples[:seen]).tokens() if instruct else seen * settings.block_size
    if trained.budget is not None:
        trained.budget["trained_tokens"] = train_tokens

    # ---- merge, measure, publish (rank 0 only; the other ranks wait for it)
    def finish():
        runtime = trained.runtime_s or (time.time() - start_time)
        cost = {
            "trainable_parameters": params["trainable"],
            "total_parameters": params["total"],
            "trainable_percent": params["percent"],
            "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
            "peak_memory_mib": memory["peak_memory_mib"],
            "peak_memory_over_baseline_mib": memory["peak_memory_over_baseline_mib"],
            "memory_method": memory["memory_method"],
            "train_tokens": train_tokens,
            "train_tokens_per_s": train_tokens / runtime if runtime else None,
        }
        merged = published = trained.model
        if settings.method == "lora":
            merged.save_pretrained(stage / "adapter", safe_serialization=True)
            merged = merged.merge_and_unload()
            published = MergedWithAdapter(merged, stage / "adapter")
        after = validation(merged, shared=False)
        log(
            f"after {settings.method} fine-tuning: validation perplexity {after['perplexity']:.2f} "
            f"(before {before['perplexity']:.2f}), next-token accuracy {after['accuracy']:.3f} "
            f"(before {before['accuracy']:.3f}); {cost['train_tokens_per_s']:.0f} training tokens/s, "
            f"peak memory {cost['peak_memory_mib']:.0f} MiB, "
            f"optimizer state {cost['optimizer_state_bytes'] / 2**20:.1f} MiB"
        )
        record = {
            "stage": "finetune",
            "model": settings.model,
            "model_dir": str(model_dir),
            "teacher": settings.teacher,
            "teacher_dir": str(teacher_dir) if teacher_dir else None,
            "settings": settings.to_dict(),
            "precision": precision.to_dict(),
            "cpu": precisions.cpu_kind(),
            "data": splits.info,
            "method": {
                "name": settings.method,
                "rank": settings.rank if targets else None,
                "lora_alpha": settings.lora_alpha if targets else None,
                "target_modules": targets,
                "loss": "distillation" if teacher is not None else "cross-entropy",
                "adapter": "adapter/ (peft format; PeftModel.from_pretrained(base, 'OUT/adapter'))"
                if targets
                else None,
            },
            "training": {
                "steps": trained.steps,
                "tokens": train_tokens,
                "train_runtime_s": runtime,
                "planned_steps": steps,
                "planned_tokens": planned_tokens,
                "time_budget": trained.budget,
                "wall_time_s": time.time() - start_time,
                "processes": world,
                "log": trained.log,
            },
            "cost": cost,
            "metrics": {"validation_before": before, "validation_after": after},
        }
        title = f"{settings.model} after {'LoRA' if targets else 'full'} fine-tuning"
        publish(stage, out, published, tokenizer, record, model_card(title, record))

    distributed.on_main(finish)
    log(f"wrote {out}")
    return out
