"""`slimlm experiment student-shape`: students at one share of the teacher's parameters, cut in depth, in
width or both, each distilled like any study's arm and measured as a frontier (parameters and size on disk
against test perplexity and decode speed), with the teacher and its quantized copies (baselines.py) beside
them. The paper has no such study; Minitron (arXiv 2408.11796) compared depth and width this way.

One arm per axis (`--axes depth,width,both`). Each starts from its own student, built once per run folder into
students/AXIS as `slimlm student --target-params F --axes AXIS` builds it, and measured there as the reference
student-AXIS, whose record keeps the chosen shape; everything else (tokens, blocks per seed, τ, α, learning
rate, teacher cache, precision) is what every arm of every study shares (sweeps.py). The shape search's
proxy (KL to the teacher right after pruning) says where a student starts; these arms measure where it ends.
"""

from __future__ import annotations

from pathlib import Path

from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.experiments import runner
from slimlm.experiments.common import parse_list
from slimlm.experiments.layout import RUN_PREFIX, read_json, student_dir
from slimlm.methods.budget import AXES, candidate_shapes, shape_of
from slimlm.sources import model_config

LABELS = {
    "depth": "depth: fewer layers",
    "width": "width: every layer, narrower",
    "both": "both: least KL of depth, width and mixed shapes",
}


def shape_arms(values, target: float, teacher) -> tuple[dict, list[dict]]:
    """(parameter, arms) of the study: one arm per axis, each naming its own starting student. Every axis is
    checked against the teacher's config now (no weights loaded), so a budget no shape reaches is one line
    before the folder is claimed."""
    axes = parse_list(values, str, "--axes")
    bad = [a for a in axes if a not in AXES]
    if bad:
        raise SlimlmError(f"--axes {','.join(axes)}: unknown {', '.join(bad)}; use {', '.join(AXES)} (any of them)")
    config = model_config(teacher)
    for axis in axes:
        candidate_shapes(config, target, axis)
    parameter = {
        "name": "axes",
        "label": f"axes the student is cut along, at {target:g} of the teacher's parameters",
        "numeric": False,
        "target_params": target,
        "teacher_shape": shape_of(config),
    }
    arms = [
        {"name": a, "value": a, "label": LABELS[a], "settings": {"student": f"{RUN_PREFIX}students/{a}"}} for a in axes
    ]
    return parameter, arms


def reference_name(axis: str) -> str:
    return f"student-{axis}"


def starting_students(run_dir: Path, arms: list[dict], s, ev: dict, precision: str) -> None:
    """Each arm's student, built once (`slimlm student --target-params --axes AXIS`) and measured once."""
    from slimlm.stages.student import make_student

    for arm in arms:
        axis, out = arm["value"], student_dir(run_dir, arm["value"])
        if not (out / "slimlm.json").exists():
            log(f"building the {axis} student at {s.target_params:g} of the teacher's parameters into {out}")
            out.parent.mkdir(parents=True, exist_ok=True)
            make_student(
                teacher=s.teacher,
                data=s.data,
                out=str(out),
                target_params=s.target_params,
                axes=axis,
                block_size=s.block_size,
                force=True,
                evaluate_test=False,
                precision=precision,
            )
        about = {"student": shape_record(out, axis)}
        runner.measure_reference(run_dir, reference_name(axis), out, s.data, ev, about=about)


def shape_record(model_dir: Path, axis: str) -> dict:
    """What the report says of a starting student: its axis, its shape, and the search that chose it."""
    student = read_json(Path(model_dir) / "slimlm.json").get("student") or {}
    search = student.get("shape_search") or {}
    chosen = next((c for c in search.get("candidates", []) if c.get("name") == search.get("chosen")), {})
    return {
        "axis": axis,
        "shape": student.get("shape"),
        "kept_layers": student.get("kept_layers"),
        "target_params": search.get("target_params"),
        "chosen": search.get("chosen"),
        "fraction": chosen.get("fraction"),
        "kl": chosen.get("kl"),
        "candidates": len(search.get("candidates", [])),
        "proxy": search.get("proxy"),
    }


def shape_notes(target: float, max_tokens: int, axes: list[str]) -> list[str]:
    return [
        f"every arm trains on the same {max_tokens:,} tokens per seed (seed sets the block order); only the "
        "starting student differs",
        "metrics on the held-out test split; decode speed is batch-1 greedy generation, on the CPU that ran the study",
        f"each arm starts from its own student at {target:g} of the teacher's parameters, built once per run folder "
        f"into students/AXIS by `slimlm student --target-params {target:g} --axes AXIS` ({', '.join(axes)}): depth "
        "keeps the layer count nearest the budget, chosen by measured layer importance; width keeps every layer "
        "and cuts the hidden size and the MLP width by activation importance; both keeps whichever shape of "
        "either kind, or of some of each, has the least KL to the teacher on the calibration blocks",
        "the starting students are measured as references student-AXIS: the shape search's proxy says where a "
        "student starts, the arms where it ends after distillation",
        "teacher outputs are cached once per seed and temperature (the teacher cache above) and shared by every arm",
    ]
