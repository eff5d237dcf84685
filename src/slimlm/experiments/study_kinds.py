"""The kinds of `slimlm experiment` as a table (STUDIES): what each kind does its own way, namely its arms,
the stage they run, what they start from, whether they read the teacher cache and its protocol notes.
sweeps.py takes every kind through the same steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from slimlm.distributed import log
from slimlm.experiments import runner
from slimlm.experiments.baselines import student_gguf
from slimlm.experiments.datamix import data_arms, data_notes, default_corpora
from slimlm.experiments.paper_arms import feature_layer_arms, finetune_arms, temperature_arms
from slimlm.experiments.shapes import shape_arms, shape_notes, starting_students
from slimlm.experiments.validation_grid import grid_notes
from slimlm.settings import ExperimentSettings


@dataclass
class Setup:
    """What every kind's arms build on, decided once from the experiment's settings."""

    s: ExperimentSettings
    seeds: list[int]
    ev: dict  # the measurement protocol
    teacher_layers: int
    max_tokens: int  # training tokens per arm and seed
    run_dir: Path  # the run folder as given
    start_dir: Path  # the student the arms start from: given, or built into the run folder
    values: object  # the swept values as given, or the kind's defaults
    distill_base: dict  # the settings every distillation run of the experiment shares
    finetune_extra: dict  # recipe settings that only fine-tuning takes
    chosen: dict  # {"precision": ...} when one was chosen, else {}


class Sweep(NamedTuple):
    """A kind's arms: the swept parameter, the arms, the settings they share and a validation grid (or None)."""

    parameter: dict
    arms: list[dict]
    base: dict
    grid: dict | None = None


@dataclass(frozen=True)
class Study:
    """What one kind of study does its own way; everything else in sweeps.experiment is the same for all."""

    arms: Callable  # (Setup) -> Sweep
    notes: Callable  # (Setup, Sweep) -> the protocol's notes about this kind
    start: Callable  # (Setup, Sweep, run_dir): the model(s) the arms start from, built and measured
    stage: str = "distill"  # the stage every arm runs: distill or finetune
    reads_cache: bool = True  # the arms may read the teacher cache, and the protocol says how
    pick: tuple | None = None  # a validation grid's (folder, setting, arms(arm, arms) its pick applies to)
    after: Callable | None = None  # (Setup, run_dir, spec): measured once every arm has run


def _temperature(c: Setup) -> Sweep:
    parameter, arms = temperature_arms(c.s, c.values)
    return Sweep(parameter, arms, c.distill_base)


def _feature_layer(c: Setup) -> Sweep:
    """The cached arms read all the swept teacher layers from one cache; the online arms need none."""
    parameter, arms, layers, grid = feature_layer_arms(c.s, c.values, c.teacher_layers)
    cache_layers = ",".join(map(str, layers)) if c.distill_base["teacher_cache"] else ""
    return Sweep(parameter, arms, {**c.distill_base, "cache_layers": cache_layers}, grid)


def _data_mix(c: Setup) -> Sweep:
    """Online teacher, as in the demo whose default data this study chooses."""
    parameter, arms = data_arms(c.s.values if c.s.values is not None else default_corpora(c.s.data, c.ev))
    return Sweep(parameter, arms, {**c.distill_base, "teacher_cache": False})


def _student_shape(c: Setup) -> Sweep:
    parameter, arms = shape_arms(c.values, c.s.target_params, c.s.teacher)
    base = {k: v for k, v in c.distill_base.items() if k != "student"}  # each arm names its own student
    return Sweep(parameter, arms, base)


def _finetune(c: Setup) -> Sweep:
    parameter, arms, grid = finetune_arms(c.s, c.values)
    return Sweep(parameter, arms, _finetune_base(c), grid)


def _finetune_base(c: Setup) -> dict:
    """The settings every fine-tuning arm shares: the given model or the distilled base, with the teacher in
    the loss when asked."""
    s = c.s
    teacher = {"teacher": s.teacher, "temperature": s.temperature, "alpha": s.alpha} if s.with_teacher else {}
    return {
        **teacher,
        "model": str(s.model) if s.model else str(c.run_dir / "base"),
        "data": s.data,
        "max_tokens": c.max_tokens,
        "batch_size": s.batch_size,
        "block_size": s.block_size,
        "learning_rate": s.learning_rate,
        "eval_tokens": 4096,
        **c.finetune_extra,
        **c.chosen,
    }


def _shared_start(c: Setup, sweep: Sweep, run_dir: Path) -> None:
    """One student every arm starts from (the given one, or teacher layers built once), measured as a reference."""
    s = c.s
    if not s.student:
        _starting_student(s.teacher, s.data, c.start_dir, s.student_layers, s.block_size, s.precision)
    runner.measure_reference(run_dir, "student-init", c.start_dir, s.data, c.ev)


def _own_starts(c: Setup, sweep: Sweep, run_dir: Path) -> None:
    starting_students(run_dir, sweep.arms, c.s, c.ev, c.s.precision)  # each arm's own, in place of student-init


