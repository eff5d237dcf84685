"""The paper's three studies (section 3.2), and the student-shape frontier, as sweeps over one setting, every
arm run for every seed. Every kind goes through the same steps here; what differs is its row in
study_kinds.STUDIES.

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

from slimlm.errors import SlimlmError
from slimlm.experiments import runner
from slimlm.experiments.baselines import quantized_baselines
from slimlm.experiments.common import data_info, finish, layer_count, parse_list
from slimlm.experiments.layout import in_run
from slimlm.experiments.study_kinds import STUDIES, Setup, Study, Sweep, protocol_notes
from slimlm.experiments.validation_grid import pick, reuse_seed0
from slimlm.precision import from_legacy
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
    s, extra = _settings(kind, out, force, command, settings)
    setup = _setup(s, extra)
    study = STUDIES[kind]  # what this kind does its own way (study_kinds.py)
    sweep = study.arms(setup)
    _check_arms(study.stage, sweep.base, setup.distill_base, sweep.arms)
    spec = _spec(kind, setup, sweep)
    run_dir = runner.open_run(setup.run_dir, spec, force=s.force)
    runner.measure_reference(run_dir, "teacher", s.teacher, s.data, setup.ev)
    quantized_baselines(run_dir, s.teacher, s.data, setup.ev, s.baselines)
    study.start(setup, sweep, run_dir)
    runner.run_arms(run_dir, spec, _train(study, sweep, run_dir), data=s.data, ev=setup.ev)
    if study.after is not None:
        study.after(setup, run_dir, spec)
    return finish(run_dir)


def _settings(kind: str, out: str, force: bool, command: str | None, settings: dict) -> tuple:
    """(the experiment's settings, validated; the training settings a recipe or `settings` adds). A recipe's
    `precision` (or old `bf16`) counts as --precision, which wins when given."""
    s = ExperimentSettings.from_dict({**settings, "kind": kind, "out": out, "force": force, "command": command})
    extra = from_legacy({**(load_recipe(s.recipe) if s.recipe else {}), **(s.settings or {})})
    from_recipe = extra.pop("precision", None)
    explicit = {"precision": s.precision} if s.precision != "auto" else {}  # auto is the default: not a choice
    s.precision = with_overrides(
        {} if from_recipe is None else {"precision": from_recipe}, explicit, f"recipe {s.recipe or 'settings'}"
    ).get("precision", s.precision)
    s.validate()
    return s, extra


def _setup(s: ExperimentSettings, extra: dict) -> Setup:
    """What every kind's arms build on: seeds, protocol, token budget, starting student and shared settings."""
    # only a non-default choice joins the settings (and the experiment's identity), so a folder started
    # before precision existed (bf16 everywhere, then) continues under `auto` as the same experiment
    chosen = {} if s.precision == "auto" else {"precision": s.precision}
    seeds = parse_list(s.seeds, int, "--seeds")
    ev = runner.check_eval(s.protocol())
    teacher_layers = layer_count(s.teacher)
    max_tokens = s.tokens_per_arm()
    run_dir = Path(s.out)
    start_dir = Path(s.student) if s.student else run_dir / "student-init"
    distill_base = _distill_base(s, start_dir, max_tokens, chosen)
    distill_extra, finetune_extra = _split_settings(extra)
    return Setup(
        s=s,
        seeds=seeds,
        ev=ev,
        teacher_layers=teacher_layers,
        max_tokens=max_tokens,
        run_dir=run_dir,
        start_dir=start_dir,
        values=s.values if s.values is not None else s.default_values(),
        distill_base={**distill_base, **distill_extra},
        finetune_extra=finetune_extra,
        chosen=chosen,
    )


def _distill_base(s: ExperimentSettings, start_dir: Path, max_tokens: int, chosen: dict) -> dict:
    """The settings every distillation run of the experiment shares; eval_tokens is in-training validation
    only, as arms are measured on the test split."""
    return {
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
    }


def _spec(kind: str, c: Setup, sweep: Sweep) -> dict:
    """The run's spec, its identity: what it sweeps, over which seeds, and the protocol every arm shares."""
    s = c.s
    return {
        "kind": kind,
        "parameter": sweep.parameter,
        "arms": sweep.arms,
        "seeds": c.seeds,
        "protocol": {
            "teacher": s.teacher,
            "teacher_layers": c.teacher_layers,
            "data": s.data,
            "data_info": data_info(s.teacher, s.data, s.block_size),
            "train_tokens": c.max_tokens,
            "block_size": s.block_size,
            "base_settings": _portable(sweep.base, c.run_dir),
            "eval": c.ev,
            "teacher_cache": cache_protocol(s.cache_mode, s.top_k) if STUDIES[kind].reads_cache else None,
            **({"validation_grid": sweep.grid} if sweep.grid else {}),
            "notes": protocol_notes(kind, c, sweep),
        },
        "command": s.command,
    }


def _train(study: Study, sweep: Sweep, run_dir: Path):
    """The runner's train(arm, seed, out, resume): the kind's stage for each arm, with the value its validation
    grid picked (the grid runs first)."""
    from slimlm.stages.distill import distill
    from slimlm.stages.finetune import finetune

    stage = finetune if study.stage == "finetune" else distill
    picked = None
    if study.pick is not None and sweep.grid:
        grid, key, applies_to = study.pick
        picked = _picked(run_dir, grid, key, sweep.grid, stage, sweep.base, sweep.arms, applies_to)
    return _arm(stage, sweep.base, run_dir, picked)


def _check_arms(stage: str, base: dict, distill_base: dict, arms: list[dict]) -> None:
    """Every run's settings validated before the folder is claimed or anything is loaded, so a bad value is a
    one-line error now rather than after the teacher was measured (and never a spec that cannot continue)."""
    checks = [(DistillSettings, distill_base)] if stage == "finetune" else []
    settings_type = FinetuneSettings if stage == "finetune" else DistillSettings
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


def _arm(stage, base: dict, run_dir: Path, picked: dict | None = None):
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
    each group then applies to the arms `applies_to(arm, arms)` names."""
    by_name = {a["name"]: a for a in arms}

    def train(group, value, out, resume):
        settings = {k: in_run(v, run_dir) for k, v in by_name[group]["settings"].items()}
        stage(out=str(out), resume=resume, **{**base, **settings, key: value, "seed": 0})

    chosen = pick(run_dir, grid, candidates, train)
    applied = {n: v for g, v in chosen.items() for n in applies_to(by_name[g], arms)}
    return {"grid": grid, "key": key, "values": applied}


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
