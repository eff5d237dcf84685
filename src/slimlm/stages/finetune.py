"""Stage `finetune`: LoRA or full fine-tuning (paper section 2, Figure 3), with the teacher in the loss when
one is given, on plain text or instruction JSONL; writes the merged model and what it cost.

Reads top to bottom: load the model, the data and the teacher -> add LoRA -> measure -> train
(trainer_fit.py and training/fit.py, peak memory measured around it) -> merge, measure again -> publish with
slimlm.json.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slimlm import distributed
from slimlm import precision as precisions
from slimlm.data.corpus import training_blocks
from slimlm.data.instructions import is_instruction_data, prepare_instructions, response_perplexity
from slimlm.distributed import log
from slimlm.eval.metrics import peak_memory
from slimlm.methods.lora import (
    MergedWithAdapter,
    add_lora,
    optimizer_state_bytes,
    target_modules,
    trainable_parameters,
)
from slimlm.output import model_card, publish
from slimlm.settings import FinetuneSettings
from slimlm.sources import check_same_tokenizer
from slimlm.stages.trainer_fit import Plan, build_and_fit, plan
from slimlm.training.launch import load_on_every_rank, prepare_data_on_every_rank, run_training_stage, settings_from
from slimlm.training.terms import OutputTerm
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


@dataclass
class _Run:
    """What a fine-tuning run loaded and planned; the steps after loading read it."""

    settings: FinetuneSettings
    model: object  # as loaded, before LoRA is added
    tokenizer: object
    model_dir: Path
    targets: list[str] | None  # the modules LoRA adapts; None for full fine-tuning
    instruct: bool  # instruction JSONL (the loss on the responses), not plain text
    splits: object
    teacher: object  # None: the loss is plain cross-entropy
    teacher_dir: Path | None
    plan: Plan
    train: object  # the training examples, in training order
    train_tokens: int  # the tokens they hold: what the planned steps train on


def _finetune(settings: FinetuneSettings, out: Path, stage: Path, resume: bool, stop_after: int | None) -> Path:
    start_time = time.time()
    torch.manual_seed(settings.seed)
    precision = precisions.resolve(settings.precision, announce=log)
    run = _load(settings)
    before = _validation(run, run.model, precision)
    model = _with_lora(settings, run.model, run.targets)
    params = trainable_parameters(model)
    _log_start(run, params, before)
    memory = {}
    trainer, trained = build_and_fit(
        settings,
        model,
        stage,
        run.plan,
        terms=_output_terms(settings, run.teacher),
        teacher=run.teacher,
        precision=precision,
        dataset=run.train,
        resume=resume,
        stop_after=stop_after,
        around=lambda train_fn: memory.update(peak_memory(model, train_fn)),
    )
    if trained is None:
        return stage
    train_tokens = _trained_tokens(run, trained)
    if trained.budget is not None:
        trained.budget["trained_tokens"] = train_tokens

    def finish():  # merge, measure, publish on rank 0 only; the other ranks wait for it
        runtime = trained.runtime_s or (time.time() - start_time)
        cost = _cost(params, trainer, memory, train_tokens, runtime)
        merged, published = _merged(settings, trained.model, stage)
        after = _validation(run, merged, precision, shared=False)
        _log_after(settings, before, after, cost)
        record = _record(run, trained, cost, runtime, before, after, precision, start_time)
        title = f"{settings.model} after {'LoRA' if run.targets else 'full'} fine-tuning"
        publish(stage, out, published, run.tokenizer, record, model_card(title, record))

    distributed.on_main(finish)
    log(f"wrote {out}")
    return out


def _load(settings: FinetuneSettings) -> _Run:
    """The model, its data and the teacher (if any) on every rank, and the examples the planned steps train on."""
    model, tokenizer, model_dir = load_on_every_rank(settings.model, settings.trust_remote_code)
    targets = target_modules(model, settings.target_modules) if settings.method == "lora" else None
    instruct = is_instruction_data(settings.data)
    if instruct:
        splits = prepare_instructions(settings.data, tokenizer, settings.block_size)
    else:
        splits = prepare_data_on_every_rank(settings.data, tokenizer, settings.block_size)
    log(splits.summary())
    teacher, teacher_dir = _teacher(settings, tokenizer)
    steps = plan(settings)
    train, train_tokens = _training_set(settings, splits, instruct, steps)
    return _Run(
        settings=settings,
        model=model,
        tokenizer=tokenizer,
        model_dir=model_dir,
        targets=targets,
        instruct=instruct,
        splits=splits,
        teacher=teacher,
        teacher_dir=teacher_dir,
        plan=steps,
        train=train,
        train_tokens=train_tokens,
    )


def _teacher(settings: FinetuneSettings, tokenizer) -> tuple:
    """(the teacher, its folder) when one is given, else (None, None); it must share the model's tokenizer."""
    if settings.teacher is None:
        return None, None
    teacher, teacher_tok, teacher_dir = load_on_every_rank(settings.teacher, settings.trust_remote_code)
    check_same_tokenizer(teacher_tok, tokenizer)
    return teacher, teacher_dir


