"""Precision is decided once from the hardware (precision.py) and every stage computes in what was decided.

The capability probe (`slimlm.precision.native_bf16`) is replaced here, so the decision for a CPU with and
without native bf16 is checked on whatever CPU runs the tests; a global forward hook then records, for
every Linear layer that runs, whether bf16 autocast was on, so a stage that autocasts on its own (or
ignores the decision) fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimlm
from slimlm import precision
from slimlm.cli import main
from slimlm.errors import SlimlmError
from slimlm.settings import DistillSettings, EvalSettings, FinetuneSettings

FAST = dict(
    block_size=32,
    batch_size=4,
    learning_rate=3e-3,
    logging_steps=1,
    calibration_blocks=2,
    eval_tokens=128,
    eval_window=32,
    max_steps=2,
)


@pytest.fixture
def probe(monkeypatch):
    """probe(True) pretends the CPU runs bf16 natively, probe(False) that it does not (AVX2 only)."""
    monkeypatch.setattr(precision, "_announced", set())  # each test sees the decision printed once

    def set_native(native: bool):
        reason = "test probe: native bf16" if native else "test probe: no native bf16 (AVX2)"
        monkeypatch.setattr(precision, "native_bf16", lambda device_type: (native, reason))

    return set_native


@pytest.fixture
def autocast_seen():
    """The set of autocast states (True/False) under which any Linear layer ran during the test."""
    seen = set()

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear):
            seen.add(torch.is_autocast_enabled("cpu"))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield seen
    handle.remove()


@pytest.mark.parametrize(
    "requested,native,dtype",
    [
        ("auto", True, "bf16"),
        ("auto", False, "fp32"),
        ("fp32", True, "fp32"),
        ("fp32", False, "fp32"),
        ("bf16", True, "bf16"),
        ("bf16", False, "bf16"),
    ],
)
def test_decision(probe, requested, native, dtype):
    probe(native)
    decision = precision.resolve(requested, "cpu")
    assert decision.dtype == dtype and decision.requested == requested and decision.device == "cpu"
    assert "test probe" in decision.reason  # the reason names what the probe said
    if requested == "bf16" and not native:
        assert "although" in decision.reason  # a forced slow choice says so


def test_the_real_probe_answers_for_this_cpu():
    native, reason = precision.native_bf16("cpu")
    assert isinstance(native, bool) and torch.backends.cpu.get_cpu_capability() in reason
    kind = precision.cpu_kind()
    assert kind["capability"] and kind["native_bf16"] == native and kind["model"]


def test_autocast_follows_the_decision(probe):
    probe(False)
    with precision.autocast(precision.resolve("auto", "cpu")):
        assert not torch.is_autocast_enabled("cpu")
    probe(True)
    with precision.autocast(precision.resolve("auto", "cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with precision.autocast(None):
        assert not torch.is_autocast_enabled("cpu")


def test_eval_takes_dtype_not_the_training_precision(capsys):
    """One meaning per flag: eval casts the weights (--dtype); --precision (autocast) is refused with the fix."""
    from slimlm.cli import main

    assert main(["eval", "m", "--precision", "bf16"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dtype" in err[0] and "autocast" in err[0]
    with pytest.raises(SlimlmError, match="give dtype="):
        slimlm.evaluate(["m"], precision="bf16")


def test_work_on_another_device_is_decided_again_out_loud(probe, capsys):
    """A run decided for CUDA that computes on the CPU (e.g. a CPU-held teacher) decides again for the CPU and
    says so once, instead of silently computing in another precision than the one printed."""
    probe(False)
    cuda_run = precision.Precision("auto", "bf16", "cuda", "test: a CUDA device with bf16")
    for _ in range(2):
        with precision.autocast(cuda_run, "cpu"):
            assert not torch.is_autocast_enabled("cpu")
    said = capsys.readouterr().err
    assert said.count("another device than the run's") == 1 and "precision fp32" in said


def test_bad_precision_and_legacy_bf16_key():
    with pytest.raises(SlimlmError, match="--precision must be one of auto, fp32, bf16"):
        DistillSettings.from_dict({"precision": "fp16", "student": "s"}).validate()
    assert DistillSettings.from_dict({"bf16": False, "student": "s"}).validate().precision == "fp32"
    assert FinetuneSettings.from_dict({"bf16": True, "model": "m"}).validate().precision == "bf16"
    assert DistillSettings.from_dict({"student": "s"}).validate().precision == "auto"
    with pytest.raises(SlimlmError, match="contradicts"):
        DistillSettings.from_dict({"bf16": False, "precision": "bf16", "student": "s"})


def test_no_bf16_is_an_alias_of_precision_fp32():
    from slimlm.cli import build_parser

    args = build_parser().parse_args(["distill", "--no-bf16", "--out", "x"])
    assert args.precision == "fp32"
    args = build_parser().parse_args(["eval", "m", "--bf16"])
    assert args.dtype == "bf16"
    # a flag not typed stays None (so a recipe is not overridden); eval's fp32 default lives in EvalSettings
    assert build_parser().parse_args(["eval", "m"]).dtype is None and EvalSettings().dtype == "fp32"
    assert build_parser().parse_args(["student", "--layers", "2", "--out", "x"]).precision is None


@pytest.mark.parametrize("native", [False, True])
def test_distill_honours_the_decision(probe, autocast_seen, tiny_teacher, text_dir, native, capsys):
    probe(native)
    slimlm.distill(teacher=str(tiny_teacher), keep_layers="0,3", data=str(text_dir), out="d", **FAST)
    assert autocast_seen == {native}  # teacher, student, validation: all in the decided precision
    record = json.loads(Path("d/slimlm.json").read_text())
    assert record["precision"]["dtype"] == ("bf16" if native else "fp32")
    assert record["precision"]["reason"].startswith("test probe")
    assert record["settings"]["precision"] == "auto" and record["cpu"]["capability"]
    assert f"precision {'bf16' if native else 'fp32'}" in capsys.readouterr().err  # printed once


@pytest.mark.parametrize("native", [False, True])
def test_teacher_cache_honours_the_decision(
    probe, autocast_seen, tiny_teacher, text_dir, native, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    probe(native)
    slimlm.distill(
        teacher=str(tiny_teacher),
        keep_layers="0,3",
        data=str(text_dir),
        out="d",
        teacher_cache=True,
        top_k=8,
        feature_layers="4:2",
        feature_weight=0.5,
        **FAST,
    )
    assert autocast_seen == {native}


@pytest.mark.parametrize("native", [False, True])
def test_student_and_finetune_honour_the_decision(probe, autocast_seen, tiny_teacher, text_dir, native):
    probe(native)
    slimlm.make_student(
        teacher=str(tiny_teacher), data=str(text_dir), out="s", layers=2, block_size=32, calibration_blocks=2
    )
    assert autocast_seen == {native}  # layer selection, calibration and test perplexity
    record = json.loads(Path("s/slimlm.json").read_text())
    assert record["precision"]["dtype"] == ("bf16" if native else "fp32")
    autocast_seen.clear()
    slimlm.finetune(
        model="s",
        teacher=str(tiny_teacher),
        data=str(text_dir),
        out="f",
        method="lora",
        rank=2,
        block_size=32,
        batch_size=4,
        max_steps=2,
        logging_steps=1,
        eval_tokens=128,
        eval_window=32,
    )
    assert autocast_seen == {native}
    assert json.loads(Path("f/slimlm.json").read_text())["precision"]["dtype"] == ("bf16" if native else "fp32")


def test_explicit_fp32_wins_over_a_native_cpu(probe, autocast_seen, tiny_teacher, text_dir):
    probe(True)
    assert (
        main(
            [
                "distill",
                "--teacher",
                str(tiny_teacher),
                "--keep-layers",
                "0,3",
                "--data",
                str(text_dir),
                "--out",
                "d",
                "--max-steps",
                "1",
                "--block-size",
                "32",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    assert autocast_seen == {False}
    assert json.loads(Path("d/slimlm.json").read_text())["precision"]["requested"] == "fp32"


@pytest.mark.parametrize("native", [False, True])
def test_eval_auto_casts_only_where_native(probe, tiny_teacher, text_dir, native):
    probe(native)
    report = slimlm.evaluate([str(tiny_teacher)], data=str(text_dir), window=32, new_tokens=4, repeats=1, dtype="auto")
    assert report["protocol"]["dtype"] == ("bfloat16" if native else "float32")
    assert report["protocol"]["weights_dtype"]["dtype"] == ("bf16" if native else "fp32")
    # the default protocol is fp32 whatever the CPU
    assert (
        slimlm.evaluate([str(tiny_teacher)], data=str(text_dir), window=32, new_tokens=4, repeats=1)["protocol"][
            "dtype"
        ]
        == "float32"
    )


class FakeClock:
    """time.monotonic for the time budget: every reading is `step` seconds after the one before."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def monotonic(self):
        self.now += self.step
        return self.now


