"""The one cutter (methods/cutting.py): a model cut to kept channels computes what the original computes with the
removed channels silenced, on both paths (in place for structured pruning, a new model for width students), for
kept sets chosen here rather than by any importance rule, so a wrong row or column cannot hide behind a ranking."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimlm.errors import SlimlmError
from slimlm.methods.cutting import cut_layer, cut_parameter, unit_rows
from slimlm.methods.width import prune_width

VOCAB, HEADS, GROUPS, SIZE, INTER = 96, 6, 3, 8, 64  # 3 key/value groups of 2 query heads of 8 dimensions


def _model(arch: str):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=INTER,
        num_hidden_layers=3,
        num_attention_heads=HEADS,
        num_key_value_heads=GROUPS,
        head_dim=SIZE,
        max_position_embeddings=64,
    )
    config = {
        "llama": lambda: LlamaConfig(**common, attention_bias=True, tie_word_embeddings=True),
        "qwen3": lambda: Qwen3Config(**common, tie_word_embeddings=False),
        "gemma3": lambda: Gemma3TextConfig(**common, sliding_window=8, query_pre_attn_scalar=8),
    }[arch]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _logits(model, ids=None):
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1)) if ids is None else ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def _silenced(model, kept_mlp: list, kept_heads: list):
    """The original model with every MLP channel and query head not kept writing nothing (o_proj, down_proj
    columns zeroed): what the cut model must compute."""
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        for layer, mlp, heads in zip(silenced.model.layers, kept_mlp, kept_heads):
            layer.mlp.down_proj.weight[:, [c for c in range(INTER) if c not in mlp]] = 0
            dropped = torch.tensor([h for h in range(HEADS) if h not in heads], dtype=torch.long)
            layer.self_attn.o_proj.weight[:, unit_rows(dropped, SIZE)] = 0
    return silenced


# a different kept set in every layer, not leading slices: channels out of the middle, group 1 dropped, ...
KEPT_MLP = [[0, 3, 4, 10, 17, 40, 41, 63], list(range(1, 64, 2)), [5, 6, 7, 8]]
KEPT_GROUPS = [[0, 2], [1], [1, 2]]


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_cut_in_place_computes_the_original_with_the_removed_channels_silenced(arch):
    model = _model(arch)
    pruned = copy.deepcopy(model)
    kept_heads = []
    for layer, old, mlp, groups in zip(pruned.model.layers, model.model.layers, KEPT_MLP, KEPT_GROUPS):
        groups = torch.tensor(groups)
        heads = unit_rows(groups, HEADS // GROUPS)
        kept_heads.append(heads.tolist())
        cut_layer(layer, {"mlp": torch.tensor(mlp), "q": unit_rows(heads, SIZE), "kv": unit_rows(groups, SIZE)})
        assert torch.equal(layer.mlp.gate_proj.weight, old.mlp.gate_proj.weight[mlp])
        assert torch.equal(layer.mlp.down_proj.weight, old.mlp.down_proj.weight[:, mlp])
        assert torch.equal(layer.self_attn.k_proj.weight, old.self_attn.k_proj.weight[unit_rows(groups, SIZE)])
        assert torch.equal(layer.self_attn.o_proj.weight, old.self_attn.o_proj.weight[:, unit_rows(heads, SIZE)])
        if arch == "llama":  # biases follow the rows; o_proj's (over the hidden size) stays whole
            assert torch.equal(layer.self_attn.q_proj.bias, old.self_attn.q_proj.bias[unit_rows(heads, SIZE)])
            assert torch.equal(layer.self_attn.o_proj.bias, old.self_attn.o_proj.bias)
    torch.testing.assert_close(_logits(pruned), _logits(_silenced(model, KEPT_MLP, kept_heads)), rtol=1e-5, atol=1e-5)


def _scores(n: int, kept) -> torch.Tensor:
    """Scores that rank exactly `kept` first, in an order unlike their indices'."""
    scores = torch.zeros(n)
    scores[torch.tensor(kept)] = torch.arange(1, len(kept) + 1).float()
    return scores


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_a_width_student_computes_the_original_with_the_removed_channels_silenced(arch):
    """Whole groups and single heads within the kept groups go: layer 0 keeps heads 1 and 4 (of groups 0 and 2)."""
    model = _model(arch)
    kept_mlp = [c[:4] for c in KEPT_MLP]
    kept_heads = [[1, 4], [2, 5], [3, 5]]  # one query head in each of two kept groups
    importance = {
        "hidden": torch.ones(48),  # all kept: a narrower hidden size is not a silenced one (the norms see it)
        "mlp": [_scores(INTER, c) for c in kept_mlp],
        "heads": [_scores(HEADS, h) for h in kept_heads],
    }
    student = prune_width(
        model, importance, {"intermediate_size": 4, "num_key_value_heads": 2, "num_attention_heads": 2}
    )
    for layer, old, mlp, heads in zip(student.model.layers, model.model.layers, kept_mlp, kept_heads):
        assert torch.equal(layer.mlp.up_proj.weight, old.mlp.up_proj.weight[mlp])
        assert torch.equal(
            layer.self_attn.q_proj.weight, old.self_attn.q_proj.weight[unit_rows(torch.tensor(heads), SIZE)]
        )
    torch.testing.assert_close(_logits(student), _logits(_silenced(model, kept_mlp, kept_heads)), rtol=1e-5, atol=1e-5)


def test_cut_parameter_follows_the_table_and_names_what_it_cannot_cut():
    model = _model("qwen3")
    hidden = torch.tensor([0, 5, 47])
    layers = [{"mlp": torch.tensor([2, 3]), "q": unit_rows(torch.tensor([1]), SIZE), "kv": None}] * 3
    state = model.state_dict()

    def cut(name, hidden=hidden):
        return cut_parameter(f"model.{name}", state[f"model.{name}"], hidden, layers, model.config)

    def old(name):
        return state[f"model.{name}"]

    assert torch.equal(cut("layers.1.mlp.down_proj.weight"), old("layers.1.mlp.down_proj.weight")[hidden][:, [2, 3]])
    assert torch.equal(
        cut("layers.1.self_attn.q_proj.weight"), old("layers.1.self_attn.q_proj.weight")[8:16][:, hidden]
    )
    assert torch.equal(cut("layers.1.self_attn.k_proj.weight"), old("layers.1.self_attn.k_proj.weight")[:, hidden])
    assert torch.equal(cut("layers.1.self_attn.q_norm.weight"), old("layers.1.self_attn.q_norm.weight"))
    assert torch.equal(cut("layers.1.input_layernorm.weight"), old("layers.1.input_layernorm.weight")[hidden])
    assert torch.equal(cut("embed_tokens.weight"), old("embed_tokens.weight")[:, hidden])
    assert torch.equal(cut("norm.weight", hidden=None), old("norm.weight"))
    with pytest.raises(SlimlmError, match="does not know how to cut model.layers.0.mlp.experts.weight"):
        cut_parameter("model.layers.0.mlp.experts.weight", torch.zeros(3, 3), hidden, layers, model.config)


def test_unit_rows_are_whole_units_in_the_order_given():
    assert unit_rows(torch.tensor([2, 0]), 3).tolist() == [6, 7, 8, 0, 1, 2]
