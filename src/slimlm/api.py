"""The Python API: one function per CLI command, same names, same settings, same errors.

    import slimlm
    slimlm.distill(teacher="smollm2-135m", layers=15, data="sotu", out="runs/student")
    slimlm.evaluate(["smollm2-135m", "runs/student"], data="sotu")

Each stage reads model directories and writes one (see output.py), so stages compose.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from slimlm import distributed
from slimlm import precision as precisions
from slimlm.config import DistillSettings, FinetuneSettings, load_recipe
from slimlm.data import prepare_data
from slimlm.errors import SlimlmError
from slimlm.output import claim_output, discard_if_unstarted, last_good_checkpoint, model_card, publish, \
    write_json_atomic
from slimlm.sources import check_same_tokenizer, load_model


_log = distributed.log  # under torchrun/accelerate only rank 0 reports


def fetch(teacher: str = "smollm2-135m", data: str = "sotu") -> dict:
    """Download and convert the built-in (or given) teacher and corpus into the cache; print where."""
    from slimlm.data import load_corpus
    from slimlm.sources import resolve_model

    model_dir = resolve_model(teacher)
    corpus = load_corpus(data)
    _log(f"teacher {teacher} -> {model_dir}; corpus {data}: {len(corpus.documents)} documents")
    return {"teacher": str(model_dir), "documents": len(corpus.documents)}


def calibration_blocks(train: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A fixed, seeded sample of training blocks for layer selection and feature statistics."""
    g = torch.Generator().manual_seed(10_000 + seed)
    return train[torch.randperm(len(train), generator=g)[: min(n, len(train))]]


def _student_from_teacher(teacher, splits, *, layers=None, keep_layers=None, student_config=None,
                          calibration=8, seed=0, precision=None) -> tuple:
    from tqdm.auto import tqdm

    from slimlm.student import build_student, calibration_perplexity, decoder_layers, parse_keep_layers, \
        select_layers

    n_teacher = len(decoder_layers(teacher))
    calib = calibration_blocks(splits.train, calibration, seed)
    info = {}
    if keep_layers is None:
        if not 1 <= layers <= n_teacher:
            raise SlimlmError(f"--layers {layers} is out of range; the teacher has {n_teacher} layers, keep 1..{n_teacher}")
        with precisions.autocast(precision, teacher.device.type):
            keep, table = select_layers(teacher, calib, layers, progress=tqdm)
        info["layer_selection"] = {"method": "drop the contiguous run of layers whose removal raises calibration "
                                             "perplexity least", "calibration_blocks": len(calib),
                                   "candidates": [{k: r[k] for k in ("dropped", "perplexity")} for r in table]}
        if table:
            _log(f"layer importance: dropping layers {table[0]['dropped'][0]}-{table[0]['dropped'][1]} costs least "
                 f"(calibration perplexity {table[0]['perplexity']:.1f}; worst candidate {table[-1]['perplexity']:.3g})")
    else:
        keep = parse_keep_layers(keep_layers, n_teacher)
    student = build_student(teacher, keep, student_config)
    with precisions.autocast(precision, teacher.device.type):
        info["calibration_perplexity"] = {"teacher": calibration_perplexity(teacher, calib),
                                          "student": calibration_perplexity(student, calib)}
    info["kept_layers"] = keep
    return student, info


