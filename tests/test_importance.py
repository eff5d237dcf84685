"""Each importance rule of methods/importance.py against a plain reference, and what tells the two apart: a
rescaling that leaves the network's function unchanged leaves activation x weight norm unchanged too, while
activation importance (activations alone) follows it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from slimlm.methods.importance import activation_importance, activation_weight_norms, group_norms, top
from slimlm.methods.pruning import prune_kv_groups, prune_mlp_channels

VOCAB = 96


def _model():
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=3,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _blocks() -> torch.Tensor:
    return torch.randint(0, VOCAB, (6, 16), generator=torch.Generator().manual_seed(1))


def _inputs_and_outputs(model, blocks, modules: dict) -> dict:
    """name -> (blocks, T, C): each module's input (Linear) or output (norm), one block at a time."""
    seen = {name: [] for name in modules}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: seen[name].append(out if "norm" in name else args[0]))
        for name, m in modules.items()
    ]
    with torch.no_grad():
        for block in blocks:
            model(input_ids=block[None], use_cache=False)
    for h in hooks:
        h.remove()
    return {name: torch.cat(xs) for name, xs in seen.items()}


def test_activation_weight_norms_are_input_norm_times_column_norm():
    model, blocks = _model(), _blocks()
    layers = model.model.layers
    inputs = _inputs_and_outputs(model, blocks, {str(i): layer.mlp.down_proj for i, layer in enumerate(layers)})
    for i, score in enumerate(activation_weight_norms(model, blocks, "mlp.down_proj")):
        x = inputs[str(i)].reshape(-1, 64)  # every calibration token
        expected = x.norm(dim=0) * layers[i].mlp.down_proj.weight.norm(dim=0)
        torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-7)
    scores = activation_weight_norms(model, blocks, "self_attn.o_proj")
    assert [s.shape for s in scores] == [torch.Size([48])] * 2
    by_group = group_norms(scores[0], 3)
    torch.testing.assert_close(by_group, torch.stack([scores[0][g * 16 : (g + 1) * 16].norm() for g in range(3)]))
    assert top(by_group, 2).tolist() == sorted(by_group.argsort(descending=True)[:2].tolist())


def test_activation_importance_is_the_mean_over_the_sequence_then_the_l2_norm_over_blocks():
    model, blocks = _model(), _blocks()
    layer = model.model.layers[1]
    modules = {"down": layer.mlp.down_proj, "o": layer.self_attn.o_proj}
    modules |= {
        f"{i}.{n}norm": m
        for i, decoder in enumerate(model.model.layers)
        for n, m in (("in", decoder.input_layernorm), ("post", decoder.post_attention_layernorm))
    }
    modules["final norm"] = model.model.norm
    seen = _inputs_and_outputs(model, blocks, modules)
    importance = activation_importance(model, blocks)
    torch.testing.assert_close(importance["mlp"][1], seen["down"].abs().mean(1).norm(dim=0))
    heads = seen["o"].reshape(6, 16, 6, 8).norm(dim=-1).mean(1)  # (blocks, heads)
    torch.testing.assert_close(importance["heads"][1], heads.norm(dim=0))
    hidden = sum(seen[name].abs().mean(1).square().sum(0) for name in modules if "norm" in name).sqrt()
    torch.testing.assert_close(importance["hidden"], hidden)


def test_a_rescaling_that_keeps_the_function_moves_only_activation_importance():
    """up_proj row c times 1/4 and down_proj column c times 4: the same network. Channel c's activation shrinks
    fourfold (Minitron's score with it); its activation x weight norm stays."""
    model, blocks = _model(), _blocks()
    before = (
        activation_weight_norms(model, blocks, "mlp.down_proj")[0],
        activation_importance(model, blocks)["mlp"][0],
    )
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.up_proj.weight[7] /= 4
        mlp.down_proj.weight[:, 7] *= 4
    weighted, activation = (
        activation_weight_norms(model, blocks, "mlp.down_proj")[0],
        activation_importance(model, blocks)["mlp"][0],
    )
    torch.testing.assert_close(weighted, before[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(activation[7], before[1][7] / 4, rtol=1e-5, atol=1e-7)


def test_top_keeps_the_highest_in_their_original_order():
    scores = torch.tensor([0.5, 3.0, 0.0, 2.0, 0.0, 0.0])
    assert top(scores, 2).tolist() == [1, 3]
    assert top(scores, 4).tolist() == [0, 1, 2, 3]  # a tie kept by the lower index


@pytest.mark.parametrize("sparsity", [0.25, 0.75])
def test_structured_pruning_keeps_the_channels_and_groups_its_rule_ranks_first(sparsity):
    """prune_mlp_channels and prune_kv_groups rank by activation x weight norm; their weights are the kept rows."""
    model, blocks = _model(), _blocks()
    channels = [top(s, round((1 - sparsity) * 64)) for s in activation_weight_norms(model, blocks, "mlp.down_proj")]
    old = [(layer.mlp.up_proj.weight.clone(), layer.mlp.down_proj.weight.clone()) for layer in model.model.layers]
    prune_mlp_channels(model, sparsity, blocks)
    for layer, keep, (up, down) in zip(model.model.layers, channels, old):
        assert torch.equal(layer.mlp.up_proj.weight, up[keep]) and torch.equal(
            layer.mlp.down_proj.weight, down[:, keep]
        )
    groups = [top(group_norms(s, 3), 2) for s in activation_weight_norms(model, blocks, "self_attn.o_proj")]
    old = [layer.self_attn.v_proj.weight.clone() for layer in model.model.layers]
    prune_kv_groups(model, 1, blocks)
    for layer, keep, v in zip(model.model.layers, groups, old):
        assert torch.equal(layer.self_attn.v_proj.weight, torch.cat([v[g * 8 : (g + 1) * 8] for g in keep.tolist()]))