def _training_set(settings: FinetuneSettings, splits, instruct: bool, steps: Plan) -> tuple:
    """(the examples the planned steps train on, in a seeded order, and the tokens they hold): instruction
    examples reshuffled for each pass over them, or plain-text blocks."""
    from slimlm.training.trainer import BlockDataset

    wanted = steps.steps * steps.per_step
    if not instruct:
        train = BlockDataset(training_blocks(splits.train, wanted, settings.seed))
        return train, len(train) * settings.block_size
    g = torch.Generator().manual_seed(settings.seed)
    n = len(splits.train)
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(wanted / n))])
    train = type(splits.train)([splits.train[int(i)] for i in order[:wanted]])
    return train, train.tokens()


def _validation(run: _Run, model, precision, shared: bool = True) -> dict:
    """Validation perplexity: on the responses of instruction data, or on plain text, shared out over the
    ranks unless `shared` is False (see validation_perplexity)."""
    settings, splits = run.settings, run.splits
    if run.instruct:
        with precisions.autocast(precision, next(model.parameters()).device.type):
            return response_perplexity(model, splits.val, max_tokens=settings.eval_tokens)
    return validation_perplexity(
        model, splits.val[: settings.eval_tokens], settings.eval_window, precision, shared=shared
    )


def _with_lora(settings: FinetuneSettings, model, targets: list[str] | None):
    """The model with LoRA adapters on `targets` (paper section 2), or as it is for full fine-tuning."""
    if settings.method != "lora":
        return model
    return add_lora(
        model,
        rank=settings.rank,
        lora_alpha=settings.lora_alpha,
        dropout=settings.dropout,
        targets=targets,
        seed=settings.seed,
    )


def _log_start(run: _Run, params: dict, before: dict) -> None:
    settings = run.settings
    log(
        f"{settings.method} fine-tuning: {params['trainable']:,} trainable parameters "
        f"({params['percent']:.2f}% of {params['total']:,}); validation perplexity {before['perplexity']:.2f}; "
        f"{run.plan.steps} steps, "
        f"{'distillation loss against ' + settings.teacher if run.teacher else 'cross-entropy'}"
    )


def _output_terms(settings: FinetuneSettings, teacher) -> list:
    """The loss: CE + KD against the teacher, or plain cross-entropy (alpha = 1) without one."""
    alpha = settings.alpha if teacher is not None else 1.0
    return [OutputTerm(settings.temperature, alpha, settings.kl, settings.chunk_size)]


def _trained_tokens(run: _Run, trained) -> int:
    """The tokens training went through: all planned, or those of the steps run when --max-time stopped it."""
    if trained.steps >= run.plan.steps:
        return run.train_tokens
    seen = trained.steps * run.plan.per_step
    if run.instruct:
        return type(run.train)(run.train.examples[:seen]).tokens()
    return seen * run.settings.block_size


def _merged(settings: FinetuneSettings, model, stage: Path) -> tuple:
    """(the model to measure, the model to publish): LoRA merged into the weights, its adapter kept in
    `stage`/adapter and published beside them; a fully fine-tuned model as it is."""
    if settings.method != "lora":
        return model, model
    model.save_pretrained(stage / "adapter", safe_serialization=True)
    merged = model.merge_and_unload()
    return merged, MergedWithAdapter(merged, stage / "adapter")


def _cost(params: dict, trainer, memory: dict, train_tokens: int, runtime: float) -> dict:
    """What fine-tuning cost: trainable parameters, optimizer state, peak memory and training speed."""
    return {
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


def _log_after(settings: FinetuneSettings, before: dict, after: dict, cost: dict) -> None:
    log(
        f"after {settings.method} fine-tuning: validation perplexity {after['perplexity']:.2f} "
        f"(before {before['perplexity']:.2f}), next-token accuracy {after['accuracy']:.3f} "
        f"(before {before['accuracy']:.3f}); {cost['train_tokens_per_s']:.0f} training tokens/s, "
        f"peak memory {cost['peak_memory_mib']:.0f} MiB, "
        f"optimizer state {cost['optimizer_state_bytes'] / 2**20:.1f} MiB"
    )


def _record(run: _Run, trained, cost: dict, runtime: float, before, after, precision, start_time: float) -> dict:
    """slimlm.json: the settings, the model and data, the method, what training did and cost, the metrics."""
    settings = run.settings
    return {
        "stage": "finetune",
        "model": settings.model,
        "model_dir": str(run.model_dir),
        "teacher": settings.teacher,
        "teacher_dir": str(run.teacher_dir) if run.teacher_dir else None,
        "settings": settings.to_dict(),
        "precision": precision.to_dict(),
        "cpu": precisions.cpu_kind(),
        "data": run.splits.info,
        "method": _method_record(run),
        "training": {
            "steps": trained.steps,
            "tokens": cost["train_tokens"],
            "train_runtime_s": runtime,
            "planned_steps": run.plan.steps,
            "planned_tokens": run.train_tokens,
            "time_budget": trained.budget,
            "wall_time_s": time.time() - start_time,
            "processes": run.plan.world,
            "log": trained.log,
        },
        "cost": cost,
        "metrics": {"validation_before": before, "validation_after": after},
    }


def _method_record(run: _Run) -> dict:
    """How the model was fine-tuned: LoRA's rank, alpha and targets (and where its adapter is), and the loss."""
    settings, targets = run.settings, run.targets
    return {
        "name": settings.method,
        "rank": settings.rank if targets else None,
        "lora_alpha": settings.lora_alpha if targets else None,
        "target_modules": targets,
        "loss": "distillation" if run.teacher is not None else "cross-entropy",
        "adapter": "adapter/ (peft format; PeftModel.from_pretrained(base, 'OUT/adapter'))" if targets else None,
    }
