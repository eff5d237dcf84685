"""Pruning: exact sparsity, N:M pattern, structured models that really shrink and still load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimlm.data.corpus import prepare_data
from slimlm.errors import SlimlmError
from slimlm.methods.pruning import (
    prunable_linears,
    prune_kv_groups,
    prune_mlp_channels,
    prune_nm,
    prune_unstructured,
)


@pytest.fixture()
def model(tiny_teacher):
    return AutoModelForCausalLM.from_pretrained(tiny_teacher)


@pytest.fixture()
def calibration(text_dir, tiny_tokenizer):
    return prepare_data(str(text_dir), tiny_tokenizer, 32).train[:4]


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_requested_sparsity_is_met_exactly(model, calibration, method, scope, sparsity):
    report = prune_unstructured(model, sparsity, method, scope, calibration)
    total = sum(m.weight.numel() for m in prunable_linears(model).values())
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_linears(model).values())
    if scope == "global":
        assert zeros == round(sparsity * total)
    else:
        for m in prunable_linears(model).values():
            per = m.weight.shape[1] if method == "wanda" else m.weight.numel()
            expected = round(sparsity * per) * (m.weight.shape[0] if method == "wanda" else 1)
            assert int((m.weight == 0).sum()) == expected
    assert report["all"] == pytest.approx(zeros / total)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_llama_parameters(cfg) -> int:
    """Parameter count of a Llama-shaped config (tied embeddings), used to check structured pruning."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = cfg.hidden_size * head_dim * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    mlp = 3 * cfg.hidden_size * cfg.intermediate_size
    per_layer = attn + mlp + 2 * cfg.hidden_size
    embed = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    return embed + cfg.num_hidden_layers * per_layer + cfg.hidden_size


def test_magnitude_removes_the_smallest_weights(model):
    before = {n: m.weight.clone() for n, m in prunable_linears(model).items()}
    prune_unstructured(model, 0.5, "magnitude")
    for name, m in prunable_linears(model).items():
        kept = before[name][m.weight != 0].abs()
        dropped = before[name][m.weight == 0].abs()
        assert kept.min() >= dropped.max()


def test_sparsity_zero_changes_nothing(model, calibration):
    ids = calibration[:2]
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        prune_unstructured(model, 0.0, "wanda", calibration=calibration)
        assert torch.equal(model(input_ids=ids).logits, ref)


def test_two_four_pattern(model, calibration):
    prune_nm(model, 2, 4, calibration)
    for m in prunable_linears(model).values():
        groups = (m.weight != 0).reshape(m.weight.shape[0], -1, 4).sum(-1)
        assert bool((groups <= 2).all())


def test_structured_pruning_shrinks_runs_and_loads(model, calibration, tmp_path):
    prune_mlp_channels(model, 0.5, calibration)
    prune_kv_groups(model, 1, calibration)
    cfg = model.config
    assert cfg.intermediate_size == 32 and cfg.num_key_value_heads == 1 and cfg.num_attention_heads == 2
    assert parameter_count(model) == expected_llama_parameters(cfg)
    with torch.no_grad():
        logits = model(input_ids=calibration[:2]).logits
        model.save_pretrained(tmp_path / "pruned")
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
        torch.testing.assert_close(loaded(input_ids=calibration[:2]).logits, logits)
        loaded.generate(calibration[:1, :8], max_new_tokens=4, do_sample=False)  # the KV cache works too
    assert parameter_count(loaded) == expected_llama_parameters(loaded.config)


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1])
def test_bad_sparsity(model, sparsity):
    with pytest.raises(SlimlmError, match="--sparsity"):
        prune_unstructured(model, sparsity)


def test_removing_too_many_heads(model, calibration):
    with pytest.raises(SlimlmError, match="key/value groups"):
        prune_kv_groups(model, 2, calibration)


def test_wanda_without_calibration_says_what_to_pass(tiny_teacher):
    """Wanda weighs |W| by input norms from calibration text: without it, the one-line error names the flag."""
    from slimlm.methods.pruning import prune_unstructured
    from slimlm.sources import load_model

    model, _, _ = load_model(tiny_teacher)
    with pytest.raises(SlimlmError, match="--method wanda needs calibration text"):
        prune_unstructured(model, 0.5, "wanda", calibration=None)
