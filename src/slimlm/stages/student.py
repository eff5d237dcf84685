"""Stage `student`: build a student from the teacher's layers (paper section 2) and write it."""

from __future__ import annotations

import time
from pathlib import Path

from slimlm import precision as precisions
from slimlm.data.corpus import prepare_data
from slimlm.disk import require_space
from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.methods.budget import check_reachable, config_for, parameter_count
from slimlm.methods.layers import parse_keep_layers
from slimlm.methods.student import student_from_teacher
from slimlm.methods.width import check_widths
from slimlm.output import claimed, model_card, publish
from slimlm.settings import StudentSettings
from slimlm.sources import layer_count, load_model, model_config


def make_student(*, out: str, force: bool = False, **settings) -> Path:
    """Stage `student`: build a student from the teacher and write it, with its starting perplexity.

    `settings` are StudentSettings' fields (slimlm.settings: teacher, data, layers or keep_layers,
    target_params and axes, student_config, block_size, calibration_blocks, seed, precision, ...), with their
    defaults there;
    `precision` (auto|fp32|bf16) is what layer selection and the measurements compute in (precision.py)."""
    s = StudentSettings.from_dict({**settings, "out": out, "force": force}).validate()
    config = model_config(s.teacher, trust_remote_code=s.trust_remote_code)  # checked before any weights load
    n_teacher = layer_count(config)
    if s.student_config:
        check_widths(config, s.student_config)
    if s.layers is not None and s.layers > n_teacher:
        raise SlimlmError(
            f"--layers {s.layers} is out of range; the teacher has {n_teacher} layers, keep 1..{n_teacher}"
        )
    if s.keep_layers is not None:
        parse_keep_layers(s.keep_layers, n_teacher)
    if s.target_params is not None:
        check_reachable(config, s.target_params, s.axes)
    require_space(s.out, 4 * _student_params(config, s, n_teacher), "the student (fp32 weights)")
    with claimed(Path(s.out), force=s.force) as stage:
        return _make_student(s, Path(s.out), stage)


def _student_params(config, s: StudentSettings, n_teacher: int) -> int:
    """The student's parameter count, from the teacher's config alone (a bound where widths are changed)."""
    if s.target_params is not None:
        return round(s.target_params * parameter_count(config))
    if s.layers is not None or s.keep_layers is not None:
        layers = s.layers if s.layers is not None else len(parse_keep_layers(s.keep_layers, n_teacher))
        return parameter_count(config_for(config, {"layers": layers}))
    return parameter_count(config)


def _heal(teacher, student, splits, s: StudentSettings, precision) -> dict:
    """--heal-tokens: blockwise local distillation around the depth cut (methods/healing.py), logged."""
    from tqdm.auto import tqdm

    from slimlm.eval.metrics import perplexity
    from slimlm.methods.healing import heal_cuts

    if student.config.hidden_size != teacher.config.hidden_size:
        log("--heal-tokens: skipped, the student is narrower than the teacher (healing matches hidden states)")
        return {"skipped": "the student's hidden size differs from the teacher's"}
    val = splits.val[: 16 * s.block_size]
    with precisions.autocast(precision):
        before = perplexity(student, val, window=s.block_size, stride=s.block_size)["perplexity"]
    record = heal_cuts(
        teacher,
        student,
        splits.train,
        tokens=s.heal_tokens,
        learning_rate=s.heal_learning_rate,
        precision=precision,
        seed=s.seed,
        progress=tqdm,
    )
    student.eval()
    with precisions.autocast(precision):
        after = perplexity(student, val, window=s.block_size, stride=s.block_size)["perplexity"]
    record["validation_perplexity"] = {"before": before, "after": after, "tokens": int(val.numel())}
    log(
        f"healed the cut(s) {record['cuts']} in {record['steps']} steps ({record['seconds']:.0f} s): feature loss "
        f"{record.get('loss_first', 0):.3f} -> {record.get('loss_last', 0):.3f}, validation perplexity "
        f"{before:.1f} -> {after:.1f}"
    )
    return record


def _make_student(s: StudentSettings, out: Path, stage: Path) -> Path:
    start_time = time.time()
    precision = precisions.resolve(s.precision, "cpu", announce=log)  # the student is built on the CPU
    teacher_model, tokenizer, teacher_dir = load_model(s.teacher, trust_remote_code=s.trust_remote_code)
    splits = prepare_data(s.data, tokenizer, s.block_size)
    log(splits.summary())
    student, info = student_from_teacher(
        teacher_model,
        splits,
        layers=s.layers,
        keep_layers=s.keep_layers,
        student_config=s.student_config,
        target_params=s.target_params,
        axes=s.axes,
        calibration=s.calibration_blocks,
        seed=s.seed,
        precision=precision,
    )
    if s.heal_tokens:
        info["healing"] = _heal(teacher_model, student, splits, s, precision)
    metrics = {}
    if s.evaluate_test:
        from slimlm.eval.metrics import perplexity

        with precisions.autocast(precision):
            metrics = perplexity(
                student, splits.test, window=s.block_size, stride=s.block_size, text_bytes=splits.info["test"]["bytes"]
            )
        log(
            f"student starting test perplexity {metrics['perplexity']:.1f} "
            f"(accuracy {metrics['accuracy']:.3f}, {len(info['kept_layers'])} layers, "
            f"{sum(p.numel() for p in student.parameters()) / 1e6:.1f}M parameters)"
        )
    record = {
        "stage": "student",
        "teacher": str(s.teacher),
        "teacher_dir": str(teacher_dir),
        "settings": {
            "layers": s.layers,
            "keep_layers": s.keep_layers,
            "student_config": s.student_config,
            "target_params": s.target_params,
            "axes": s.axes if s.target_params is not None else None,
            "block_size": s.block_size,
            "heal_tokens": s.heal_tokens,
            "heal_learning_rate": s.heal_learning_rate if s.heal_tokens else None,
            "seed": s.seed,
        },
        "precision": precision.to_dict(),
        "cpu": precisions.cpu_kind(),
        "wall_time_s": round(time.time() - start_time, 1),
        "data": splits.info,
        "student": info,
        "metrics": metrics,
    }
    publish(stage, out, student, tokenizer, record, model_card(f"Student of {s.teacher}", record))
    log(f"wrote {out}")
    return out