def make_student(*, teacher: str, data: str, out: str, layers: int | None = None, keep_layers: str | None = None,
                 student_config: dict | None = None, block_size: int = 256, calibration_blocks: int = 8,
                 seed: int = 0, force: bool = False, evaluate_test: bool = True, precision: str = "auto",
                 trust_remote_code: bool = False) -> Path:
    """Stage `student`: build a student from the teacher and write it, with its starting perplexity.
    `precision` (auto|fp32|bf16) is what layer selection and the measurements compute in (precision.py)."""
    precisions.check(precision)
    if (layers is None) == (keep_layers is None):
        raise SlimlmError("give exactly one of --layers N or --keep-layers LIST")
    for name, value in (("--block-size", block_size), ("--calibration-blocks", calibration_blocks),
                        ("--layers", layers if layers is not None else 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SlimlmError(f"{name} must be a positive integer (got {value!r})")
    from slimlm.sources import model_config
    from slimlm.student import parse_keep_layers

    n_teacher = _layer_count(model_config(teacher, trust_remote_code=trust_remote_code))  # before any weights load
    if layers is not None and layers > n_teacher:
        raise SlimlmError(f"--layers {layers} is out of range; the teacher has {n_teacher} layers, keep 1..{n_teacher}")
    if keep_layers is not None:
        parse_keep_layers(keep_layers, n_teacher)
    out = Path(out)
    stage = claim_output(out, force=force)
    try:
        return _make_student(teacher, data, out, stage, layers, keep_layers, student_config, block_size,
                             calibration_blocks, seed, evaluate_test, precision, trust_remote_code)
    except BaseException:
        discard_if_unstarted(stage)
        raise


def _make_student(teacher, data, out, stage, layers, keep_layers, student_config, block_size, calibration_blocks,
                  seed, evaluate_test, precision, trust_remote_code) -> Path:
    start_time = time.time()
    precision = precisions.resolve(precision, "cpu", announce=_log)  # the student is built on the CPU
    teacher_model, tokenizer, teacher_dir = load_model(teacher, trust_remote_code=trust_remote_code)
    splits = prepare_data(data, tokenizer, block_size)
    _log(splits.summary())
    student, info = _student_from_teacher(teacher_model, splits, layers=layers, keep_layers=keep_layers,
                                          student_config=student_config, calibration=calibration_blocks, seed=seed,
                                          precision=precision)
    metrics = {}
    if evaluate_test:
        from slimlm.metrics import perplexity

        with precisions.autocast(precision):
            metrics = perplexity(student, splits.test, window=block_size, stride=block_size,
                                 text_bytes=splits.info["test"]["bytes"])
        _log(f"student starting test perplexity {metrics['perplexity']:.1f} "
             f"(accuracy {metrics['accuracy']:.3f}, {len(info['kept_layers'])} layers, "
             f"{sum(p.numel() for p in student.parameters()) / 1e6:.1f}M parameters)")
    record = {"stage": "student", "teacher": str(teacher), "teacher_dir": str(teacher_dir),
              "settings": {"layers": layers, "keep_layers": keep_layers, "student_config": student_config,
                           "block_size": block_size, "seed": seed},
              "precision": precision.to_dict(), "cpu": precisions.cpu_kind(),
              "wall_time_s": round(time.time() - start_time, 1),
              "data": splits.info, "student": info, "metrics": metrics}
    publish(stage, out, student, tokenizer, record, model_card(f"Student of {teacher}", record))
    _log(f"wrote {out}")
    return out


def distill(settings: DistillSettings | None = None, *, out: str, force: bool = False, resume: bool = False,
            recipe: str | None = None, stop_after: int | None = None, **overrides) -> Path:
    """Stage `distill`: train a student to match the teacher (paper section 2) and write it.

    `stop_after` ends training after that many steps (checkpoint kept, nothing published); tests use it
    to interrupt a run that `resume=True` then finishes.
    """
    return _training_stage(DistillSettings, _distill, settings, recipe, overrides, out, force, resume, stop_after)


def _training_stage(settings_type, body, settings, recipe, overrides, out, force, resume, stop_after):
    """Settings from recipe + flags, validated before anything is loaded; output claimed; cleanup on failure.

    Under torchrun/accelerate every rank runs this; rank 0 alone claims, cleans up and publishes."""
    values = load_recipe(recipe) if recipe else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = (settings or settings_type.from_dict(values)).validate()
    if settings_type is DistillSettings:
        _check_shapes(settings)  # from the models' config.json: before the output is claimed or weights load
    if resume and settings.deepspeed:
        raise SlimlmError("--resume with --deepspeed would load DeepSpeed's checkpoint files, which it reads with "
                          "pickle (torch.load weights_only=False); slimlm loads no pickles: use --fsdp for a "
                          "sharded run that can resume")
    out = Path(out)
    stage = Path(distributed.on_main(lambda: str(claim_output(out, force=force, resume=resume))))
    try:
        return body(settings, out, stage, resume, stop_after)
    except BaseException:
        if distributed.is_main_process():
            discard_if_unstarted(stage)  # keep checkpoints for --resume, drop an empty staging area
        raise


def _layer_count(config) -> int:
    return config.get_text_config().num_hidden_layers


def _check_shapes(settings: DistillSettings) -> None:
    """Settings that depend on the models' shapes (layers to keep, layer maps, cached top-k), checked from
    their config.json alone, so a wrong index is one line now rather than after the teacher has loaded."""
    from slimlm.kd.losses import parse_layer_map
    from slimlm.sources import model_config
    from slimlm.student import parse_keep_layers

    teacher = distributed.main_first(model_config, settings.teacher, trust_remote_code=settings.trust_remote_code)
    n_t = _layer_count(teacher)
    if settings.student is not None:
        student = distributed.main_first(model_config, settings.student,
                                         trust_remote_code=settings.trust_remote_code)
        n_s = _layer_count(student)
    elif settings.layers is not None:
        if not 1 <= settings.layers <= n_t:
            raise SlimlmError(f"--layers {settings.layers} is out of range; the teacher has {n_t} layers, "
                              f"keep 1..{n_t}")
        n_s = settings.layers
    else:
        n_s = len(parse_keep_layers(settings.keep_layers, n_t))
    for flag, spec, top_t, top_s in (("--feature-layers", settings.feature_layers, n_t, n_s),
                                     ("--attention-layers", settings.attention_layers, n_t - 1, n_s - 1)):
        try:
            parse_layer_map(spec, top_t, top_s)
        except SlimlmError as exc:
            raise SlimlmError(f"{flag}: {exc}") from None
    _cache_layers(settings.cache_layers, n_t)
    vocab = teacher.get_text_config().vocab_size
    if settings.teacher_cache and settings.top_k > vocab:
        raise SlimlmError(f"--top-k {settings.top_k} is more than the teacher's vocabulary ({vocab} tokens); "
                          f"give at most {vocab} (the default is {DistillSettings.top_k})")


def _load(spec, trust_remote_code):
    """load_model on every rank; rank 0 first, so a hub download or GGUF conversion fills the cache once."""
    return distributed.main_first(load_model, spec, trust_remote_code=trust_remote_code)


def _data(spec, tokenizer, block_size):
    return distributed.main_first(prepare_data, spec, tokenizer, block_size)


def _validation(model, tokens: torch.Tensor, window: int, precision, *, shared: bool = True) -> dict:
    """Validation perplexity, windows of `window` tokens at stride `window`. Under torchrun/accelerate
    (`shared`) each rank scores a contiguous share of the windows and the sums are gathered: the same
    windows, so the same numbers as one process (to float rounding), in 1/N of the time."""
    from slimlm.metrics import perplexity

    def score(ids):
        with precisions.autocast(precision, next(model.parameters()).device.type):
            return perplexity(model, ids, window=window, stride=window, progress=False)

    world = distributed.world_size()
    if not shared or world == 1:
        return score(tokens)
    n_windows = math.ceil(len(tokens) / window)
    rank = distributed.rank()
    lo, hi = n_windows * rank // world * window, min(n_windows * (rank + 1) // world * window, len(tokens))
    mine = score(tokens[lo:hi]) if hi - lo >= 2 else {"nll": 0.0, "accuracy": 0.0, "tokens_scored": 0}
    nll, correct, scored = distributed.all_sum([mine["nll"] * mine["tokens_scored"],
                                                mine["accuracy"] * mine["tokens_scored"], mine["tokens_scored"]])
    return {"perplexity": math.exp(nll / scored), "nll": nll / scored, "tokens_scored": int(scored),
            "accuracy": correct / scored, "bits_per_byte": None, "window": window, "stride": window}


def _trained_model(trainer):
    """The trained model as a plain module where rank 0 can evaluate and save it. Every rank calls this:
    under FSDP or DeepSpeed the full weights are gathered (a collective) and loaded into a fresh copy on
    rank 0 (other ranks get None); under DDP every rank already holds the whole model."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return model
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not distributed.is_main_process():
        return None
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(model.config)
    missing, unexpected = plain.load_state_dict({k: v.cpu() for k, v in state.items()
                                                 if not k.startswith("slimlm_projections.")}, strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:  # lm_head may be tied to the embeddings
        raise SlimlmError(f"gathering the sharded model lost weights ({(missing + unexpected)[:3]}); "
                          "report this with the launch command")
    plain.tie_weights()
    return plain.float()


def _distill(settings: DistillSettings, out: Path, stage: Path, resume: bool, stop_after: int | None) -> Path:
    from slimlm.kd.losses import make_projection, parse_layer_map

    start_time = time.time()
    torch.manual_seed(settings.seed)
    precision = precisions.resolve(settings.precision, announce=_log)
    teacher, tokenizer, teacher_dir = _load(settings.teacher, settings.trust_remote_code)
    splits = _data(settings.data, tokenizer, settings.block_size)
    _log(splits.summary())
    student_info = {}
    if settings.student is not None:
        student, student_tok, student_dir = _load(settings.student, settings.trust_remote_code)
        check_same_tokenizer(tokenizer, student_tok)
        student_info["from"] = str(student_dir)
    else:
        made = {}

        def build(layers, keep_layers):
            made["student"], made["info"] = _student_from_teacher(
                teacher, splits, layers=layers, keep_layers=keep_layers, student_config=settings.student_config,
                calibration=settings.calibration_blocks, seed=settings.seed, precision=precision)
            return made["info"]["kept_layers"]

        # rank 0 measures which layers to keep; the others build the same student from its answer
        kept = distributed.on_main(build, settings.layers, settings.keep_layers)
        if not made:
            build(None, ",".join(map(str, kept)))
        student, student_info = made["student"], made["info"]
        torch.manual_seed(settings.seed)  # every rank goes on from the same RNG state
    n_t, n_s = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    feature_map = parse_layer_map(settings.feature_layers, n_t, n_s)
    attention_map = parse_layer_map(settings.attention_layers, n_t - 1, n_s - 1)
    if feature_map and settings.feature_weight > 0 and teacher.config.hidden_size != student.config.hidden_size:
        student.slimlm_projections = torch.nn.ModuleList(
            [make_projection(student.config.hidden_size, teacher.config.hidden_size) for _ in feature_map])
    if attention_map:
        for model in (teacher, student):
            model.set_attn_implementation("eager")  # attention maps need the eager kernel

    world = distributed.world_size()
    steps = settings.steps(world)
    per_step = settings.batch_size * settings.grad_accum * world  # the global batch, over all ranks
    blocks = _training_blocks(splits.train, steps * per_step, settings.seed)
    from slimlm.kd.teacher_cache import CachedTeacher, teacher_cache
    from slimlm.kd.trainer import BlockDataset, DistillTrainer, restore_time_budget, teacher_feature_std

    calib = calibration_blocks(splits.train, settings.calibration_blocks, settings.seed)
    teacher_std = teacher_feature_std(teacher, calib, [t for t, _ in feature_map], precision)
    cached = None
    if settings.teacher_cache and settings.temperature >= 5:
        _log(f"warning: --teacher-cache keeps the teacher's top-{settings.top_k} logits only; at temperature "
             f"{settings.temperature:g} matching that truncated distribution drove students' logits apart "
             "(perplexity 1e4-1e8 in docs/experiments.md); prefer the online teacher for temperatures >= 5")
    if settings.teacher_cache:  # rank 0 computes the cache once, on its accelerator if any; the others read it
        # the teacher goes to the device only on a rank that has something to compute (teacher_cache moves it)
        device = torch.device("cuda", distributed.local_rank()) if torch.cuda.is_available() else None
        path = distributed.main_first(
            teacher_cache, teacher, teacher_dir, blocks, top_k=settings.top_k,
            hidden_layers=[t for t, _ in feature_map] + _cache_layers(settings.cache_layers, n_t), precision=precision,
            device=device)
        teacher.to("cpu")  # the run reads the cache; the teacher is not needed on the device
        cached = CachedTeacher(path, [t for t, _ in feature_map])
    val = splits.val[: settings.eval_tokens]
    before = _validation(student, val, settings.eval_window, precision)
    _log(f"student before distillation: validation perplexity {before['perplexity']:.1f}; training {steps} steps "
         f"x {per_step * settings.block_size} tokens ({len(blocks)} blocks"
         f"{f', {world} processes' if world > 1 else ''})")

    trainer = DistillTrainer(
        model=student, args=_training_args(settings, stage, steps), train_dataset=BlockDataset(blocks, cached),
        teacher=None if cached else teacher, temperature=settings.temperature, alpha=settings.alpha, kl=settings.kl,
        chunk_size=settings.chunk_size, feature_map=feature_map, feature_weight=settings.feature_weight,
        teacher_std=teacher_std, attention_map=attention_map, attention_weight=settings.attention_weight,
        precision=precision, teacher_zero3=_teacher_zero3(settings), callbacks=_callbacks(settings, stop_after))
    _check_sharding(settings, trainer)
    checkpoint = _last_checkpoint(stage / "checkpoints") if resume else None
    if resume and checkpoint is None:
        _log(f"no checkpoint in {stage}; starting from the beginning")
    restore_time_budget(trainer, checkpoint)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop_after and trainer.state.global_step < steps and not _budget_stopped(trainer):
        _log(f"stopped after step {trainer.state.global_step}; checkpoints in {stage}, finish with --resume")
        return stage
    student = _trained_model(trainer)  # every rank: gathers the weights when they are sharded
    sharded = student is None or student is not trainer.accelerator.unwrap_model(trainer.model)
    if student is not None:
        if hasattr(student, "slimlm_projections"):
            del student.slimlm_projections  # training-only; the published model is a plain HF model
        student.eval()
    after = None if sharded else _validation(student, val, settings.eval_window, precision)

    def finish():  # rank 0 only: the other ranks wait and raise its error if it fails
        metrics = after or _validation(student, val, settings.eval_window, precision, shared=False)
        _log(f"student after distillation: validation perplexity {metrics['perplexity']:.1f} "
             f"(before {before['perplexity']:.1f})")
        history = [h for h in trainer.state.log_history if "loss" in h]
        record = {"stage": "distill", "teacher": settings.teacher, "teacher_dir": str(teacher_dir),
                  "settings": settings.to_dict(), "precision": precision.to_dict(), "cpu": precisions.cpu_kind(),
                  "data": splits.info, "student": student_info,
                  "layer_map": {"features": feature_map, "attention": attention_map},
                  "training": {"steps": trainer.state.global_step,
                               "tokens": trainer.state.global_step * per_step * settings.block_size,
                               "planned_steps": steps, "planned_tokens": len(blocks) * settings.block_size,
                               "time_budget": _budget_record(trainer, per_step * settings.block_size),
                               "train_runtime_s": result.metrics.get("train_runtime"),
                               "wall_time_s": time.time() - start_time, "teacher_cache": bool(cached),
                               "processes": world, "log": history},
                  "metrics": {"validation_before": before, "validation_after": metrics}}
        publish(stage, out, student, tokenizer, record, model_card(f"Student distilled from {settings.teacher}", record))

    distributed.on_main(finish)
    _log(f"wrote {out}")
    return out


def _callbacks(settings, stop_after: int | None) -> list | None:
    """Trainer callbacks: `--max-time` (kd/trainer.py TimeBudget) and the tests' interruption point."""
    from slimlm.kd.trainer import StopAfterSteps, TimeBudget

    callbacks = [StopAfterSteps(stop_after)] if stop_after else []
    budget = settings.time_budget_s()
    if budget is not None:
        callbacks.append(TimeBudget(budget))
    return callbacks or None


def _budget_stopped(trainer) -> bool:
    from slimlm.kd.trainer import time_budget

    budget = time_budget(trainer)
    return bool(budget and budget.stopped)


def _budget_record(trainer, tokens_per_step: int) -> dict | None:
    """What `--max-time` did (None without one); logs the tokens actually trained when it stopped the run."""
    from slimlm.kd.trainer import time_budget

    budget = time_budget(trainer)
    if budget is None:
        return None
    record = budget.record(trainer.state, tokens_per_step)
    if record["stopped_by_time_budget"]:
        _log(f"--max-time: stopped after {record['trained_steps']} of {record['planned_steps']} planned steps "
             f"({record['trained_tokens']:,} tokens trained)")
    return record


def _cache_layers(text: str, n_teacher: int) -> list[int]:
    """--cache-layers "2,8,15": teacher hidden-state indices (0 = embeddings .. n_teacher = last layer)."""
    layers = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not part.isdigit() or not 0 <= int(part) <= n_teacher:
            raise SlimlmError(f"--cache-layers {text!r}: {part!r} is not a hidden-state index in 0..{n_teacher}")
        layers.append(int(part))
    return layers


def _training_blocks(train: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The first n blocks of a seeded permutation (repeated as epochs when the budget exceeds the corpus)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(train), generator=g) for _ in range(math.ceil(n / len(train)))])
    return train[order[:n]]


