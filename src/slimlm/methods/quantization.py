"""Min-max weight quantization (paper section 2) with codes packed so the bits are really saved.

    w_q = round((w - w_min) / (w_max - w_min) * (2^b - 1))        (asymmetric, the paper's rule)
    w  ~= w_min + w_q * scale,   scale = (w_max - w_min) / (2^b - 1)

per tensor, per output channel or per group of `group_size` input columns. The symmetric variant
(`symmetric=True`) uses w_max = -w_min = max|w| for comparison. Codes of b bits are packed densely
into bytes (8 codes of 3 bits take 3 bytes), so a 4-bit file is really about an eighth of fp32.
"""

from __future__ import annotations

import torch

from slimlm.errors import SlimlmError

BITS = (2, 3, 4, 5, 6, 8)
GRANULARITIES = ("tensor", "channel", "group")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_args(bits: int, granularity: str, group_size: int | None, width: int | None = None) -> None:
    """Types too: a recipe's `bits: 8.0` or `group_size: "64"` would otherwise fail deep in packing."""
    if not _is_int(bits) or bits not in BITS:
        raise SlimlmError(f"--bits {bits!r} is not supported; use one of {', '.join(map(str, BITS))}")
    if not isinstance(granularity, str) or granularity not in GRANULARITIES:
        raise SlimlmError(f"--granularity {granularity!r} is not supported; use tensor, channel or group")
    if granularity == "group":
        if not _is_int(group_size) or group_size < 1:
            raise SlimlmError(f"--group-size must be a positive integer with --granularity group (got {group_size!r})")
        if width is not None and width % group_size:
            raise SlimlmError(
                f"--group-size {group_size} does not divide the layer width {width}; pick a divisor "
                f"such as {max(d for d in (32, 64, 128, 16, 8, 1) if width % d == 0)}"
            )