def test_max_time_shortens_the_plan_and_stops_cleanly(tiny_teacher, text_dir, monkeypatch):
    """With a step taking 10 s on the (fake) clock and a 75 s budget, 3 steps are timed and the plan of 20
    steps is cut to the ones that fit; the cosine schedule is redrawn to end there and the result records it."""
    from slimlm.training import budget as trainer

    monkeypatch.setattr(trainer, "time", FakeClock(10.0))
    slimlm.distill(
        teacher=str(tiny_teacher),
        keep_layers="0,3",
        data=str(text_dir),
        out="d",
        precision="fp32",
        **{**FAST, "max_steps": 20, "max_time": "75s", "warmup_ratio": 0.0},
    )
    record = json.loads(Path("d/slimlm.json").read_text())
    training = record["training"]
    budget = training["time_budget"]
    # clock readings: train begin t=10, step k ends at t=10+10k; after step 3, 45 s are left -> 4 more steps
    assert budget["planned_steps"] == 20 and budget["fitted_steps"] == 7 and budget["stopped_by_time_budget"]
    assert training["steps"] == 7 and training["planned_steps"] == 20
    assert training["tokens"] == 7 * 4 * 32 and budget["trained_tokens"] == training["tokens"]
    rates = [h["learning_rate"] for h in training["log"] if "learning_rate" in h]
    assert rates[-1] < 0.1 * rates[0]  # the schedule decayed to (near) its end at the shortened plan
    assert Path("d/model.safetensors").is_file()