def _training_args(settings, stage: Path, steps: int):
    """TrainingArguments for the stage. Multi-process runs need nothing extra: under torchrun/accelerate the
    Trainer runs DDP (gloo on CPU, NCCL on CUDA); `fsdp`/`deepspeed` settings pass through. The blocks are
    already in a seeded order (`_training_blocks`), so the sampler is sequential: N ranks with batch b see
    exactly the global batches that one process with batch N*b sees (accelerate deals batch i to rank i % N)."""
    from transformers import TrainingArguments

    parallel = {}
    if settings.fsdp:
        parallel = {"fsdp": settings.fsdp, "fsdp_config": settings.fsdp_config}
    elif settings.deepspeed:
        parallel = {"deepspeed": _deepspeed_configs(settings.deepspeed)[0]}
    try:
        return TrainingArguments(
            output_dir=str(stage / "checkpoints"), max_steps=steps, per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.grad_accum, learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay, warmup_steps=int(settings.warmup_ratio * steps),
            lr_scheduler_type="cosine", optim=settings.optim, max_grad_norm=settings.max_grad_norm, logging_steps=settings.logging_steps, save_steps=settings.save_steps,
            save_total_limit=2, save_strategy="steps", seed=settings.seed, data_seed=settings.seed,
            report_to=[], remove_unused_columns=False, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
            disable_tqdm=not distributed.is_main_process(), average_tokens_across_devices=True,
            train_sampling_strategy="sequential", ddp_find_unused_parameters=False, **parallel)
    except ImportError as exc:
        raise SlimlmError(f"{_first_line(exc)}; install what it names (e.g. pip install deepspeed) or drop "
                          "--deepspeed/--fsdp") from None


