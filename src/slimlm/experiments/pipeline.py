"""The paper's whole framework from one recipe: distil -> fine-tune -> prune -> quantize, every model kept.

A recipe names the stages in order; each stage reads the previous stage's model directory and
writes its own, through the same API the single commands use, and every one is measured with the
same protocol, so the report can draw the size / perplexity / speed frontier stage by stage, with the
teacher and its quantized copies (`--baselines quantized`, the default; baselines.py) beside the stages.

    teacher: smollm2-135m
    data: sotu
    seeds: [0]
    evaluate: {tasks: [cloze], repeats: 3}
    stages:
      - student: {layers: 14}
      - distill: {max_tokens: 40000, teacher_cache: true}
      - finetune: {method: lora, max_tokens: 20000}
      - prune: {method: structured, sparsity: 0.2}
      - quantize: {bits: 8, granularity: channel}
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from slimlm.errors import SlimlmError
from slimlm.experiments import runner
from slimlm.experiments.baselines import quantized_baselines
from slimlm.experiments.common import data_info, finish, layer_count, parse_list
from slimlm.experiments.layout import arm_dir
from slimlm.output import staging_dir
from slimlm.settings import (
    DistillSettings,
    FinetuneSettings,
    PipelineSettings,
    PruneSettings,
    QuantizeSettings,
    StudentSettings,
    load_recipe,
)

STAGES = ("student", "distill", "finetune", "prune", "quantize")
RECIPE_KEYS = ("teacher", "data", "seeds", "evaluate", "precision", "stages")
COMPUTING_STAGES = ("student", "distill", "finetune", "prune")  # those that train or calibrate: take `precision`
STAGE_SETTINGS = {"student": StudentSettings, "prune": PruneSettings, "quantize": QuantizeSettings}


def pipeline(
    recipe: str | Path, *, out: str, force: bool = False, command: str | None = None, baselines: str = "quantized"
) -> Path:
    """Run (or continue) the recipe's stages for every seed into `out`, then write the report; `baselines`
    ("quantized" or "none") measures the teacher's 8- and 4-bit copies beside them (baselines.py)."""
    given = {"recipe": recipe, "out": out, "force": force, "command": command, "baselines": baselines}
    s = PipelineSettings.from_dict(given).validate()
    recipe = s.recipe
    values = load_recipe(recipe)
    unknown = sorted(set(values) - set(RECIPE_KEYS))
    if unknown:
        raise SlimlmError(f"recipe {recipe}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(RECIPE_KEYS)}")
    teacher = values.get("teacher", "smollm2-135m")
    data = values.get("data", "sotu")
    _check_top(values, recipe)
    seeds = parse_list(values.get("seeds", [0]), int, "seeds")
    ev = runner.check_eval(values.get("evaluate") or {})
    if "precision" in values:
        from slimlm.precision import check

        try:
            check(values["precision"])
        except SlimlmError as exc:
            raise SlimlmError(f"recipe {recipe}: {exc}") from None
    arms = _stages(values.get("stages"), recipe, teacher, data, values.get("precision"))
    teacher_layers = layer_count(teacher)
    block_size = next((a["settings"].get("block_size") for a in arms if a["settings"].get("block_size")), 256)
    spec = {
        "kind": "pipeline",
        "parameter": {"name": "stage", "label": "pipeline stage", "numeric": False},
        "arms": arms,
        "seeds": seeds,
        "protocol": {
            "teacher": teacher,
            "teacher_layers": teacher_layers,
            "data": data,
            "data_info": data_info(teacher, data, block_size),
            "train_tokens": sum(_train_tokens(a, teacher, data) for a in arms),
            "block_size": block_size,
            "base_settings": {},
            "eval": ev,
            "teacher_cache": _cache_of(arms),
            "notes": [
                "each stage reads the previous stage's model and writes its own; every "
                "intermediate model is kept under arms/ and measured with the same protocol"
            ],
        },
        "command": s.command,
        "recipe": str(recipe),
    }
    run_dir = runner.open_run(Path(s.out), spec, force=s.force)
    runner.measure_reference(run_dir, "teacher", teacher, data, ev)
    quantized_baselines(run_dir, teacher, data, ev, s.baselines)
    runner.run_arms(run_dir, spec, _train(arms, run_dir, teacher, data), data=data, ev=ev)
    return finish(run_dir)


def _cache_of(arms: list[dict]) -> dict | None:
    """The teacher cache as the protocol states it: which stages read it, or None when every stage ran online."""
    from slimlm.experiments.sweeps import cache_protocol

    cached = [a for a in arms if a["settings"].get("teacher_cache")]
    if not cached:
        return None
    first = cached[0]["settings"]
    return {
        **cache_protocol(first.get("cache_mode", "sample"), first.get("top_k", 64)),
        "stages": ", ".join(a["name"] for a in cached),
    }


def _check_top(values: dict, recipe) -> None:
    """The recipe's top-level values have fixed types; a wrong one is one line here, not a TypeError later."""
    for key in ("teacher", "data"):
        if key in values and not isinstance(values[key], str):
            raise SlimlmError(
                f"recipe {recipe}: {key} must be a string such as a model/corpus name or a path "
                f"(got {values[key]!r}); quote it in YAML"
            )
    seeds = values.get("seeds", [0])
    items = seeds if isinstance(seeds, list) else [seeds]
    if not items or not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise SlimlmError(
            f"recipe {recipe}: seeds must be an integer or a list of integers such as [0, 1, 2] (got {seeds!r})"
        )
    if values.get("evaluate") is not None and not isinstance(values["evaluate"], dict):
        raise SlimlmError(
            f"recipe {recipe}: evaluate must be a mapping such as {{tasks: [cloze], repeats: 3}} "
            f"(got {values['evaluate']!r})"
        )


