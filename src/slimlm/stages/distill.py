"""Stage `distill`: train a student to match the teacher (paper section 2) and write it.

Reads top to bottom: validate the settings against the models' shapes -> load the teacher, the data and the
student -> build the loss terms and the teacher's signal (online or cached) -> measure the student -> train
(training/fit.py) -> measure again -> publish the plain student with slimlm.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from slimlm import distributed
from slimlm import precision as precisions
from slimlm.data.corpus import calibration_sample, training_blocks
from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.methods.layers import parse_keep_layers
from slimlm.methods.student import student_from_teacher
from slimlm.methods.width import check_widths
from slimlm.output import model_card, publish
from slimlm.settings import DistillSettings, comma_list, parse_layer_map
from slimlm.sources import check_same_tokenizer, layer_count, model_config
from slimlm.training.cross_tokenizer import (
    collate_aligned,
    cross_tokenizer_mode,
    cross_tokenizer_setup,
    held_out_divergence,
)
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
    _check_shapes(settings)  # from the models' config.json: before the output is claimed or weights load
    return run_training_stage(settings, _distill, out, force=force, resume=resume, stop_after=stop_after)


def _check_shapes(settings: DistillSettings) -> None:
    """Settings that depend on the models' shapes (layers to keep, layer maps, cached top-k) or on each other,
    checked from config.json alone, so a wrong index is one line now rather than after the teacher has loaded."""
    teacher = distributed.main_first(model_config, settings.teacher, trust_remote_code=settings.trust_remote_code)
    n_t = layer_count(teacher)
    if settings.student is not None:
        student = distributed.main_first(model_config, settings.student, trust_remote_code=settings.trust_remote_code)
        n_s = layer_count(student)
    elif settings.layers is not None:
        if not 1 <= settings.layers <= n_t:
            raise SlimlmError(
                f"--layers {settings.layers} is out of range; the teacher has {n_t} layers, keep 1..{n_t}"
            )
        n_s = settings.layers
    else:
        n_s = len(parse_keep_layers(settings.keep_layers, n_t))
    if settings.student is None and settings.student_config:
        check_widths(teacher, settings.student_config)
    for flag, spec, top_t, top_s in (
        ("--feature-layers", settings.feature_layers, n_t, n_s),
        ("--attention-layers", settings.attention_layers, n_t - 1, n_s - 1),
    ):
        try:
            parse_layer_map(spec, top_t, top_s)
        except SlimlmError as exc:
            raise SlimlmError(f"{flag}: {exc}") from None
    _cache_layers(settings.cache_layers, n_t)
    vocab = teacher.get_text_config().vocab_size
    if settings.teacher_cache and settings.cache_mode == "topk" and settings.top_k > vocab:
        raise SlimlmError(
            f"--top-k {settings.top_k} is more than the teacher's vocabulary ({vocab} tokens); "
            f"give at most {vocab} (the default is {DistillSettings.top_k})"
        )
    if settings.teacher_cache and settings.cache_mode == "sample" and (settings.cache_draws or 0) > vocab:
        raise SlimlmError(
            f"--cache-draws {settings.cache_draws} is more than the teacher's vocabulary ({vocab} tokens): more "
            f"draws per position cost more than the whole distribution; give at most {vocab} (the default fits "
            "64 bytes a position)"
        )
    if settings.teacher_cache and settings.attention_layers and settings.attention_weight > 0:
        raise SlimlmError("attention distillation needs the online teacher; drop --teacher-cache")


def _distill(settings: DistillSettings, out: Path, stage: Path, resume: bool, stop_after: int | None) -> Path:
    from slimlm.training.trainer import BlockDataset, DistillTrainer

    # ---- load
    start_time = time.time()
    torch.manual_seed(settings.seed)
    precision = precisions.resolve(settings.precision, announce=log)
    teacher, tokenizer, teacher_dir = load_on_every_rank(settings.teacher, settings.trust_remote_code)
    given = None if settings.student is None else load_on_every_rank(settings.student, settings.trust_remote_code)
    student_tokenizer = tokenizer if given is None else given[1]
    cross = cross_tokenizer_mode(settings, tokenizer, student_tokenizer)
    # the student trains on its own tokens; with a shared tokenizer they are the teacher's
    splits = prepare_data_on_every_rank(settings.data, student_tokenizer if cross else tokenizer, settings.block_size)
    log(splits.summary())
    student, student_info = _student(settings, teacher, tokenizer, splits, precision, given, cross)
    n_t, n_s = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    feature_map = parse_layer_map(settings.feature_layers, n_t, n_s)
    attention_map = parse_layer_map(settings.attention_layers, n_t - 1, n_s - 1)
    world = distributed.world_size()
    steps = settings.steps(world)
    per_step = settings.batch_size * settings.grad_accum * world  # the global batch, over all ranks
    blocks = training_blocks(splits.train, steps * per_step, settings.seed)

    # ---- the loss terms and the teacher's signal
    if cross:
        terms, dataset, cross_info, cached = cross_tokenizer_setup(
            settings, cross, teacher, teacher_dir, student, blocks, tokenizer, student_tokenizer, precision
        )
    else:
        terms = _loss_terms(settings, teacher, student, splits, feature_map, attention_map, precision)
        cached = _teacher_cache(settings, teacher, teacher_dir, blocks, feature_map, precision)
        dataset, cross_info = BlockDataset(blocks, cached), None

    # ---- measure, train, measure
    val = splits.val[: settings.eval_tokens]
    before = validation_perplexity(student, val, settings.eval_window, precision)
    held_out = None
    if cross:  # the loss's own divergence on validation text, before and after (per aligned position)

        def held_out(model):  # the first 4,096 validation tokens: a 262k-vocabulary teacher makes it costly
            return held_out_divergence(
                model, teacher, terms[0], val[:4096], settings.block_size, (student_tokenizer, tokenizer), precision
            )

        before["cross_tokenizer"] = held_out(student)
        log(f"student before distillation: cross-tokenizer divergence on validation text {before['cross_tokenizer']}")
    log(
        f"student before distillation: validation perplexity {before['perplexity']:.1f}; training {steps} steps "
        f"x {per_step * settings.block_size} tokens ({len(blocks)} blocks"
        f"{f', {world} processes' if world > 1 else ''})"
    )
    trainer = DistillTrainer(
        student,
        terms=terms,
        teacher=None if cached else teacher,
        precision=precision,
        teacher_zero3=teacher_zero3(settings),
        args=training_args(settings, stage, steps),
        train_dataset=dataset,
        data_collator=collate_aligned if cross else None,
        callbacks=training_callbacks(settings, stop_after),
    )
    check_sharding(settings, trainer)
    trained = fit(
        trainer, stage, steps, resume=resume, stop_after=stop_after, tokens_per_step=per_step * settings.block_size
    )
    if trained is None:
        return stage
    after = None if trained.sharded else validation_perplexity(trained.model, val, settings.eval_window, precision)

    # ---- publish (rank 0 only: the other ranks wait and raise its error if it fails)
    def finish():
        metrics = after or validation_perplexity(trained.model, val, settings.eval_window, precision, shared=False)
        if held_out is not None and not trained.sharded:
            metrics["cross_tokenizer"] = held_out(trained.model)
            log(f"student after distillation: cross-tokenizer divergence {metrics['cross_tokenizer']}")
        log(
            f"student after distillation: validation perplexity {metrics['perplexity']:.1f} "
            f"(before {before['perplexity']:.1f})"
        )
        record = {
            "stage": "distill",
            "teacher": settings.teacher,
            "teacher_dir": str(teacher_dir),
            "settings": settings.to_dict(),
            "precision": precision.to_dict(),
            "cpu": precisions.cpu_kind(),
            "data": splits.info,
            "student": student_info,
            "layer_map": {"features": feature_map, "attention": attention_map},
            "cross_tokenizer": cross_info,
            "training": {
                "steps": trained.steps,
                "tokens": trained.steps * per_step * settings.block_size,
                "planned_steps": steps,
                "planned_tokens": len(blocks) * settings.block_size,
                "time_budget": trained.budget,
                "train_runtime_s": trained.runtime_s,
                "wall_time_s": time.time() - start_time,
                "teacher_cache": bool(cached),
                "teacher_cache_storage": cached.storage() if cached else None,
                "processes": world,
                "log": trained.log,
            },
            "metrics": {"validation_before": before, "validation_after": metrics},
        }
        card = model_card(f"Student distilled from {settings.teacher}", record)
        publish(stage, out, trained.model, student_tokenizer, record, card)

    distributed.on_main(finish)
    log(f"wrote {out}")
    return out


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

    terms = [OutputTerm(settings.temperature, settings.alpha, settings.kl, settings.chunk_size)]
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


def _teacher_cache(settings: DistillSettings, teacher, teacher_dir, blocks, feature_map, precision):
    """The cached teacher signal for these blocks (rank 0 computes it once, on its accelerator if any; the
    others read it), or None for the online teacher."""
    from slimlm.training.teacher_cache import CachedTeacher, teacher_cache

    if not settings.teacher_cache:
        return None
    if settings.cache_mode == "topk" and settings.temperature >= 5:
        log(
            f"warning: --cache-mode topk keeps the teacher's top-{settings.top_k} logits only; at temperature "
            f"{settings.temperature:g} matching that truncated distribution drove students' logits apart "
            "(perplexity 1e4-1e8 in docs/experiments.md); the default --cache-mode sample has no such bias"
        )
    if settings.cache_mode == "sample" and settings.cache_draws is None and settings.temperature >= 5:
        log(
            f"warning: at temperature {settings.temperature:g} the default draws a position (31 for a vocabulary "
            "up to 65,536) are noisy (variance about tau^2 / draws): at tau 10 they left students 12-14% behind "
            "the online teacher, 127 draws 3-4% (docs/results/cache-quality); pass --cache-draws 127 (256 bytes "
            "a position)"
        )
    # the teacher goes to the device only on a rank that has something to compute (teacher_cache moves it)
    device = torch.device("cuda", distributed.local_rank()) if torch.cuda.is_available() else None
    layers = [t for t, _ in feature_map]
    path = distributed.main_first(
        teacher_cache,
        teacher,
        teacher_dir,
        blocks,
        mode=settings.cache_mode,
        temperature=settings.temperature,
        draws=settings.cache_draws,
        top_k=settings.top_k,
        hidden_layers=layers + _cache_layers(settings.cache_layers, teacher.config.num_hidden_layers),
        precision=precision,
        device=device,
    )
    teacher.to("cpu")  # the run reads the cache; the teacher is not needed on the device
    return CachedTeacher(path, layers)


def _cache_layers(text: str, n_teacher: int) -> list[int]:
    """--cache-layers "2,8,15": teacher hidden-state indices (0 = embeddings .. n_teacher = last layer)."""
    layers = []
    for part in comma_list(text):
        if not part.isdigit() or not 0 <= int(part) <= n_teacher:
            raise SlimlmError(f"--cache-layers {text!r}: {part!r} is not a hidden-state index in 0..{n_teacher}")
        layers.append(int(part))
    return layers