def test_max_time_is_checked_up_front():
    for bad in ("soon", "-5m", "0", "nan"):
        with pytest.raises(SlimlmError, match="--max-time"):
            DistillSettings.from_dict({"student": "s", "max_time": bad}).validate()
    from slimlm.settings import parse_duration

    assert parse_duration("15m") == 900 and parse_duration("1h30m") == 5400 and parse_duration(90) == 90


def test_max_time_survives_a_resume(tiny_teacher, text_dir, monkeypatch):
    """Interrupted after the plan was shortened, a resumed run keeps the shortened plan and the time spent."""
    from slimlm.training import budget as trainer

    monkeypatch.setattr(trainer, "time", FakeClock(10.0))
    settings = dict(
        teacher=str(tiny_teacher),
        keep_layers="0,3",
        data=str(text_dir),
        out="d",
        precision="fp32",
        **{**FAST, "max_steps": 20, "max_time": "75s", "save_steps": 1},
    )
    slimlm.distill(stop_after=5, **settings)
    assert not Path("d").exists() and Path("d.partial/checkpoints/checkpoint-5").is_dir()
    slimlm.distill(resume=True, **settings)
    budget = json.loads(Path("d/slimlm.json").read_text())["training"]["time_budget"]
    assert budget["fitted_steps"] == 7 and budget["trained_steps"] == 7 and budget["stopped_by_time_budget"]
    assert budget["training_seconds"] > 60  # the first attempt's time counts


@pytest.mark.parametrize("native", [False, True])
def test_prune_calibration_honours_the_decision(probe, autocast_seen, tiny_teacher, text_dir, native):
    probe(native)
    slimlm.prune(
        str(tiny_teacher),
        out="p",
        data=str(text_dir),
        method="wanda",
        sparsity=0.5,
        block_size=32,
        calibration_blocks=2,
        eval_tokens=256,
        repeats=1,
    )
    # calibration passes in the decided precision; the before/after table always in fp32
    assert (True in autocast_seen) == native and False in autocast_seen
    detail = json.loads(Path("p/slimlm.json").read_text())["detail"]
    assert detail["precision"]["dtype"] == ("bf16" if native else "fp32")


def test_pipeline_precision_reaches_every_computing_stage(tiny_teacher, text_dir):
    from slimlm.experiments.pipeline import _stages

    arms = _stages(
        [
            {"student": {"keep_layers": "0,3"}},
            {"distill": {"max_steps": 1}},
            {"finetune": {"max_steps": 1, "precision": "bf16"}},
            {"prune": {"sparsity": 0.2}},
            {"quantize": {"bits": 8}},
        ],
        "r.yaml",
        str(tiny_teacher),
        str(text_dir),
        "fp32",
    )
    assert [a["settings"].get("precision") for a in arms] == ["fp32", "fp32", "bf16", "fp32", None]