def _grouped(w: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """View the weight as rows that share one (scale, zero) pair."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    if granularity == "channel":
        return w.reshape(w.shape[0], -1)
    return w.reshape(-1, group_size)


def quantize_tensor(
    w: torch.Tensor, bits: int, granularity: str = "channel", group_size: int | None = None, symmetric: bool = False
) -> dict:
    """Quantize a 2-D weight; returns uint8 codes (unpacked), float32 scale and w_min (one per row group)."""
    check_args(bits, granularity, group_size, w.shape[-1] if w.dim() > 1 else w.numel())
    rows = _grouped(w.detach().float(), granularity, group_size)
    levels = 2**bits - 1
    if symmetric:
        w_max = rows.abs().amax(1, keepdim=True)
        w_min = -w_max
    else:
        w_min, w_max = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
    span = w_max - w_min
    scale = torch.where(span > 0, span / levels, torch.ones_like(span))  # a constant row: any scale, code 0
    codes = torch.round((rows - w_min) / scale).clamp_(0, levels).to(torch.uint8)
    return {
        "codes": codes.reshape(w.shape),
        "scale": scale.squeeze(1),
        "w_min": w_min.squeeze(1),
        "bits": bits,
        "granularity": granularity,
        "group_size": group_size,
        "shape": tuple(w.shape),
    }


def dequantize_tensor(q: dict, dtype=torch.float32) -> torch.Tensor:
    rows = _grouped(q["codes"].reshape(q["shape"]).float(), q["granularity"], q["group_size"])
    w = q["w_min"].unsqueeze(1) + rows * q["scale"].unsqueeze(1)
    return w.reshape(q["shape"]).to(dtype)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack b-bit codes densely into a uint8 stream, little-endian within each group of 8 codes."""
    flat = codes.reshape(-1).to(torch.int64)
    pad = (-len(flat)) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8)
    # 8 codes of b bits form b bytes: build each group's 8*b-bit integer, then cut it into bytes
    shifts = torch.arange(8, dtype=torch.int64) * bits
    word = (flat << shifts).sum(1)  # at most 64 bits: 8 codes * 8 bits
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    return ((word.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    groups = packed.to(torch.int64).view(-1, bits)
    word = (groups << (torch.arange(bits, dtype=torch.int64) * 8)).sum(1)
    codes = (word.unsqueeze(1) >> (torch.arange(8, dtype=torch.int64) * bits)) & (2**bits - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)


# --------------------------------------------------------------------------- whole models

QUANTIZED_WEIGHTS = "model.quantized.safetensors"


def quantizable(model) -> dict[str, torch.nn.Parameter]:
    """The 2-D weights of Linear and Embedding modules, tied weights once (by storage)."""
    seen, out = set(), {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            weight = module.weight
            if weight.data_ptr() in seen:
                continue
            seen.add(weight.data_ptr())
            out[f"{name}.weight"] = weight
    return out


def quantize_model(
    model, bits: int, granularity: str = "channel", group_size: int | None = None, symmetric: bool = False
) -> dict[str, torch.Tensor]:
    """Packed tensors for every quantizable weight, plus the other tensors as they are (norms, biases)."""
    targets = quantizable(model)
    check_args(bits, granularity, group_size)
    for weight in targets.values():
        check_args(bits, granularity, group_size, weight.shape[-1])
    tensors = {}
    for name, weight in targets.items():
        q = quantize_tensor(weight, bits, granularity, group_size, symmetric)
        tensors[f"{name}.packed"] = pack(q["codes"], bits)
        tensors[f"{name}.scale"] = q["scale"]
        tensors[f"{name}.w_min"] = q["w_min"]
    target_ptrs = {w.data_ptr() for w in targets.values()}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in target_ptrs and name not in tensors:
            tensors[name] = tensor.detach().contiguous()
    return tensors


def restore_weights(model, tensors: dict[str, torch.Tensor], settings: dict) -> None:
    """Dequantize packed tensors into `model` (built from the saved config), in place."""
    bits, granularity, group_size = settings["bits"], settings["granularity"], settings.get("group_size")
    state = {}
    for name, weight in quantizable(model).items():
        codes = unpack(tensors[f"{name}.packed"], bits, weight.numel()).reshape(weight.shape)
        state[name] = dequantize_tensor(
            {
                "codes": codes,
                "scale": tensors[f"{name}.scale"],
                "w_min": tensors[f"{name}.w_min"],
                "granularity": granularity,
                "group_size": group_size,
                "shape": tuple(weight.shape),
            },
            weight.dtype,
        )
    state.update({k: v for k, v in tensors.items() if not k.endswith((".packed", ".scale", ".w_min"))})
    missing, unexpected = model.load_state_dict(state, strict=False)
    owned = dict(model.named_parameters())  # tied weights appear once
    if unexpected or any(m in owned for m in missing):
        raise SlimlmError(
            f"quantized weights do not match the model config ({(unexpected or missing)[:3]}); "
            "the directory is corrupt: quantize the model again"
        )


RUNTIMES = ("dequantized", "int8-dynamic")


def apply_runtime(model, runtime: str):
    """How a loaded model computes: `dequantized` (fp32 weights, fp32 speed) or `int8-dynamic`.

    `int8-dynamic` runs every Linear (decoder layers and LM head) through torch's dynamic int8 kernels
    (weights int8 per output channel, activations quantized per call): the fastest path measured on this
    CPU (bench/compress_bench.py: 3.5x fp32 decode), at a measured cost in perplexity from the activation
    quantization (docs/compression.md). It works on CPU only.
    """
    if runtime not in RUNTIMES:
        raise SlimlmError(f"--runtime {runtime!r} is not known; use one of {', '.join(RUNTIMES)}")
    if runtime == "dequantized":
        return model
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice; the kernels are current
        return quantize_dynamic(model, spec, dtype=torch.qint8)


def save_quantized(
    model,
    tokenizer,
    folder,
    bits: int,
    granularity: str,
    group_size: int | None,
    symmetric: bool,
    runtime: str = "dequantized",
) -> dict:
    """Write config, tokenizer and packed weights; returns the settings stored in the config."""
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = quantize_model(model, bits, granularity, group_size, symmetric)
    if runtime not in RUNTIMES:
        raise SlimlmError(f"--runtime {runtime!r} is not known; use one of {', '.join(RUNTIMES)}")
    settings = {
        "bits": bits,
        "granularity": granularity,
        "group_size": group_size,
        "symmetric": symmetric,
        "runtime": runtime,
        "format": "slimlm-minmax-packed-v1",
    }
    model.config.slimlm_quantization = settings
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    save_file(tensors, folder / QUANTIZED_WEIGHTS, metadata={"format": "pt"})
    return settings


def load_quantized(folder, dtype=torch.float32):
    """Rebuild a runnable model from a slimlm-quantized directory (weights dequantized to `dtype`)."""
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    settings = getattr(config, "slimlm_quantization", None)
    if not settings:
        raise SlimlmError(
            f"{folder} has {QUANTIZED_WEIGHTS} but its config.json has no slimlm_quantization "
            "settings; quantize the model again"
        )
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    restore_weights(model, load_file(folder / QUANTIZED_WEIGHTS), settings)
    model.tie_weights()
    return apply_runtime(model.eval(), settings.get("runtime", "dequantized"))