def _stages(stages, recipe, teacher, data, precision=None) -> list[dict]:
    """Recipe stages -> experiment arms, every stage's settings checked before anything runs."""
    if not isinstance(stages, list) or not stages:
        raise SlimlmError(
            f"recipe {recipe}: 'stages' must be a non-empty list such as "
            "[{distill: {layers: 14}}, {quantize: {bits: 8}}]"
        )
    arms = []
    for i, item in enumerate(stages, 1):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise SlimlmError(f"recipe {recipe}: stage {i} must be one 'name: {{settings}}' entry")
        ((name, settings),) = item.items()
        if not isinstance(name, str) or name not in STAGES:
            raise SlimlmError(f"recipe {recipe}: stage {i} {name!r} is not one of {', '.join(STAGES)}")
        if settings is not None and not isinstance(settings, dict):
            raise SlimlmError(
                f"recipe {recipe}: stage {i} ({name}) settings must be a mapping such as "
                f"{{max_tokens: 40000}} (got {settings!r})"
            )
        bad = [k for k in (settings or {}) if not isinstance(k, str)]
        if bad:
            raise SlimlmError(
                f"recipe {recipe}: stage {i} ({name}) key {bad[0]!r} is not a setting name; write name: value"
            )
        settings = {k.replace("-", "_"): v for k, v in (settings or {}).items()}
        if precision is not None and name in COMPUTING_STAGES:
            settings.setdefault("precision", precision)  # the recipe's top-level choice; a stage's own wins
        _check_stage(name, settings, i, recipe, first=(i == 1), teacher=teacher, data=data)
        arms.append({"name": f"{i}-{name}", "value": i, "label": name, "stage": name, "settings": settings})
    return arms


def _check_stage(name, settings, i, recipe, *, first, teacher, data) -> None:
    where = f"recipe {recipe}, stage {i} ({name})"
    fixed = {"teacher", "data", "out", "force", "resume", "seed", "student", "model"} - (
        {"teacher"} if name in ("finetune",) else set()
    )
    clash = sorted(set(settings) & fixed)
    if clash:
        raise SlimlmError(
            f"{where}: {', '.join(clash)} is set by the pipeline (the teacher and data at the top, "
            "each stage's input from the stage before); remove it"
        )
    builds_student = bool({"layers", "keep_layers"} & set(settings))
    if name == "student" and not first:
        raise SlimlmError(f"{where}: a student is built from the teacher, so it can only be the first stage")
    if name == "distill" and first and not builds_student:
        raise SlimlmError(
            f"{where}: the first distill stage needs layers: N or keep_layers: LIST (else it would "
            "distil the teacher into a copy of itself), or put a student stage first"
        )
    try:
        if name == "distill":
            student = {} if first else {"student": "previous"}
            DistillSettings.from_dict({"teacher": teacher, "data": data, **student, **settings}).validate()
        elif name == "finetune":
            FinetuneSettings.from_dict({"model": "previous", "data": data, **settings}).validate()
        else:
            settings_type = STAGE_SETTINGS[name]
            known = {f.name for f in fields(settings_type)} - fixed - {"trust_remote_code"}
            unknown = sorted(set(settings) - known)
            if unknown:
                raise SlimlmError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
            if name == "student" and len({"layers", "keep_layers"} & set(settings)) != 1:
                raise SlimlmError("give exactly one of layers: N or keep_layers: LIST")
            settings_type.from_dict(
                {"model": "previous", "out": "-", **settings} if name != "student" else {"out": "-", **settings}
            ).validate()
    except SlimlmError as exc:
        raise SlimlmError(f"{where}: {exc}") from None


def _train_tokens(arm: dict, teacher: str, data: str) -> int:
    """Training tokens of a distill or fine-tune stage as its settings resolve them (defaults included)."""
    if arm["stage"] == "distill":
        settings = DistillSettings.from_dict({"teacher": teacher, "data": data, "student": "-", **arm["settings"]})
    elif arm["stage"] == "finetune":
        settings = FinetuneSettings.from_dict({"model": "-", "data": data, **arm["settings"]})
    else:
        return 0
    return settings.steps() * settings.batch_size * settings.grad_accum * settings.block_size


def _train(arms: list[dict], run_dir: Path, teacher: str, data: str):
    """Each stage's input is the previous stage's output for the same seed (the teacher for the first)."""
    from slimlm.stages import distill, finetune, prune, quantize, student

    def train(arm, seed, out, resume):
        index = arm["value"]
        source = str(arm_dir(run_dir, arms[index - 2]["name"], seed)) if index > 1 else teacher
        settings, stage = arm["settings"], arm["stage"]
        if stage == "student":
            student.make_student(teacher=teacher, data=data, out=str(out), force=True, seed=seed, **settings)
        elif stage == "distill":
            given = {} if index == 1 and ({"layers", "keep_layers"} & set(settings)) else {"student": source}
            distill.distill(out=str(out), resume=resume, teacher=teacher, data=data, seed=seed, **given, **settings)
        elif stage == "finetune":
            finetune.finetune(out=str(out), resume=resume, model=source, data=data, seed=seed, **settings)
        elif stage == "prune":
            prune.prune(source, out=str(out), data=data, force=staging_dir(out).exists(), **settings)
        else:
            quantize.quantize(source, out=str(out), data=data, force=staging_dir(out).exists(), **settings)

    return train
