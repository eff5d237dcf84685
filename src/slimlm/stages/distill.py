"""Stage `distill`: train a student to match the teacher (paper section 2) and write it.

Reads top to bottom: validate the settings against the models' shapes (distill_checks.py) -> load the
teacher, the data and the student -> build the loss terms and the teacher's signal (online or cached) -> measure
the student -> train (trainer_fit.py, training/fit.py) -> measure again -> publish the plain student with
slimlm.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from slimlm import distributed
from slimlm import precision as precisions
from slimlm.data.corpus import calibration_sample, training_blocks
from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.methods.student import student_from_teacher
from slimlm.output import model_card, publish
from slimlm.settings import DistillSettings, parse_layer_map
from slimlm.sources import check_same_tokenizer
from slimlm.stages.distill_checks import check_shapes
from slimlm.stages.distill_text import cached_teacher, student_sampling, teacher_written_blocks
from slimlm.stages.trainer_fit import Plan, build_and_fit, plan
from slimlm.training.cross_tokenizer import (
    collate_aligned,
    cross_tokenizer_mode,
    cross_tokenizer_setup,
    held_out_divergence,
)
from slimlm.training.launch import load_on_every_rank, prepare_data_on_every_rank, run_training_stage, settings_from
from slimlm.training.validation import validation_perplexity


def distill(
    settings: DistillSettings | None = None,
    *,
    out: str,
    force: bool = False,
    resume: bool = False,
    recipe: str | None = None,
    stop_after: int | None = None,
    **overrides,
) -> Path:
    """Stage `distill`: train a student to match the teacher (paper section 2) and write it.

    `stop_after` ends training after that many steps (checkpoint kept, nothing published); tests use it
    to interrupt a run that `resume=True` then finishes.
    """
    settings = settings_from(DistillSettings, settings, recipe, overrides)
    check_shapes(settings)  # from the models' config.json: before the output is claimed or weights load
    return run_training_stage(settings, _distill, out, force=force, resume=resume, stop_after=stop_after)


@dataclass
class _Run:
    """What a distillation run loaded and planned; the steps after loading read it."""

    settings: DistillSettings
    teacher: object
    tokenizer: object  # the teacher's
    teacher_dir: Path
    student: object
    student_info: dict  # what slimlm.json says about the student
    student_tokenizer: object
    cross: str | None  # the cross-tokenizer mode; None when both models share a tokenizer
    splits: object
    feature_map: list
    attention_map: list
    plan: Plan
    blocks: torch.Tensor  # the training blocks, in training order
    val: torch.Tensor  # the validation tokens measured before and after training


class _Signal(NamedTuple):
    """What the student learns from: the loss terms, the dataset, the cross-tokenizer record, the cache, and
    the text the models write themselves (training/on_policy.py, training/teacher_generated.py)."""

    terms: list
    dataset: object
    cross_info: dict | None
    cached: object  # the teacher cache, or None for the online teacher
    on_policy: object = None  # training/on_policy.OnPolicy, or None
    teacher_generated: dict | None = None  # what slimlm.json says about the teacher's continuations


def _distill(settings: DistillSettings, out: Path, stage: Path, resume: bool, stop_after: int | None) -> Path:
    start_time = time.time()
    torch.manual_seed(settings.seed)
    precision = precisions.resolve(settings.precision, announce=log)
    run = _load(settings, precision)
    signal = _loss_and_signal(run, precision)
    held_out = _held_out(run, signal.terms[0], precision) if run.cross else None
    before = _measure_before(run, held_out, precision)
    _, trained = build_and_fit(
        settings,
        run.student,
        stage,
        run.plan,
        terms=signal.terms,
        teacher=None if signal.cached else run.teacher,
        precision=precision,
        dataset=signal.dataset,
        resume=resume,
        stop_after=stop_after,
        data_collator=collate_aligned if run.cross else None,
        on_policy=signal.on_policy,
    )
    if trained is None:
        return stage
    after = None if trained.sharded else validation_perplexity(trained.model, run.val, settings.eval_window, precision)

    def finish():  # rank 0 only: the other ranks wait and raise its error if it fails
        metrics = _measure_after(run, trained, after, before, held_out, precision)
        record = _record(run, signal, trained, before, metrics, precision, start_time)
        card = model_card(f"Student distilled from {settings.teacher}", record)
        publish(stage, out, trained.model, run.student_tokenizer, record, card)

    distributed.on_main(finish)
    log(f"wrote {out}")
    return out


def _load(settings: DistillSettings, precision) -> _Run:
    """The teacher, the data and the student, loaded on every rank; the layer maps and blocks follow from them."""
    teacher, tokenizer, teacher_dir = load_on_every_rank(settings.teacher, settings.trust_remote_code)
    given = None if settings.student is None else load_on_every_rank(settings.student, settings.trust_remote_code)
    student_tokenizer = tokenizer if given is None else given[1]
    cross = cross_tokenizer_mode(settings, tokenizer, student_tokenizer)
    # the student trains on its own tokens; with a shared tokenizer they are the teacher's
    splits = prepare_data_on_every_rank(settings.data, student_tokenizer if cross else tokenizer, settings.block_size)
    log(splits.summary())
    student, student_info = _student(settings, teacher, tokenizer, splits, precision, given, cross)
    n_t, n_s = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    steps = plan(settings)
    return _Run(
        settings=settings,
        teacher=teacher,
        tokenizer=tokenizer,
        teacher_dir=teacher_dir,
        student=student,
        student_info=student_info,
        student_tokenizer=student_tokenizer,
        cross=cross,
        splits=splits,
        feature_map=parse_layer_map(settings.feature_layers, n_t, n_s),
        attention_map=parse_layer_map(settings.attention_layers, n_t - 1, n_s - 1),
        plan=steps,
        blocks=training_blocks(splits.train, steps.steps * steps.per_step, settings.seed),
        val=splits.val[: settings.eval_tokens],
    )


def _loss_and_signal(run: _Run, precision) -> _Signal:
    """The loss terms and the teacher's signal: across tokenizers (training/cross_tokenizer.py), or the usual
    token-by-token terms with the online or cached teacher."""
    from slimlm.training.trainer import BlockDataset

    settings = run.settings
    if run.cross and (settings.on_policy or settings.teacher_generated):
        raise SlimlmError(
            "--on-policy and --teacher-generated need a student with the teacher's tokenizer (the teacher scores "
            "or writes text in its own tokens); drop them for a cross-tokenizer student"
        )
    if run.cross:
        return _Signal(
            *cross_tokenizer_setup(
                settings,
                run.cross,
                run.teacher,
                run.teacher_dir,
                run.student,
                run.blocks,
                run.tokenizer,
                run.student_tokenizer,
                precision,
            )
        )
    terms = _loss_terms(settings, run.teacher, run.student, run.splits, run.feature_map, run.attention_map, precision)
    generated = None
    if settings.teacher_generated:
        run.blocks, generated = teacher_written_blocks(settings, run.teacher, run.teacher_dir, run.blocks, precision)
    cached = cached_teacher(settings, run.teacher, run.teacher_dir, run.blocks, run.feature_map, precision)
    on_policy = student_sampling(settings)
    return _Signal(terms, BlockDataset(run.blocks, cached), None, cached, on_policy, generated)


def _held_out(run: _Run, term, precision):
    """The loss's own divergence on validation text (per aligned position), as a function of the student:
    on the first 4,096 validation tokens, as a 262k-vocabulary teacher makes it costly."""
    tokenizers = (run.student_tokenizer, run.tokenizer)

    def held_out(model):
        return held_out_divergence(
            model, run.teacher, term, run.val[:4096], run.settings.block_size, tokenizers, precision
        )

    return held_out


def _measure_before(run: _Run, held_out, precision) -> dict:
    """The student's validation perplexity (and cross-tokenizer divergence) before training, said with the plan."""
    settings, steps = run.settings, run.plan
    before = validation_perplexity(run.student, run.val, settings.eval_window, precision)
    if held_out is not None:
        before["cross_tokenizer"] = held_out(run.student)
        log(f"student before distillation: cross-tokenizer divergence on validation text {before['cross_tokenizer']}")
    log(
        f"student before distillation: validation perplexity {before['perplexity']:.1f}; training {steps.steps} "
        f"steps x {steps.per_step * settings.block_size} tokens ({len(run.blocks)} blocks"
        f"{f', {steps.world} processes' if steps.world > 1 else ''})"
    )
    return before


