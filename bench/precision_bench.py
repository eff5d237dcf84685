"""Benchmark: is bf16 autocast worth it on the CPU it runs on? fp32 against bf16 matmuls, same run, beside the
decision `--precision auto` makes here.

The matmul is the one the issue measured (a 1024x576 activation by the 576x1536 MLP weight of the built-in
teacher), timed as a Linear under autocast the way a forward pass runs it; then a student training step of
the default student's shape (14 layers of SmolLM2-135M, random weights, batch 4 x 256, CE loss + AdamW) in
both precisions. Each timing is the median of repeats after a warm-up. On an AVX2-only CPU bf16 is
emulated and loses by ~7x (measured on AMD EPYC Zen 3; bench/README.md); where it is native it should win.

    python bench/precision_bench.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(dtype: str, repeats: int) -> float:
    torch.manual_seed(0)
    x = torch.randn(1024, 576)
    linear = torch.nn.Linear(576, 1536, bias=False)
    enabled = dtype == "bf16"

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            for _ in range(20):
                linear(x)

    seconds = _median_time(run, repeats) / 20
    return 2 * 1024 * 576 * 1536 / seconds / 1e9


def train_step_seconds(dtype: str, repeats: int, layers: int) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 49152, (4, 256), generator=torch.Generator().manual_seed(1))
    enabled = dtype == "bf16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _median_time(step, repeats)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median), after one warm-up")
    p.add_argument("--step-repeats", type=int, default=3, help="timed training steps per precision")
    p.add_argument("--layers", type=int, default=14, help="student layers for the training step")
    args = p.parse_args(argv)
    from slimlm import precision

    decided = precision.resolve("auto", "cpu")
    print(f"precision_bench: {precision.describe_cpu()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"precision_bench: --precision auto here: {decided.describe()}")
    rows = []
    flops = {d: matmul_gflops(d, args.repeats) for d in ("fp32", "bf16")}
    rows.append(("matmul 1024x576 @ 576x1536 (GFLOP/s)", flops["fp32"], flops["bf16"], flops["bf16"] / flops["fp32"]))
    steps = {d: train_step_seconds(d, args.step_repeats, args.layers) for d in ("fp32", "bf16")}
    rows.append(
        (
            f"student train step, {args.layers} layers, 4x256 (s)",
            steps["fp32"],
            steps["bf16"],
            steps["fp32"] / steps["bf16"],
        )
    )
    print()
    print("| measure | fp32 | bf16 autocast | bf16 speed-up |")
    print("|---|---:|---:|---:|")
    for name, a, b, ratio in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {ratio:.2f}x |")
    faster = steps["bf16"] < steps["fp32"]
    agrees = faster == decided.bf16
    print()
    print(
        f"auto chose {decided.dtype}; the faster training step here was {'bf16' if faster else 'fp32'}: "
        f"{'AGREE' if agrees else 'DISAGREE'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