def _fine_tuned_base(c: Setup, sweep: Sweep, run_dir: Path) -> None:
    """Both methods fine-tune the given model, or one student distilled (seed 0) from the shared start."""
    if not c.s.model:  # fine-tuning a given model needs no starting student
        _shared_start(c, sweep, run_dir)
        _distilled_base(c.distill_base, run_dir / "base")
    runner.measure_reference(run_dir, "base", sweep.base["model"], c.s.data, c.ev)


def _shapes_in_gguf(c: Setup, run_dir: Path, spec: dict) -> None:
    student_gguf(run_dir, spec, c.s.data, c.ev, c.s.baselines)  # the students as shipped under llama.cpp


def _starting_student(teacher, data, out: Path, layers: int, block_size: int, precision: str = "auto") -> None:
    """The student every arm starts from: teacher layers chosen by measured importance, built once."""
    from slimlm.stages.student import make_student

    if (out / "slimlm.json").exists():
        return
    log(f"building the starting student ({layers} layers) into {out}")
    make_student(
        teacher=teacher,
        data=data,
        out=str(out),
        layers=layers,
        block_size=block_size,
        force=True,
        evaluate_test=False,
        precision=precision,
    )


def _distilled_base(settings: dict, out: Path) -> None:
    """Figure 3 fine-tunes a distilled student: distil one (seed 0) for every arm to start from."""
    from slimlm.output import staging_dir
    from slimlm.stages.distill import distill

    if (out / "slimlm.json").exists():
        return
    log(f"distilling the base student that both methods fine-tune into {out}")
    distill(out=str(out), resume=staging_dir(out).exists(), **{**settings, "seed": 0})


def _feature_arms(arm: dict, arms: list[dict]) -> list[str]:
    """One β, picked on the middle layer, for every feature arm (not the control)."""
    return [a["name"] for a in arms if a["settings"].get("feature_layers") and not a.get("control")]


def _own_arm(arm: dict, arms: list[dict]) -> list[str]:
    return [arm["name"]]  # each method's own learning rate


def protocol_notes(kind: str, c: Setup, sweep: Sweep) -> list[str]:
    """The spec's notes: the kind's own, then the control arm's and the validation grid's where they apply."""
    online = _online_notes(sweep.arms[-1], c.s.cache_mode) if c.s.online_control else []
    return STUDIES[kind].notes(c, sweep) + online + grid_notes(kind, sweep.grid)


def _same_tokens(c: Setup) -> list[str]:
    return [
        f"every arm trains on the same {c.max_tokens:,} tokens per seed (seed sets the block order and init "
        "of new parameters); only the swept setting differs",
        "metrics on the held-out test split; decode speed is batch-1 greedy generation, on the CPU that ran the study",
    ]


def _start(s: ExperimentSettings) -> str:
    """How the notes name the student the arms start from."""
    if s.student:
        return f"the given student {s.student}"
    return f"a {s.student_layers}-layer student built from the teacher"


def _distill_notes(c: Setup, sweep: Sweep) -> list[str]:
    start = _start(c.s)
    if c.s.cache_mode == "online":
        return _same_tokens(c) + [f"arms start from {start}; every arm runs the teacher online (no teacher cache)"]
    return _same_tokens(c) + [
        f"arms start from {start}; teacher outputs are cached once per seed and temperature (the teacher cache "
        "above) and shared by every swept arm"
        + ("; the control arm runs the teacher online" if c.s.online_control else "")
    ]


def _finetune_notes(c: Setup, sweep: Sweep) -> list[str]:
    s = c.s
    model = (
        f"the given model {s.model}"
        if s.model
        else f"one distilled student (distilled once, seed 0, from {_start(s)}) with cross-entropy on the "
        "training split"
    )
    return _same_tokens(c) + ["both methods fine-tune " + model]


def _data_mix_notes(c: Setup, sweep: Sweep) -> list[str]:
    return data_notes(_start(c.s), c.max_tokens)


def _shape_notes(c: Setup, sweep: Sweep) -> list[str]:
    return shape_notes(c.s.target_params, c.max_tokens, [arm["value"] for arm in sweep.arms])


def _online_notes(arm: dict, cache_mode: str) -> list[str]:
    """What the control arm is for (said only when it runs, so a folder without it keeps its identity)."""
    return [
        f"control arm {arm['name']}: τ={arm['value']:g} with the teacher run online every step (no teacher cache); "
        f"every swept arm reads the teacher cache (--cache-mode {cache_mode}), so the control shows whether the "
        f"cache changes the result at τ={arm['value']:g}. It is not a point of the sweep: not on the τ line, not "
        "matched with the paper"
    ]


STUDIES = {  # one row per kind of settings.EXPERIMENT_KINDS
    "temperature": Study(arms=_temperature, notes=_distill_notes, start=_shared_start),
    "feature-layer": Study(
        arms=_feature_layer,
        notes=_distill_notes,
        start=_shared_start,
        pick=("weight-grid", "feature_weight", _feature_arms),
    ),
    "data-mix": Study(arms=_data_mix, notes=_data_mix_notes, start=_shared_start, reads_cache=False),
    "student-shape": Study(arms=_student_shape, notes=_shape_notes, start=_own_starts, after=_shapes_in_gguf),
    "finetune": Study(
        arms=_finetune,
        notes=_finetune_notes,
        start=_fine_tuned_base,
        stage="finetune",
        reads_cache=False,
        pick=("lr-grid", "learning_rate", _own_arm),
    ),
}