def _measure_after(run: _Run, trained, after, before: dict, held_out, precision) -> dict:
    """The trained student's validation metrics on rank 0 (`after`: already measured on every rank, or None)."""
    metrics = after or validation_perplexity(trained.model, run.val, run.settings.eval_window, precision, shared=False)
    if held_out is not None and not trained.sharded:
        metrics["cross_tokenizer"] = held_out(trained.model)
        log(f"student after distillation: cross-tokenizer divergence {metrics['cross_tokenizer']}")
    log(
        f"student after distillation: validation perplexity {metrics['perplexity']:.1f} "
        f"(before {before['perplexity']:.1f})"
    )
    return metrics


def _record(run: _Run, signal: _Signal, trained, before: dict, after: dict, precision, start_time: float) -> dict:
    """slimlm.json: the settings, the models and data, what training did and the metrics before and after."""
    settings, steps, cached = run.settings, run.plan, signal.cached
    tokens = trained.steps * steps.per_step * settings.block_size
    return {
        "stage": "distill",
        "teacher": settings.teacher,
        "teacher_dir": str(run.teacher_dir),
        "settings": settings.to_dict(),
        "precision": precision.to_dict(),
        "cpu": precisions.cpu_kind(),
        "data": run.splits.info,
        "student": run.student_info,
        "layer_map": {"features": run.feature_map, "attention": run.attention_map},
        "cross_tokenizer": signal.cross_info,
        "training": {
            "steps": trained.steps,
            "tokens": tokens,
            "planned_steps": steps.steps,
            "planned_tokens": len(run.blocks) * settings.block_size,
            "time_budget": trained.budget,
            "train_runtime_s": trained.runtime_s,
            "wall_time_s": time.time() - start_time,
            "teacher_cache": bool(cached),
            "teacher_cache_storage": cached.storage() if cached else None,
            **({"on_policy": signal.on_policy.record()} if signal.on_policy else {}),
            **_data_tokens(tokens, signal.on_policy, steps.world),
            **({"teacher_generated": signal.teacher_generated} if signal.teacher_generated else {}),
            "processes": steps.world,
            "log": trained.log,
        },
        "metrics": {"validation_before": before, "validation_after": after},
    }


