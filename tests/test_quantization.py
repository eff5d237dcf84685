"""Min-max quantization: the paper's rule, error bounds, code range, packing."""

from __future__ import annotations

import pytest
import torch

from slimlm.errors import SlimlmError
from slimlm.methods.quantization import BITS, dequantize_tensor, pack, quantize_tensor, unpack


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("granularity,group_size", [("tensor", None), ("channel", None), ("group", 16)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_error_within_half_a_step_and_codes_in_range(bits, granularity, group_size, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(12, 64) * torch.linspace(0.1, 3, 12).unsqueeze(1)
    q = quantize_tensor(w, bits, granularity, group_size, symmetric)
    assert q["codes"].dtype == torch.uint8 and int(q["codes"].max()) <= 2**bits - 1
    rows = {"tensor": w.reshape(1, -1), "channel": w, "group": w.reshape(-1, 16)}[granularity]
    err = (dequantize_tensor(q).reshape(rows.shape) - rows).abs()
    assert bool((err <= q["scale"].unsqueeze(1) / 2 + 1e-6).all())


def test_paper_rule_asymmetric_per_tensor():
    w = torch.tensor([[-1.0, 0.0, 0.5, 3.0]])
    q = quantize_tensor(w, 2, "tensor")
    expected = torch.round((w - w.min()) / (w.max() - w.min()) * 3)
    assert torch.equal(q["codes"].float(), expected)


def test_constant_tensor():
    w = torch.full((4, 8), 0.7)
    q = quantize_tensor(w, 4, "channel")
    assert torch.equal(dequantize_tensor(q), w) and int(q["codes"].max()) == 0


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("numel", [1, 7, 8, 1000])
def test_pack_roundtrip_and_size(bits, numel):
    codes = torch.randint(0, 2**bits, (numel,), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-numel // 8) * bits
    assert torch.equal(unpack(packed, bits, numel), codes)


@pytest.mark.parametrize("bits", [0, 1, 7, 9, 16])
def test_unsupported_bits(bits):
    with pytest.raises(SlimlmError, match="--bits"):
        quantize_tensor(torch.randn(4, 8), bits)


def test_group_size_must_divide_width():
    with pytest.raises(SlimlmError, match="does not divide"):
        quantize_tensor(torch.randn(4, 48), 4, "group", 32)


@pytest.mark.parametrize("bits,granularity,group_size", [(8, "channel", None), (4, "group", 16), (3, "tensor", None)])
def test_model_roundtrip_through_packed_tensors(tiny_teacher, bits, granularity, group_size):
    from transformers import AutoModelForCausalLM

    from slimlm.methods.quantization import quantize_model, restore_weights

    model = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    tensors = quantize_model(model, bits, granularity, group_size)
    packed_bytes = sum(t.numel() for k, t in tensors.items() if k.endswith(".packed"))
    n_weights = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)
    assert packed_bytes == pytest.approx(n_weights * bits / 8, rel=0.01)
    restored = AutoModelForCausalLM.from_config(model.config)
    restore_weights(restored, tensors, {"bits": bits, "granularity": granularity, "group_size": group_size})
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        if a.dim() == 2:
            step = (a.max() - a.min()) / (2**bits - 1)
            assert (a - b).abs().max() <= step / 2 + 1e-6, name
        else:
            assert torch.equal(a, b), name
