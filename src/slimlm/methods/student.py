"""The student of `slimlm student` (and of `distill --layers`): the teacher cut in depth, in width, or both.

Three ways in, one way out: `--layers N` / `--keep-layers LIST` cut depth (methods/layers.py), a
`--student-config` of widths then cuts width by activation importance (methods/width.py), and
`--target-params F --axes depth|width|both` tries the shapes at that budget (methods/budget.py) and keeps
the one whose logits stay closest to the teacher's right after pruning: the mean per-token
KL(p_teacher || p_student) at τ = 1 on the calibration blocks, the proxy Minitron used to compare depth and
width before retraining (arXiv 2408.11796: 5.07 for MLP + attention width vs 8.35 for depth). It is a
proxy: which shape is best after distillation is what `slimlm experiment student-shape` measures.
"""

from __future__ import annotations

import torch

from slimlm import precision as precisions
from slimlm.data.corpus import calibration_sample
from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.methods.budget import candidate_shapes, shape_of
from slimlm.methods.importance import activation_importance, for_layers
from slimlm.methods.layers import (
    build_student,
    calibration_perplexity,
    decoder_layers,
    parse_keep_layers,
    select_layers,
)
from slimlm.methods.width import prune_width

PROXY = "mean per-token KL(teacher || student) at tau 1 on the calibration blocks, right after pruning"


def student_from_teacher(
    teacher,
    splits,
    *,
    layers=None,
    keep_layers=None,
    student_config=None,
    target_params=None,
    axes="both",
    calibration=8,
    seed=0,
    precision=None,
) -> tuple:
    """(student, info): the kept layers (measured unless given), narrowed by importance to `student_config`,
    or the shape at `target_params` along `axes` that the KL proxy prefers; info is what slimlm.json records."""
    from tqdm.auto import tqdm

    n_teacher = len(decoder_layers(teacher))
    calib = calibration_sample(splits.train, calibration, seed)
    info = {}
    with precisions.autocast(precision, teacher.device.type):
        if target_params is not None:
            student, info = _search(teacher, calib, target_params, axes, tqdm)
        else:
            if keep_layers is None:
                if not 1 <= layers <= n_teacher:
                    raise SlimlmError(
                        f"--layers {layers} is out of range; the teacher has {n_teacher} layers, keep 1..{n_teacher}"
                    )
                keep, table = select_layers(teacher, calib, layers, progress=tqdm)
                info["layer_selection"] = _selection_record(table, len(calib))
            else:
                keep = parse_keep_layers(keep_layers, n_teacher)
            student = build_student(teacher, keep)
            if student_config:
                importance = for_layers(activation_importance(teacher, calib), keep)
                student = prune_width(student, importance, student_config)
                info["width"] = {"method": "activation importance (Minitron)", "widths": dict(student_config)}
        info["calibration_perplexity"] = {
            "teacher": calibration_perplexity(teacher, calib),
            "student": calibration_perplexity(student, calib),
        }
    info["kept_layers"] = list(student.config.slimlm_kept_layers)
    info["shape"] = shape_of(student.config)
    return student, info


def _selection_record(table: list[dict], n_blocks: int) -> dict:
    if table:
        log(
            f"layer importance: dropping layers {table[0]['dropped'][0]}-{table[0]['dropped'][1]} costs least "
            f"(calibration perplexity {table[0]['perplexity']:.1f}; worst candidate {table[-1]['perplexity']:.3g})"
        )
    return {
        "method": "drop the contiguous run of layers whose removal raises calibration perplexity least",
        "calibration_blocks": n_blocks,
        "candidates": [{k: r[k] for k in ("dropped", "perplexity")} for r in table],
    }


def _search(teacher, calib, target, axes, progress) -> tuple:
    """Build every candidate shape, score it by the KL proxy, keep the best; log and record the table."""
    shapes = candidate_shapes(teacher.config, target, axes)
    teacher_shape = shape_of(teacher.config)
    importance = activation_importance(teacher, calib) if any(_is_narrower(s, teacher_shape) for s in shapes) else None
    reference = _teacher_log_probs(teacher, calib)
    kept_for, selections = {}, {}
    best, rows = None, []
    for shape in progress(shapes, desc="trying student shapes"):
        n = shape["layers"]
        if n not in kept_for:
            kept_for[n], table = select_layers(teacher, calib, n)
            selections[n] = _selection_record(table, len(calib)) if table else None
        student = build_student(teacher, kept_for[n])
        if _is_narrower(shape, teacher_shape):
            widths = {k: shape[k] for k in teacher_shape if k != "layers" and shape[k] != teacher_shape[k]}
            student = prune_width(student, for_layers(importance, kept_for[n]), widths)
        kl = kl_to_teacher(teacher, student, calib, reference=reference)
        rows.append({**shape, "kl": kl})
        if best is None or kl < best[1]["kl"]:
            best = (student, rows[-1])
        else:
            del student
    rows.sort(key=lambda row: row["kl"])
    log(f"student shapes at {target:g} of the teacher's parameters (--axes {axes}), best first, by {PROXY}:")
    for row in rows:
        log(f"  {row['name']:<40} {row['params'] / 1e6:7.1f}M ({row['fraction']:.1%})  KL {row['kl']:.4f}")
    student, chosen = best
    log(f"chose {chosen['name']}")
    info = {
        "shape_search": {
            "target_params": target,
            "axes": axes,
            "proxy": PROXY,
            "calibration_blocks": len(calib),
            "candidates": rows,
            "chosen": chosen["name"],
        }
    }
    if selections.get(chosen["layers"]):
        info["layer_selection"] = selections[chosen["layers"]]
    if _is_narrower(chosen, teacher_shape):
        info["width"] = {"method": "activation importance (Minitron)"}
    return student, info


def _is_narrower(shape: dict, teacher_shape: dict) -> bool:
    return any(shape[k] != teacher_shape[k] for k in teacher_shape if k != "layers")


_REFERENCE_BYTES = 2**30  # keep the teacher's calibration log-probs in memory up to 1 GiB, else recompute


@torch.inference_mode()
def _teacher_log_probs(teacher, blocks: torch.Tensor, batch_size: int = 4) -> list | None:
    """The teacher's log-probabilities per calibration batch, computed once for every candidate (or None)."""
    if blocks.numel() * teacher.config.get_text_config().vocab_size * 4 > _REFERENCE_BYTES:
        return None
    return [
        torch.log_softmax(teacher(input_ids=blocks[i : i + batch_size], use_cache=False).logits.float(), dim=-1)
        for i in range(0, len(blocks), batch_size)
    ]


@torch.inference_mode()
def kl_to_teacher(teacher, student, blocks: torch.Tensor, batch_size: int = 4, reference: list | None = None) -> float:
    """Mean per-token KL(p_teacher || p_student) at temperature 1 on (n, T) blocks (`reference`: the teacher's
    log-probabilities per batch, from _teacher_log_probs)."""
    total, count = 0.0, 0
    for n, start in enumerate(range(0, len(blocks), batch_size)):
        ids = blocks[start : start + batch_size]
        if reference is not None:
            log_p = reference[n]
        else:
            log_p = torch.log_softmax(teacher(input_ids=ids, use_cache=False).logits.float(), dim=-1)
        log_q = torch.log_softmax(student(input_ids=ids, use_cache=False).logits.float(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
        count += ids.numel()
    return total / count
