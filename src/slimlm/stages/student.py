"""Stage `student`: build a student from the teacher's layers (paper section 2) and write it.
"""

from __future__ import annotations

import time
from pathlib import Path

from slimlm import precision as precisions
from slimlm.data.corpus import prepare_data
from slimlm.errors import SlimlmError
from slimlm.methods.layers import student_from_teacher
from slimlm.output import claimed, model_card, publish
from slimlm.sources import layer_count, load_model
from slimlm.training.distributed import log


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
    from slimlm.methods.layers import parse_keep_layers

    n_teacher = layer_count(model_config(teacher, trust_remote_code=trust_remote_code))  # before any weights load
    if layers is not None and layers > n_teacher:
        raise SlimlmError(f"--layers {layers} is out of range; the teacher has {n_teacher} layers, keep 1..{n_teacher}")
    if keep_layers is not None:
        parse_keep_layers(keep_layers, n_teacher)
    out = Path(out)
    with claimed(out, force=force) as stage:
        return _make_student(teacher, data, out, stage, layers, keep_layers, student_config, block_size,
                             calibration_blocks, seed, evaluate_test, precision, trust_remote_code)


def _make_student(teacher, data, out, stage, layers, keep_layers, student_config, block_size, calibration_blocks,
                  seed, evaluate_test, precision, trust_remote_code) -> Path:
    start_time = time.time()
    precision = precisions.resolve(precision, "cpu", announce=log)  # the student is built on the CPU
    teacher_model, tokenizer, teacher_dir = load_model(teacher, trust_remote_code=trust_remote_code)
    splits = prepare_data(data, tokenizer, block_size)
    log(splits.summary())
    student, info = student_from_teacher(teacher_model, splits, layers=layers, keep_layers=keep_layers,
                                          student_config=student_config, calibration=calibration_blocks, seed=seed,
                                          precision=precision)
    metrics = {}
    if evaluate_test:
        from slimlm.eval.metrics import perplexity

        with precisions.autocast(precision):
            metrics = perplexity(student, splits.test, window=block_size, stride=block_size,
                                 text_bytes=splits.info["test"]["bytes"])
        log(f"student starting test perplexity {metrics['perplexity']:.1f} "
             f"(accuracy {metrics['accuracy']:.3f}, {len(info['kept_layers'])} layers, "
             f"{sum(p.numel() for p in student.parameters()) / 1e6:.1f}M parameters)")
    record = {"stage": "student", "teacher": str(teacher), "teacher_dir": str(teacher_dir),
              "settings": {"layers": layers, "keep_layers": keep_layers, "student_config": student_config,
                           "block_size": block_size, "seed": seed},
              "precision": precision.to_dict(), "cpu": precisions.cpu_kind(),
              "wall_time_s": round(time.time() - start_time, 1),
              "data": splits.info, "student": info, "metrics": metrics}
    publish(stage, out, student, tokenizer, record, model_card(f"Student of {teacher}", record))
    log(f"wrote {out}")
    return out
