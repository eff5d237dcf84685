"""Width pruning by activation importance, shapes at a parameter budget, and `slimlm student --target-params`.

Three tiny architectures: Llama (tied head), Qwen 3 (q/k norms, per-layer layer_types) and Gemma 3 (embeddings
scaled by sqrt(hidden), (1 + w) norms, pre/post feed-forward norms, sliding-window layer_types)."""

from __future__ import annotations

import json

import pytest
import torch
from tests.test_errors import assert_one_line_error, run_cli
from transformers import AutoModelForCausalLM

import slimlm
from slimlm.errors import SlimlmError
from slimlm.methods.budget import candidate_shapes, parameter_count
from slimlm.methods.importance import activation_importance
from slimlm.methods.width import prune_width

VOCAB = 96


def _config(arch: str, layers: int = 4):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=8, tie_word_embeddings=False)
    return Gemma3TextConfig(**common, head_dim=8, sliding_window=8, query_pre_attn_scalar=8)


def _model(arch: str, layers: int = 4):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch, layers)).eval()
    with torch.no_grad():  # random, but not the near-identity norms and zero biases of a fresh init
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _blocks(n: int = 4, length: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(1))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


ARCHS = ["llama", "qwen3", "gemma3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_nothing_removed_is_the_same_network(arch):
    model, ids = _model(arch), _blocks()
    pruned = prune_width(model, activation_importance(model, ids), {})
    torch.testing.assert_close(_logits(pruned, ids), _logits(model, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "widths",
    [
        {"intermediate_size": 40},
        {"hidden_size": 24},
        {"num_attention_heads": 2},  # one query head per group, both groups kept
        {"num_key_value_heads": 1, "num_attention_heads": 2},  # one whole group removed
        {"hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 2},
    ],
)
def test_a_narrower_model_loads_and_counts_what_its_config_says(arch, widths, tmp_path):
    model, ids = _model(arch), _blocks()
    pruned = prune_width(model, activation_importance(model, ids), widths)
    for key, value in widths.items():
        assert getattr(pruned.config, key) == value
    pruned.save_pretrained(tmp_path, safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert sum(p.numel() for p in loaded.parameters()) == parameter_count(loaded.config)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(_logits(loaded, ids), _logits(pruned, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_dead_mlp_channels_and_a_dead_group_are_the_ones_removed(arch):
    """Channels that never carry anything have importance 0: removing them must leave the logits unchanged (a
    leading slice or any other ranking would cut live channels and change them)."""
    model, ids = _model(arch), _blocks()
    dead = torch.tensor([1, 5, 6, 30, 41, 42, 60, 63])  # 8 of 64 MLP channels, not at the end
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[dead] = 0
            layer.mlp.gate_proj.weight[dead] = 0
            layer.self_attn.v_proj.weight[:8] = 0  # key/value group 0 outputs nothing
    importance = activation_importance(model, ids)
    assert all(float(s[dead].max()) == 0 and float(s.min()) == 0 for s in importance["mlp"])
    pruned = prune_width(
        model, importance, {"intermediate_size": 56, "num_key_value_heads": 1, "num_attention_heads": 2}
    )
    torch.testing.assert_close(_logits(pruned, ids), _logits(model, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_dead_hidden_channels_rank_last_and_the_rest_keep_their_weights(arch):
    model, ids = _model(arch), _blocks()
    dead = [3, 9, 17, 30]  # 4 of 32: the hidden size stays a multiple of the 4 heads (Llama, Gemma 3 require it)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, dead] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[dead] = 0
            layer.mlp.down_proj.weight[dead] = 0
    importance = activation_importance(model, ids)
    assert set(importance["hidden"].argsort()[:4].tolist()) == set(dead)
    pruned = prune_width(model, importance, {"hidden_size": 28})
    kept = [c for c in range(32) if c not in dead]
    layer, old = pruned.model.layers[1], model.model.layers[1]
    torch.testing.assert_close(layer.mlp.up_proj.weight, old.mlp.up_proj.weight[:, kept])
    torch.testing.assert_close(layer.self_attn.o_proj.weight, old.self_attn.o_proj.weight[kept])
    torch.testing.assert_close(layer.input_layernorm.weight, old.input_layernorm.weight[kept])
    # embeddings come out the same (Gemma: its sqrt(hidden) scale is kept), and the head reads them the same
    torch.testing.assert_close(pruned.model.embed_tokens(ids), model.model.embed_tokens(ids)[..., kept])
    offset = 1.0 if arch == "gemma3" else 0.0
    gain = lambda m, channels: (m.model.norm.weight[channels] + offset) * m.lm_head.weight[:, channels]  # noqa: E731
    torch.testing.assert_close(gain(pruned, slice(None)), gain(model, kept), rtol=1e-5, atol=1e-6)


def test_width_requests_that_cannot_be_met_say_why():
    model, ids = _model("llama"), _blocks(2)
    importance = activation_importance(model, ids)
    for widths, words in [
        ({"head_dim": 4}, "rotary"),
        ({"hidden_size": 64}, "wider than the teacher's 32"),
        ({"num_attention_heads": 3}, "multiple of num_key_value_heads"),
        ({"vocab_size": 10}, "allowed"),
        ({"intermediate_size": 0}, "positive integer"),
        ({"hidden_size": 30}, "multiple of the 4 attention heads"),
    ]:
        with pytest.raises(SlimlmError, match=words):
            prune_width(model, importance, widths)


@pytest.mark.parametrize("axes", ["depth", "width", "both"])
def test_candidate_shapes_sit_at_the_budget(axes):
    config = _config("llama", layers=8)
    total = parameter_count(config)
    shapes = candidate_shapes(config, 0.6, axes)
    assert shapes and all(abs(s["fraction"] - 0.6) < 0.08 for s in shapes)
    assert all(s["params"] == round(s["fraction"] * total) for s in shapes)
    if axes == "depth":
        assert [s["hidden_size"] for s in shapes] == [32] and shapes[0]["layers"] < 8
    if axes == "width":
        assert all(s["layers"] == 8 for s in shapes) and len(shapes) > 1
    if axes == "both":
        assert {s["layers"] for s in shapes} >= {8, shapes[0]["layers"]} and len({s["layers"] for s in shapes}) > 2
    with pytest.raises(SlimlmError, match="target-params"):
        candidate_shapes(config, 1.2, axes)


def test_width_candidates_of_the_built_in_teachers_shape_are_configs_transformers_saves(tmp_path):
    """SmolLM2-135M has 9 heads of 64 over a hidden size of 576: a hidden size that is a multiple of 64 but
    not of 9 (512) is refused by transformers' config validation when the student is saved."""
    from transformers import LlamaConfig

    from slimlm.methods.budget import config_for

    teacher = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        tie_word_embeddings=True,
    )
    for axes in ("width", "both"):
        shapes = [s for s in candidate_shapes(teacher, 0.55, axes) if s["hidden_size"] != 576]
        assert shapes and all(s["hidden_size"] % 9 == 0 and s["hidden_size"] % 8 == 0 for s in shapes)
        for shape in shapes:
            config_for(teacher, {k: shape[k] for k in ("layers", "hidden_size", "intermediate_size")}).validate()


def test_student_target_params_tries_shapes_and_keeps_the_closest(tiny_teacher, text_dir, tmp_path):
    out = slimlm.make_student(
        teacher=str(tiny_teacher), data=str(text_dir), target_params=0.7, axes="both", out=str(tmp_path / "s")
    )
    record = json.loads((out / "slimlm.json").read_text())["student"]
    search = record["shape_search"]
    rows = search["candidates"]
    assert len(rows) > 2 and rows == sorted(rows, key=lambda r: r["kl"])
    assert search["chosen"] == rows[0]["name"] and {r["name"].split(":")[0].split(",")[0] for r in rows} >= {
        "depth",
        "width",
        "both",
    }
    model = AutoModelForCausalLM.from_pretrained(out)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    n = sum(p.numel() for p in model.parameters())
    assert n == rows[0]["params"] and abs(n / sum(p.numel() for p in teacher.parameters()) - 0.7) < 0.1
    assert record["shape"]["hidden_size"] == model.config.hidden_size
    assert record["shape"]["layers"] == model.config.num_hidden_layers == len(record["kept_layers"])


def test_bad_axes_from_python_or_a_recipe_is_refused(tiny_teacher, text_dir):
    with pytest.raises(SlimlmError, match="--axes"):
        slimlm.make_student(teacher=str(tiny_teacher), data=str(text_dir), target_params=0.5, axes="diagonal", out="o")


def test_student_config_narrows_by_importance(tiny_teacher, text_dir, tmp_path):
    out = slimlm.make_student(
        teacher=str(tiny_teacher),
        data=str(text_dir),
        keep_layers="0,3",
        student_config={"intermediate_size": 40, "hidden_size": 24},
        out=str(tmp_path / "s"),
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.config.hidden_size, model.config.intermediate_size, model.config.num_hidden_layers) == (24, 40, 2)
    assert json.loads((out / "slimlm.json").read_text())["student"]["width"]["widths"]["hidden_size"] == 24


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--target-params", "1.5"], ["--target-params", "(0, 1)"]),
        (["--target-params", "0.5", "--student-config", '{"hidden_size": 16}'], ["--student-config"]),
        (["--keep-layers", "0,1", "--student-config", '{"head_dim": 4}'], ["head_dim", "rotary"]),
        (["--keep-layers", "0,1", "--student-config", '{"hidden_size": 64}'], ["hidden_size=64", "wider"]),
    ],
)
def test_bad_shape_requests_are_one_line_errors(capsys, tiny_teacher, text_dir, flags, words):
    code, err = run_cli(capsys, "student", "--teacher", tiny_teacher, "--data", text_dir, *flags, "--out", "o")
    assert_one_line_error(code, err, *words)


def test_the_kl_proxy_is_the_same_with_the_teachers_outputs_kept():
    from slimlm.methods.layers import build_student
    from slimlm.methods.student import _teacher_log_probs, kl_to_teacher

    teacher, ids = _model("llama"), _blocks(6)
    student = build_student(teacher, [0, 3])
    kept = kl_to_teacher(teacher, student, ids, reference=_teacher_log_probs(teacher, ids))
    assert kept > 0 and kept == pytest.approx(kl_to_teacher(teacher, student, ids), rel=1e-6)
    assert kl_to_teacher(teacher, teacher, ids) == pytest.approx(0, abs=1e-6)