class SettableClock:
    """time.monotonic that reads whatever the test set last."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now


def _run_budget(monkeypatch, seconds: float, planned: int, step_time):
    """Drive a TimeBudget through a plan the way the Trainer does, with step k taking step_time(k) seconds on a
    fake clock; returns (steps trained, the budget, the schedule's last learning rate over its peak)."""
    import torch
    from transformers import TrainerControl, TrainerState
    from transformers.optimization import get_cosine_schedule_with_warmup

    from slimlm.training import budget as budgets

    clock = SettableClock()
    monkeypatch.setattr(budgets, "time", clock)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=planned // 20, num_training_steps=planned)
    state = TrainerState()
    state.max_steps, state.global_step = planned, 0
    callback = budgets.TimeBudget(seconds)
    callback.on_train_begin(None, state, TrainerControl(), lr_scheduler=schedule)
    while state.global_step < planned:
        clock.now += step_time(state.global_step)
        optimizer.step()
        schedule.step()
        state.global_step += 1
        if callback.on_step_end(None, state, TrainerControl(), lr_scheduler=schedule).should_training_stop:
            break
    return state.global_step, callback, schedule.get_last_lr()[0]


def test_max_time_lengthens_a_plan_cut_by_slow_first_steps(monkeypatch):
    """The case an AVX2 CPU showed: the first steps take 9 s, the rest 7 s. A plan fitted once, on the first
    steps, would leave a sixth of the budget unused; fitted as it goes, the run spends >= 95% of the budget and
    its schedule still ends at the last step trained."""
    steps, callback, last_lr = _run_budget(monkeypatch, 840, 196, lambda k: 9.0 if k < 10 else 7.0)
    first_fit = int(840 / 9.0)
    assert steps > first_fit + 10, (steps, first_fit)  # lengthened past what the first steps promised
    assert callback.fitted_steps == steps and callback.refits > 1
    assert callback.record(TrainerStateAt(steps), 1024)["budget_used"] >= 0.95
    assert last_lr < 0.02  # the cosine schedule decayed to its end at the fitted plan, not cut half way


def test_max_time_shortens_a_plan_whose_steps_slow_down(monkeypatch):
    """The other direction: steps that get slower (a shared core) shorten the plan again, and the run still
    stops inside the budget with the schedule ended."""
    steps, callback, last_lr = _run_budget(monkeypatch, 600, 200, lambda k: 3.0 if k < 60 else 6.0)
    assert steps < int(600 / 3.0)
    assert callback.record(TrainerStateAt(steps), 1024)["training_seconds"] <= 600 + 6.0
    assert last_lr < 0.05


def test_max_time_never_plans_past_the_planned_tokens(monkeypatch):
    steps, callback, _ = _run_budget(monkeypatch, 840, 50, lambda k: 1.0)
    assert steps == 50 and not callback.stopped and callback.fitted_steps in (None, 50)


def TrainerStateAt(step: int):
    from transformers import TrainerState

    state = TrainerState()
    state.global_step = step
    return state


@pytest.mark.parametrize(
    "vendor,family,model,kind",
    [
        ("AuthenticAMD", 25, 1, "AMD Zen 3"),  # EPYC Milan: AVX2, no native bf16
        ("AuthenticAMD", 25, 17, "AMD Zen 4"),  # EPYC Genoa: AVX-512 with bf16
        ("AuthenticAMD", 25, 0x21, "AMD Zen 3"),  # Ryzen Vermeer
        ("AuthenticAMD", 25, 0x61, "AMD Zen 4"),  # Ryzen Raphael
        ("AuthenticAMD", 25, 0xA0, "AMD Zen 4"),  # EPYC Bergamo (Zen 4c)
        ("AuthenticAMD", 23, 0x31, "AMD Zen 2"),  # EPYC Rome
        ("GenuineIntel", 6, 143, "Intel Sapphire Rapids"),  # AMX
        ("GenuineIntel", 6, 1, None),
        ("HygonGenuine", 24, 1, None),
    ],
)
def test_cpu_kind_is_named_from_family_and_model(vendor, family, model, kind):
    """Reports name a CPU by its kind: "AMD EPYC" alone does not tell Zen 3 (AVX2) from Zen 4 (AVX-512 bf16)."""
    info = f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: X\n"
    assert precision.microarchitecture(info) == kind


def test_cpu_kind_without_family_and_model_is_unknown_and_describe_names_a_known_one(monkeypatch):
    assert precision.microarchitecture("garbage") is None
    monkeypatch.setattr(precision, "microarchitecture", lambda: "AMD Zen 4")
    assert "(AMD Zen 4)" in precision.describe_cpu() and precision.cpu_kind()["kind"] == "AMD Zen 4"
