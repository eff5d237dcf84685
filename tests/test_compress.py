"""The prune and quantize stages end to end on a tiny model: output format, table, loading back."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimlm.errors import SlimlmError
from slimlm.sources import load_model
from slimlm.stages.prune import prune
from slimlm.stages.quantize import quantize

FAST = dict(block_size=32, eval_tokens=512, repeats=1)


def test_structured_prune_stage_writes_a_smaller_loadable_model(tiny_teacher, text_dir, capsys):
    out = prune(
        str(tiny_teacher),
        data=str(text_dir),
        out="pruned",
        method="structured",
        sparsity=0.5,
        kv_groups_removed=1,
        calibration_blocks=4,
        **FAST,
    )
    table = capsys.readouterr().out
    assert "before" in table and "after" in table and "perplexity" in table
    record = json.loads((out / "slimlm.json").read_text())
    assert record["metrics"]["after"]["parameters"] < record["metrics"]["before"]["parameters"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == 32 and model.config.num_key_value_heads == 1


def test_wanda_prune_stage_reports_sparsity(tiny_teacher, text_dir, capsys):
    out = prune(
        str(tiny_teacher), data=str(text_dir), out="wanda", method="wanda", sparsity=0.5, calibration_blocks=4, **FAST
    )
    assert "sparsity achieved" in capsys.readouterr().out
    assert json.loads((out / "slimlm.json").read_text())["detail"]["sparsity_by_kind"]["all"] == pytest.approx(0.5)


def test_quantize_stage_saves_bits_and_loads_back(tiny_teacher, text_dir):
    out = quantize(str(tiny_teacher), data=str(text_dir), out="q4", bits=4, granularity="group", group_size=32, **FAST)
    record = json.loads((out / "slimlm.json").read_text())
    size_before, size_after = (
        record["metrics"]["before"]["size_on_disk_mb"],
        record["metrics"]["after"]["size_on_disk_mb"],
    )
    assert size_after < 0.3 * size_before  # packed 4-bit codes plus one fp32 scale and zero per 32 weights
    model, _, _ = load_model(out)  # slimlm's loader restores a runnable model
    source = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        assert (model(input_ids=ids).logits - source(input_ids=ids).logits).abs().max() < 1.0


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(bits=0), "--bits"),
        (dict(bits=9), "--bits"),
        (dict(bits=4, granularity="group", group_size=48), "does not divide"),
    ],
)
def test_quantize_bad_input(tiny_teacher, text_dir, kwargs, words):
    with pytest.raises(SlimlmError, match=words):
        quantize(str(tiny_teacher), data=str(text_dir), out="bad", **kwargs, **FAST)
    from pathlib import Path

    assert not Path("bad").exists() and not Path("bad.partial").exists()


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(sparsity=1.0), "--sparsity"),
        (dict(sparsity=-0.1), "--sparsity"),
        (dict(method="structured", sparsity=0.5, kv_groups_removed=2), "key/value groups"),
        (dict(method="random"), "--method"),
    ],
)
def test_prune_bad_input(tiny_teacher, text_dir, kwargs, words):
    with pytest.raises(SlimlmError, match=words):
        prune(str(tiny_teacher), data=str(text_dir), out="bad", calibration_blocks=2, **kwargs, **FAST)
    from pathlib import Path

    assert not Path("bad").exists() and not Path("bad.partial").exists()


def test_cli_quantize_and_prune(tiny_teacher, text_dir, capsys):
    from slimlm.cli import main

    assert (
        main(
            [
                "quantize",
                str(tiny_teacher),
                "--data",
                str(text_dir),
                "--bits",
                "8",
                "--eval-tokens",
                "256",
                "--out",
                "q8",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prune",
                str(tiny_teacher),
                "--calibration",
                str(text_dir),
                "--method",
                "nm",
                "--eval-tokens",
                "256",
                "--out",
                "nm",
            ]
        )
        == 0
    )
    assert "after" in capsys.readouterr().out
    assert main(["quantize", str(tiny_teacher), "--data", str(text_dir), "--bits", "9", "--out", "q9"]) == 2
    assert "--bits" in capsys.readouterr().err


def test_int8_dynamic_runtime_is_recorded_and_used_at_load(tiny_teacher, text_dir):
    out = quantize(str(tiny_teacher), data=str(text_dir), out="q8fast", bits=8, runtime="int8-dynamic", **FAST)
    assert json.loads((out / "slimlm.json").read_text())["settings"]["runtime"] == "int8-dynamic"
    model, _, _ = load_model(out)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    assert any(isinstance(m, DynamicInt8Linear) for m in model.modules())
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    source = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        assert (model(input_ids=ids).logits - source(input_ids=ids).logits).abs().max() < 1.0


def test_unknown_runtime(tiny_teacher, text_dir):
    with pytest.raises(SlimlmError, match="--runtime"):
        quantize(str(tiny_teacher), data=str(text_dir), out="bad", runtime="gpu-magic", **FAST)


def test_int8_runtime_keeps_the_parameter_count(tiny_teacher):
    from slimlm.eval.metrics import model_size
    from slimlm.methods.quantization import apply_runtime

    model = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    assert model_size(apply_runtime(model, "int8-dynamic"))["parameters"] == model_size(model)["parameters"]


def test_structured_prune_with_recovery_distillation(tiny_teacher, text_dir):
    out = prune(
        str(tiny_teacher),
        data=str(text_dir),
        out="recovered",
        method="structured",
        sparsity=0.5,
        calibration_blocks=4,
        recover_tokens=512,
        **FAST,
    )
    record = json.loads((out / "slimlm.json").read_text())
    assert record["detail"]["recovery"]["tokens"] == 512
    assert AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == 32
    assert not (out / "recovered").exists() and not list(out.parent.glob("recovered.partial*"))


def test_recovery_refused_for_unstructured(tiny_teacher, text_dir):
    with pytest.raises(SlimlmError, match="--method structured"):
        prune(str(tiny_teacher), data=str(text_dir), out="bad", method="magnitude", recover_tokens=100, **FAST)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(method="nm", nm="2-4"), "N:M"),
        (dict(method="nm", nm="4:2"), "0 < N < M"),
        (dict(method="structured", recover_tokens=-1), "--recover-tokens"),
    ],
)
def test_prune_bad_pattern_and_budget(tiny_teacher, text_dir, kwargs, words):
    with pytest.raises(SlimlmError, match=words):
        prune(str(tiny_teacher), data=str(text_dir), out="bad", calibration_blocks=2, **kwargs, **FAST)
    from pathlib import Path

    assert not Path("bad").exists() and not Path("bad.partial").exists()


def test_group_granularity_needs_a_group_size(tiny_teacher, text_dir):
    with pytest.raises(SlimlmError, match="--group-size"):
        quantize(str(tiny_teacher), data=str(text_dir), out="bad", bits=4, granularity="group", **FAST)