def _check_sharding(settings, trainer) -> None:
    if settings.fsdp and not trainer.is_fsdp_enabled:
        _log("--fsdp is ignored: accelerate runs FSDP only on accelerators, launched by torchrun or accelerate "
             "launch; this run is plain data parallel (DDP) or a single process")


def _teacher_zero3(settings) -> dict | None:
    zero3 = _deepspeed_configs(settings.deepspeed)[1] if settings.deepspeed else None
    if zero3 is not None:
        _log("DeepSpeed ZeRO-3: the teacher is partitioned over the processes; the student trains under ZeRO-2 "
             "(docs/multi-gpu.md)")
    return zero3


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


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
    student = {**config, "zero_optimization": {k: v for k, v in zero.items()
                                               if not k.startswith("stage3") and k not in ("offload_param",)}}
    student["zero_optimization"]["stage"] = 2
    return student, zero


def _last_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose completion record verifies (rank 0 looks; every rank gets the answer).
    A truncated or half-written newer one is logged, moved aside as `damaged-N`, and the one before is used."""
    found = distributed.on_main(lambda: str(last_good_checkpoint(folder, log=_log) or ""))
    if found:
        _log(f"resuming from {Path(found).name}")
    return Path(found) if found else None


def finetune(settings: FinetuneSettings | None = None, *, out: str, force: bool = False, resume: bool = False,
             recipe: str | None = None, stop_after: int | None = None, **overrides) -> Path:
    """Stage `finetune`: LoRA or full fine-tuning (paper section 2, Figure 3), with the teacher in the loss
    when one is given, on plain text or instruction JSONL; writes the merged model and what it cost.
    `stop_after` works as in `distill` (tests interrupt a run with it and finish it with `resume=True`)."""
    return _training_stage(FinetuneSettings, _finetune, settings, recipe, overrides, out, force, resume, stop_after)


def _finetune(settings: FinetuneSettings, out: Path, stage: Path, resume: bool, stop_after: int | None) -> Path:
    from slimlm.metrics import peak_memory, perplexity
    from slimlm.tuning import (MergedWithAdapter, add_lora, optimizer_state_bytes, target_modules,
                                 trainable_parameters)
    from slimlm.instruct import is_instruction_data, prepare_instructions, response_perplexity
    from slimlm.kd.trainer import BlockDataset, DistillTrainer, restore_time_budget

    start_time = time.time()
    torch.manual_seed(settings.seed)
    precision = precisions.resolve(settings.precision, announce=_log)
    model, tokenizer, model_dir = _load(settings.model, settings.trust_remote_code)
    targets = target_modules(model, settings.target_modules) if settings.method == "lora" else None
    instruct = is_instruction_data(settings.data)
    if instruct:
        splits = prepare_instructions(settings.data, tokenizer, settings.block_size)
    else:
        splits = _data(settings.data, tokenizer, settings.block_size)
    _log(splits.summary())
    teacher = teacher_dir = None
    if settings.teacher is not None:
        teacher, teacher_tok, teacher_dir = _load(settings.teacher, settings.trust_remote_code)
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
        train = BlockDataset(_training_blocks(splits.train, steps * per_step, settings.seed))
        train_tokens = len(train) * settings.block_size

    def validation(m, shared=True):  # plain text: shared out over the ranks (see _validation)
        if instruct:
            with precisions.autocast(precision, next(m.parameters()).device.type):
                return response_perplexity(m, splits.val, max_tokens=settings.eval_tokens)
        return _validation(m, splits.val[: settings.eval_tokens], settings.eval_window, precision, shared=shared)

    before = validation(model)
    if settings.method == "lora":
        model = add_lora(model, rank=settings.rank, lora_alpha=settings.lora_alpha, dropout=settings.dropout,
                         targets=targets, seed=settings.seed)
    params = trainable_parameters(model)
    _log(f"{settings.method} fine-tuning: {params['trainable']:,} trainable parameters "
         f"({params['percent']:.2f}% of {params['total']:,}); validation perplexity {before['perplexity']:.2f}; "
         f"{steps} steps, {'distillation loss against ' + settings.teacher if teacher else 'cross-entropy'}")
    trainer = DistillTrainer(
        model=model, args=_training_args(settings, stage, steps), train_dataset=train, teacher=teacher,
        temperature=settings.temperature, alpha=settings.alpha if teacher is not None else 1.0, kl=settings.kl,
        chunk_size=settings.chunk_size, precision=precision, teacher_zero3=_teacher_zero3(settings),
        callbacks=_callbacks(settings, stop_after))
    _check_sharding(settings, trainer)
    checkpoint = _last_checkpoint(stage / "checkpoints") if resume else None
    if resume and checkpoint is None:
        _log(f"no checkpoint in {stage}; starting from the beginning")
    restore_time_budget(trainer, checkpoint)
    result = {}
    memory = peak_memory(model, lambda: result.update(
        run=trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)))
    if stop_after and trainer.state.global_step < steps and not _budget_stopped(trainer):
        _log(f"stopped after step {trainer.state.global_step}; checkpoints in {stage}, finish with --resume")
        return stage
    trained = _trained_model(trainer)  # every rank: gathers the weights when they are sharded

    planned_tokens = train_tokens
    if trainer.state.global_step < steps:  # --max-time stopped it: count what was trained
        seen = trainer.state.global_step * per_step
        train_tokens = type(train)(train.examples[:seen]).tokens() if instruct else seen * settings.block_size
    budget = _budget_record(trainer, per_step * settings.block_size)
    if budget is not None:
        budget["trained_tokens"] = train_tokens

    def finish():  # rank 0 only (it measures, merges and publishes); the other ranks wait for it
        nonlocal model
        runtime = result["run"].metrics.get("train_runtime") or (time.time() - start_time)
        cost = {"trainable_parameters": params["trainable"], "total_parameters": params["total"],
                "trainable_percent": params["percent"], "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
                "peak_memory_mib": memory["peak_memory_mib"],
                "peak_memory_over_baseline_mib": memory["peak_memory_over_baseline_mib"],
                "memory_method": memory["memory_method"], "train_tokens": train_tokens,
                "train_tokens_per_s": train_tokens / runtime if runtime else None}
        model = trained
        model.eval()
        published = model
        if settings.method == "lora":
            model.save_pretrained(stage / "adapter", safe_serialization=True)
            model = model.merge_and_unload()
            published = MergedWithAdapter(model, stage / "adapter")
        after = validation(model, shared=False)
        _log(f"after {settings.method} fine-tuning: validation perplexity {after['perplexity']:.2f} "
             f"(before {before['perplexity']:.2f}), next-token accuracy {after['accuracy']:.3f} "
             f"(before {before['accuracy']:.3f}); {cost['train_tokens_per_s']:.0f} training tokens/s, "
             f"peak memory {cost['peak_memory_mib']:.0f} MiB, optimizer state {cost['optimizer_state_bytes'] / 2**20:.1f} MiB")
        history = [h for h in trainer.state.log_history if "loss" in h]
        record = {"stage": "finetune", "model": settings.model, "model_dir": str(model_dir),
                  "teacher": settings.teacher, "teacher_dir": str(teacher_dir) if teacher_dir else None,
                  "settings": settings.to_dict(), "precision": precision.to_dict(), "cpu": precisions.cpu_kind(),
                  "data": splits.info,
                  "method": {"name": settings.method, "rank": settings.rank if targets else None,
                             "lora_alpha": settings.lora_alpha if targets else None, "target_modules": targets,
                             "loss": "distillation" if teacher is not None else "cross-entropy",
                             "adapter": "adapter/ (peft format; PeftModel.from_pretrained(base, 'OUT/adapter'))"
                             if targets else None},
                  "training": {"steps": trainer.state.global_step, "tokens": train_tokens, "train_runtime_s": runtime,
                               "planned_steps": steps, "planned_tokens": planned_tokens, "time_budget": budget,
                               "wall_time_s": time.time() - start_time, "processes": world,
                               "log": history},
                  "cost": cost, "metrics": {"validation_before": before, "validation_after": after}}
        title = f"{settings.model} after {'LoRA' if targets else 'full'} fine-tuning"
        publish(stage, out, published, tokenizer, record, model_card(title, record))

    distributed.on_main(finish)
    _log(f"wrote {out}")
    return out


def evaluate(models: list[str], *, data: str = "sotu", out: str | None = None, force: bool = False,
             window: int = 256, stride: int | None = None, new_tokens: int = 64, repeats: int = 3,
             precision: str = "fp32", bf16: bool | None = None, tasks: str | list[str] = (),
             task_items: int | None = None, lm_eval: str = "", trust_remote_code: bool = False) -> dict:
    """Stage `eval`: the same metrics for every model on the same test split, side by side; with `tasks`,
    the offline downstream checks too (slimlm.downstream), and with `lm_eval`, lm-evaluation-harness tasks.

    `precision` defaults to fp32 here, unlike the training stages: a measurement protocol that does not
    change with the machine keeps numbers comparable across machines. `bf16` (or `auto` where the CPU runs
    bf16 natively) evaluates the weights cast to bf16, the way such a model would be deployed;
    `bf16=True` is the old spelling of precision="bf16"."""
    if bf16 is not None:
        precision = "bf16" if bf16 else "fp32"
    precisions.check(precision)
    from slimlm.downstream import TASKS, lm_eval_tasks, run_tasks
    from slimlm.metrics import evaluate_model, format_table

    tasks = [t.strip() for t in tasks.split(",") if t.strip()] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SlimlmError(f"unknown task(s) {', '.join(unknown)}; offline tasks are {', '.join(TASKS)}")
    harness = [t.strip() for t in lm_eval.split(",") if t.strip()]
    if harness:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:  # before hours of measuring, not after
            raise SlimlmError("--lm-eval needs lm-evaluation-harness: pip install 'lm-eval[hf]' (and a network "
                              "for the task data)")
    if not models:
        raise SlimlmError("give at least one model to evaluate")
    if window < 2 or (stride is not None and not 1 <= stride <= window):
        raise SlimlmError(f"--window must be >= 2 and --stride in [1, window] (got window {window}, stride {stride})")
    for name, value in (("--repeats", repeats), ("--new-tokens", new_tokens), ("--task-items", task_items)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SlimlmError(f"{name} must be a positive integer (got {value!r})")
    if out and Path(out).exists() and not force:
        raise SlimlmError(f"{out} already exists; pass --force to replace it or choose another --out")
    decision = precisions.resolve(precision, announce=_log)
    results, data_info, tokenizer0 = {}, None, None
    for spec in models:
        model, tokenizer, model_dir = load_model(spec, trust_remote_code=trust_remote_code)
        if tokenizer0 is None:
            tokenizer0 = tokenizer
            splits = prepare_data(data, tokenizer, window)
            data_info = splits.info
            _log(splits.summary())
        else:
            check_same_tokenizer(tokenizer0, tokenizer)
        if decision.bf16:
            model = model.to(torch.bfloat16)
        _log(f"evaluating {spec}")
        results[str(spec)] = evaluate_model(model, tokenizer, splits.test, model_dir=model_dir,
                                            text_bytes=data_info["test"]["bytes"], window=window,
                                            stride=stride or window, new_tokens=new_tokens, repeats=repeats)
        if tasks:
            results[str(spec)].update(run_tasks(model, tokenizer, tasks, data=data, n=task_items))
        if harness:
            results[str(spec)]["lm_eval"] = lm_eval_tasks(model_dir, harness)
        del model
    table = format_table(results)
    report = {"data": data_info, "protocol": {"split": "test", "window": window, "stride": stride or window,
                                              "decode_new_tokens": new_tokens, "repeats": repeats,
                                              "dtype": "bfloat16" if decision.bf16 else "float32",
                                              "precision": decision.to_dict(), "cpu": precisions.cpu_kind(),
                                              "threads": torch.get_num_threads(), "tasks": tasks,
                                              "lm_eval": harness},
              "results": results, "table": table}
    print(table)
    for spec, result in results.items():  # lm-evaluation-harness metrics vary by task: one line per metric
        for metric, value in (result.get("lm_eval") or {}).items():
            if isinstance(value, (int, float)):
                print(f"lm-eval {spec}: {metric} = {value:.4f}")
    if out:
        write_json_atomic(Path(out), report, force=force)
        _log(f"wrote {out}")
    return report
