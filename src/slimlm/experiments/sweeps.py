"""The paper's three studies (section 3.2), and the student-shape frontier, as sweeps over one setting, every
arm run for every seed.

- temperature   (Table 1): distil with tau in {0.5, 1, 2, 5, 10}
- feature-layer (Figure 2): distil features from one teacher layer, mapped to the student layer at
                 the same relative depth
- finetune      (Figure 3): LoRA vs full fine-tuning of the same distilled student
- student-shape (no paper counterpart): distil students cut in depth, width or both at one parameter
                 budget, each from its own starting student (shapes.py)
- data-mix      (no paper counterpart): distil on the in-domain corpus, on general text or on a mix,
                 each scored in domain and on general text (datamix.py)

All arms of a seed train on the same blocks from the same starting student with the same budget;
teacher outputs (sampled token ids, or top-k logits when asked, and every hidden layer the sweep needs) are
computed once per seed and reused by every arm through the teacher cache. Only the swept setting differs.
The temperature study's `--online-control` adds one control arm beside the sweep, at `--temperature` with
the teacher run online (control.py). Every kind also measures the teacher's quantized copies as baselines
(baselines.py); the student-shape study also measures each arm's first seed exported to GGUF, where
llama.cpp is installed.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.experiments import runner
from slimlm.experiments.baselines import quantized_baselines, student_gguf
from slimlm.experiments.common import data_info, finish, layer_count, parse_list
from slimlm.experiments.datamix import data_arms, data_notes, default_corpora
from slimlm.experiments.layout import in_run
from slimlm.experiments.paper_arms import feature_layer_arms, finetune_arms, temperature_arms
from slimlm.experiments.shapes import shape_arms, shape_notes, starting_students
from slimlm.experiments.validation_grid import grid_notes, pick, reuse_seed0
from slimlm.settings import DistillSettings, ExperimentSettings, FinetuneSettings, load_recipe, with_overrides


def experiment(kind: str, *, out: str, force: bool = False, command: str | None = None, **settings) -> Path:
    """Run (or continue) one of the studies (`kind`: settings.EXPERIMENT_KINDS) into `out`, then write its report.

    `settings` are ExperimentSettings' fields (slimlm.settings: values, seeds, teacher, data, max_tokens, ...),
    with their defaults there. `evaluation` sets the measurement protocol (settings.EVAL_DEFAULTS); `settings`
    (or a `recipe` file) adds training settings (e.g. {"warmup_ratio": 0.1}) to every distillation and
    fine-tuning run of the experiment. `precision` (auto|fp32|bf16, precision.py) is what every run trains in;
    each arm records what auto decided. `baselines` ("quantized" or "none") adds the teacher's 8- and 4-bit
    copies as references, and for student-shape each arm's GGUF exports (baselines.py).
    """
    from slimlm.precision import from_legacy

    s = ExperimentSettings.from_dict({**settings, "kind": kind, "out": out, "force": force, "command": command})
    extra = from_legacy({**(load_recipe(s.recipe) if s.recipe else {}), **(s.settings or {})})
    from_recipe = extra.pop("precision", None)  # a recipe's `precision` (or old `bf16`) is --precision
    explicit = {"precision": s.precision} if s.precision != "auto" else {}  # auto is the default: not a choice
    s.precision = with_overrides(
        {} if from_recipe is None else {"precision": from_recipe}, explicit, f"recipe {s.recipe or 'settings'}"
    ).get("precision", s.precision)
    s.validate()
    precision = s.precision
    # only a non-default choice joins the settings (and the experiment's identity), so a folder started
    # before precision existed (bf16 everywhere, then) continues under `auto` as the same experiment
    chosen = {} if precision == "auto" else {"precision": precision}
    seeds = parse_list(s.seeds, int, "--seeds")
    ev = runner.check_eval(s.protocol())
    teacher_layers = layer_count(s.teacher)
    max_tokens = s.tokens_per_arm()
    run_dir = Path(s.out)
    start_dir = Path(s.student) if s.student else run_dir / "student-init"
    distill_base = {
        "teacher": s.teacher,
        "data": s.data,
        "student": str(start_dir),
        "max_tokens": max_tokens,
        "batch_size": s.batch_size,
        "block_size": s.block_size,
        "temperature": s.temperature,
        "alpha": s.alpha,
        "teacher_cache": s.cache_mode != "online",
        "cache_mode": "sample" if s.cache_mode == "online" else s.cache_mode,
        "top_k": s.top_k,
        "learning_rate": s.distill_learning_rate(),
        "eval_tokens": 4096,
        **chosen,
    }  # in-training validation only; arms are measured on the test split
    distill_extra, finetune_extra = _split_settings(extra)
    distill_base.update(distill_extra)
    values = s.values if s.values is not None else s.default_values()
    grid = None  # a validation grid (validation_grid.py): the fine-tuning and feature-layer studies may have one
    if kind == "temperature":
        parameter, arms = temperature_arms(s, values)
        base = distill_base
    elif kind == "feature-layer":
        parameter, arms, layers, grid = feature_layer_arms(s, values, teacher_layers)
        # the cached arms read these teacher layers from one cache; the online arms need none
        base = {**distill_base, "cache_layers": ",".join(map(str, layers)) if distill_base["teacher_cache"] else ""}
    elif kind == "data-mix":  # online teacher, as in the demo whose default data this study chooses
        parameter, arms = data_arms(s.values if s.values is not None else default_corpora(s.data, ev))
        base = {**distill_base, "teacher_cache": False}
    elif kind == "student-shape":
        parameter, arms = shape_arms(values, s.target_params, s.teacher)
        base = {k: v for k, v in distill_base.items() if k != "student"}  # each arm names its own student
        values = [a["value"] for a in arms]
    else:
        parameter, arms, grid = finetune_arms(s, values)
        teacher = {"teacher": s.teacher, "temperature": s.temperature, "alpha": s.alpha} if s.with_teacher else {}
        base = {
            **teacher,
            "model": str(s.model) if s.model else str(run_dir / "base"),
            "data": s.data,
            "max_tokens": max_tokens,
            "batch_size": s.batch_size,
            "block_size": s.block_size,
            "learning_rate": s.learning_rate,
            "eval_tokens": 4096,
            **finetune_extra,
            **chosen,
        }
    _check_arms(kind, base, distill_base, arms)
    spec = {
        "kind": kind,
        "parameter": parameter,
        "arms": arms,
        "seeds": seeds,
        "protocol": {
            "teacher": s.teacher,
            "teacher_layers": teacher_layers,
            "data": s.data,
            "data_info": data_info(s.teacher, s.data, s.block_size),
            "train_tokens": max_tokens,
            "block_size": s.block_size,
            "base_settings": _portable(base, run_dir),
            "eval": ev,
            "teacher_cache": cache_protocol(s.cache_mode, s.top_k) if kind not in ("finetune", "data-mix") else None,
            **({"validation_grid": grid} if grid else {}),
            "notes": shape_notes(s.target_params, max_tokens, values)
            if kind == "student-shape"
            else _notes(kind, s.student, s.model, s.student_layers, max_tokens, s.online_control, s.cache_mode)
            + (_online_notes(arms[-1], s.cache_mode) if s.online_control else [])
            + grid_notes(kind, grid),
        },
        "command": s.command,
    }
    run_dir = runner.open_run(run_dir, spec, force=s.force)
    runner.measure_reference(run_dir, "teacher", s.teacher, s.data, ev)
    quantized_baselines(run_dir, s.teacher, s.data, ev, s.baselines)
    if kind == "student-shape":
        starting_students(run_dir, arms, s, ev, precision)  # each arm's own, in place of student-init
    # fine-tuning a given model needs no starting student; the student-shape arms have their own
    needs_start = kind != "student-shape" and (kind != "finetune" or not s.model)
    if needs_start and not s.student:
        _starting_student(s.teacher, s.data, start_dir, s.student_layers, s.block_size, precision)
    if needs_start:
        runner.measure_reference(run_dir, "student-init", start_dir, s.data, ev)
    from slimlm.stages.distill import distill
    from slimlm.stages.finetune import finetune

    if kind == "finetune":
        if not s.model:
            _distilled_base(distill_base, run_dir / "base")
        runner.measure_reference(run_dir, "base", base["model"], s.data, ev)
        picked = (
            _picked(run_dir, "lr-grid", "learning_rate", grid, finetune, base, arms, lambda a: [a["name"]])
            if grid
            else None
        )
        train = _arm(finetune, base, picked=picked)
    else:
        feature_arms = [a["name"] for a in arms if a["settings"].get("feature_layers") and not a.get("control")]
        picked = None
        if kind == "feature-layer" and grid:  # one β, picked on the middle layer, for every feature arm
            picked = _picked(
                run_dir, "weight-grid", "feature_weight", grid, distill, base, arms, lambda a: feature_arms
            )
        train = _arm(distill, base, run_dir, picked)
    runner.run_arms(run_dir, spec, train, data=s.data, ev=ev)
    if kind == "student-shape":
        student_gguf(run_dir, spec, s.data, ev, s.baselines)  # the students as shipped under llama.cpp
    return finish(run_dir)


def _check_arms(kind: str, base: dict, distill_base: dict, arms: list[dict]) -> None:
    """Every run's settings validated before the folder is claimed or anything is loaded, so a bad value is a
    one-line error now rather than after the teacher was measured (and never a spec that cannot continue)."""
    checks = [(DistillSettings, distill_base)] if kind == "finetune" else []
    settings_type = FinetuneSettings if kind == "finetune" else DistillSettings
    checks += [(settings_type, {**base, **arm["settings"]}) for arm in arms]
    for cls, values in checks:
        cls.from_dict(values).validate()


def _portable(settings: dict, run_dir: Path) -> dict:
    """Paths inside the run folder written relative to it, so a moved or copied folder still continues."""
    prefix = str(run_dir) + "/"
    return {
        k: "{run}/" + v[len(prefix) :] if isinstance(v, str) and v.startswith(prefix) else v
        for k, v in settings.items()
    }


def _split_settings(settings: dict) -> tuple[dict, dict]:
    """Extra settings -> (those distillation takes, those fine-tuning takes); a key neither takes is an error."""
    owned = {
        "teacher",
        "data",
        "student",
        "model",
        "seed",
        "method",
        "temperature",
        "feature_layers",
        "cache_layers",
        "teacher_cache",
        "cache_mode",
        "max_tokens",
        "batch_size",
        "block_size",
        "learning_rate",
        "alpha",
        "top_k",
        "feature_weight",
        "rank",
    }  # set by the experiment's own flags, which must win
    from slimlm.precision import from_legacy

    settings = from_legacy({str(k).replace("-", "_"): v for k, v in settings.items()})
    d_keys = {f.name for f in fields(DistillSettings)} - owned
    f_keys = {f.name for f in fields(FinetuneSettings)} - owned
    unknown = sorted(set(settings) - d_keys - f_keys)
    if unknown:
        raise SlimlmError(
            f"unknown or experiment-owned setting(s) {', '.join(unknown)} in the recipe; use the "
            "experiment's own flags (--alpha, --learning-rate, --max-tokens, ...) for those"
        )
    return ({k: v for k, v in settings.items() if k in d_keys}, {k: v for k, v in settings.items() if k in f_keys})


def _arm(stage, base: dict, run_dir: Path | None = None, picked: dict | None = None):
    """train(arm, seed, out, resume) for the runner: the stage (distill or finetune) with the arm's settings
    (a "{run}/..." path among them read inside `run_dir`); `picked` ({"grid", "key", "values": {arm: value}})
    sets what a validation grid chose for each arm, whose seed-0 run in the grid is reused."""

    def train(arm, seed, out, resume):
        settings = {k: in_run(v, run_dir) for k, v in arm["settings"].items()}
        value = (picked or {}).get("values", {}).get(arm["name"])
        if value is not None:
            settings[picked["key"]] = value
            grid_dir = out.parent.parent  # the run folder (layout.arm_dir)
            if seed == 0 and not resume and reuse_seed0(grid_dir, picked["grid"], arm["name"], value, out):
                return
        stage(out=str(out), resume=resume, **{**base, **settings, "seed": seed})

    return train


def _picked(run_dir, grid, key, candidates, stage, base, arms, applies_to) -> dict:
    """Run a validation grid (validation_grid.py): each candidate trained as its arm at seed 0; the pick of
    each group then applies to the arms `applies_to(arm)` names."""
    by_name = {a["name"]: a for a in arms}

    def train(group, value, out, resume):
        settings = {k: in_run(v, run_dir) for k, v in by_name[group]["settings"].items()}
        stage(out=str(out), resume=resume, **{**base, **settings, key: value, "seed": 0})

    chosen = pick(run_dir, grid, candidates, train)
    return {"grid": grid, "key": key, "values": {n: v for g, v in chosen.items() for n in applies_to(by_name[g])}}


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


def _notes(kind, student, model, student_layers, max_tokens, online_control=False, cache_mode="sample") -> list[str]:
    notes = [
        f"every arm trains on the same {max_tokens:,} tokens per seed (seed sets the block order and init "
        "of new parameters); only the swept setting differs",
        "metrics on the held-out test split; decode speed is batch-1 greedy generation, on the CPU that ran the study",
    ]
    start = f"the given student {student}" if student else f"a {student_layers}-layer student built from the teacher"
    if kind == "finetune":
        notes.append(
            "both methods fine-tune "
            + (
                f"the given model {model}"
                if model
                else f"one distilled student (distilled once, seed 0, from {start}) with cross-entropy on the "
                "training split"
            )
        )
    elif kind == "data-mix":
        return data_notes(start, max_tokens)
    elif cache_mode == "online":
        notes.append(f"arms start from {start}; every arm runs the teacher online (no teacher cache)")
    else:
        notes.append(
            f"arms start from {start}; teacher outputs are cached once per seed and temperature (the teacher cache "
            "above) and shared by every swept arm"
            + ("; the control arm runs the teacher online" if online_control else "")
        )
    return notes


def _online_notes(arm: dict, cache_mode: str) -> list[str]:
    """What the control arm is for (said only when it runs, so a folder without it keeps its identity)."""
    return [
        f"control arm {arm['name']}: τ={arm['value']:g} with the teacher run online every step (no teacher cache); "
        f"every swept arm reads the teacher cache (--cache-mode {cache_mode}), so the control shows whether the "
        f"cache changes the result at τ={arm['value']:g}. It is not a point of the sweep: not on the τ line, not "
        "matched with the paper"
    ]


def cache_protocol(mode: str, top_k: int = 64) -> dict:
    """The teacher cache as the report's protocol states it (training/teacher_cache.py)."""
    if mode == "online":
        return {"mode": "none: the teacher run online every step (no cache noise)"}
    if mode == "topk":
        return {"mode": "topk (biased: the teacher renormalised over its top-k)", "top_k": top_k}
    return {
        "mode": "sample (unbiased: token ids drawn from the teacher at each arm's temperature)",
        "draws": "as many as fit 64 bytes a position",
    }