def _data_tokens(tokens: int, on_policy, world: int) -> dict:
    """With --rollout-reuse, the tokens of data blocks trained on: a reused rollout stands in for its step's
    blocks (on every rank alike), so they are fewer than the tokens trained."""
    if on_policy is None or not on_policy.reused_tokens:
        return {}
    return {"data_tokens": tokens - on_policy.reused_tokens * world}


def _student(settings: DistillSettings, teacher, tokenizer, splits, precision, given, cross):
    """(the student to train, what slimlm.json says about it): the given model (`given`: loaded), or layers
    of the teacher."""
    if given is not None:
        student, student_tok, student_dir = given
        if not cross:
            check_same_tokenizer(tokenizer, student_tok)
        return student, {"from": str(student_dir)}
    made = {}

    def build(layers, keep_layers):
        made["student"], made["info"] = student_from_teacher(
            teacher,
            splits,
            layers=layers,
            keep_layers=keep_layers,
            student_config=settings.student_config,
            calibration=settings.calibration_blocks,
            seed=settings.seed,
            precision=precision,
        )
        return made["info"]["kept_layers"]

    # rank 0 measures which layers to keep; the others build the same student from its answer
    kept = distributed.on_main(build, settings.layers, settings.keep_layers)
    if not made:
        build(None, ",".join(map(str, kept)))
    torch.manual_seed(settings.seed)  # every rank goes on from the same RNG state
    return made["student"], made["info"]


def _loss_terms(settings: DistillSettings, teacher, student, splits, feature_map, attention_map, precision):
    """output (CE + KD), then feature and attention when their maps and weights are given (training/terms.py)."""
    from slimlm.training.terms import AttentionTerm, OutputTerm, feature_term

    terms = [
        OutputTerm(
            settings.temperature,
            settings.alpha,
            settings.kl,
            settings.chunk_size,
            policy_divergence=settings.policy_divergence,
            jsd_beta=settings.jsd_beta,
        )
    ]
    calibration = calibration_sample(splits.train, settings.calibration_blocks, settings.seed)
    feature = feature_term(teacher, student, feature_map, settings.feature_weight, calibration, precision)
    if feature is not None:
        terms.append(feature)
    if attention_map:
        for model in (teacher, student):
            model.set_attn_implementation("eager")  # attention maps need the eager kernel
        if settings.attention_weight > 0:
            terms.append(AttentionTerm(attention_map, settings.attention_weight))
    return terms
