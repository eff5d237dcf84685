"""Decode speed and size of the default student in fp32, bf16, int8 and 4-bit, beside a roofline.

Batch-1 decoding reads every weight once per token, so its ceiling is (memory bandwidth) / (weight
bytes read per token); the bandwidth is measured in the same run. The model has the default
student's shape (SmolLM2-135M cut to 14 layers) with random weights: speed does not depend on the
values. Run:  .venv/bin/python bench/compress_bench.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from slimlm.eval.metrics import decode_speed
from slimlm.methods.quantization import load_quantized, save_quantized


def student_config(layers: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    )


def read_bandwidth(n_bytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Bytes/s for a full read of a large fp32 tensor (sum), median of repeats."""
    x = torch.ones(n_bytes // 4)
    x.sum()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - start)
    return n_bytes / statistics.median(times)


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6


def int8_dynamic(model, include_head: bool):
    """torch's dynamic int8 Linear (weights int8 per channel, activations quantized per batch)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {
        name: per_channel_dynamic_qconfig
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and (include_head or name != "lm_head")
    }
    return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=14)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    fp32 = AutoModelForCausalLM.from_config(student_config(args.layers)).eval()
    bandwidth = read_bandwidth()
    prompt = torch.randint(0, 49152, (32,))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32.save_pretrained(tmp / "fp32")
        fp32.to(torch.bfloat16).save_pretrained(tmp / "bf16")
        fp32 = fp32.float()
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        save_quantized(copy.deepcopy(fp32), None, tmp / "q8", 8, "channel", None, False)
        save_quantized(copy.deepcopy(fp32), None, tmp / "q4", 4, "group", 32, False)
        q4 = load_quantized(tmp / "q4")
        n_layers = sum(p.numel() for p in fp32.model.layers.parameters())
        n_head = fp32.lm_head.weight.numel()
        # (name, model, size on disk, weight bytes read per decoded token: decoder layers + lm_head;
        #  the input embedding is a row lookup, not a full read)
        variants = [
            ("fp32", fp32, folder_mb(tmp / "fp32"), 4 * (n_layers + n_head)),
            ("bf16", bf16, folder_mb(tmp / "bf16"), 2 * (n_layers + n_head)),
            ("int8 dynamic, decoder layers", int8_dynamic(fp32, False), folder_mb(tmp / "q8"), n_layers + 4 * n_head),
            ("int8 dynamic, layers + lm_head", int8_dynamic(fp32, True), folder_mb(tmp / "q8"), n_layers + n_head),
            ("4-bit packed (dequantized fp32 at load)", q4, folder_mb(tmp / "q4"), 4 * (n_layers + n_head)),
        ]
        for name, model, size_mb, read_bytes in variants:
            speed = decode_speed(model, prompt_ids=prompt, new_tokens=args.new_tokens, repeats=args.repeats)
            rows.append((name, size_mb, speed["decode_tokens_per_s"], bandwidth / read_bytes))
    base_size, base_speed = rows[0][1], rows[0][2]
    print(
        f"memory read bandwidth (sum over 512 MiB fp32, same run): {bandwidth / 1e9:.1f} GB/s; "
        f"threads {torch.get_num_threads()}; decode {args.new_tokens} tokens at batch 1, median of {args.repeats}"
    )
    print(
        f"{'variant':42s} {'size MB':>8s} {'vs fp32':>8s} {'decode tok/s':>13s} {'vs fp32':>8s} "
        f"{'roofline tok/s':>15s} {'% of roofline':>14s}"
    )
    for name, size_mb, speed, roofline in rows:
        print(
            f"{name:42s} {size_mb:8.1f} {size_mb / base_size:8.2f} {speed:13.1f} {speed / base_speed:8.2f} "
            f"{roofline:15.1f} {100 * speed / roofline:13.0f}%"
        )
    size4 = rows[-1][1] / base_size
    best_int8 = max(r[2] for r in rows if r[0].startswith("int8")) / base_speed
    print(f"4-bit size / fp32 size: {size4:.2f} (target <= 0.30) {'PASS' if size4 <= 0.30 else 'MISS'}")
    print(f"best int8 decode / fp32 decode: {best_int8:.2f} (target >= 1.5) {'PASS' if best_int8 >= 1.5 else 'MISS'}")


if __name__ == "__main__":
    main()
