"""Benchmark: LoRA vs full fine-tuning of the default student (paper Figure 3), one run.

A random-weight Llama of the default student's shape (SmolLM2-135M widths, 14 layers: hidden 576,
intermediate 1536, 9 heads / 3 KV heads, vocab 49152, tied embeddings). Each arm runs in a fresh subprocess:

  lora   peft LoRA r=8, alpha 16 on every attention and MLP projection (slimlm's default), AdamW on adapters
  full   every weight trains, AdamW on all of them

A step is what `slimlm finetune` runs: forward to final hidden states, slimlm's chunked cross-entropy
(`distill_loss` at alpha=1), backward, AdamW step, under the precision slimlm picks (--precision).
Reported per arm: step tokens/s (median of the timed steps), trainable parameters, optimizer-state bytes,
peak memory; then batch-1 decode tokens/s (fp32, `slimlm.eval.metrics.decode_speed`) of the result: for
LoRA with the adapter still attached and after `merge_and_unload()`, for full fine-tuning the model itself.

Memory: the kernel's RSS high-water mark (VmHWM, reset after the model is built; see distill_bench.py).
"train peak" is the peak above the RSS when training began (weights resident, no optimizer yet): optimizer
state, gradients, activations and temporaries.

    python bench/finetune_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distill_bench import PeakMemory, build  # noqa: E402  (same model shape and memory method)

ARMS = ("lora", "full")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=14, help="student layers (default student: 14)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per arm (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per decode run")
    p.add_argument("--repeats", type=int, default=3, help="decode runs (median)")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="training precision; auto = bf16 only where the CPU runs it natively (slimlm.precision)",
    )
    p.add_argument("--arm", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_arm(args):
    import torch

    from slimlm import precision
    from slimlm.eval.metrics import decode_speed
    from slimlm.losses.kd import distill_loss
    from slimlm.methods.lora import add_lora, optimizer_state_bytes, target_modules, trainable_parameters

    device = torch.device("cpu")
    model = build(args.layers, device, seed=0)
    if args.arm == "lora":
        model = add_lora(
            model, rank=args.rank, lora_alpha=2 * args.rank, dropout=0.05, targets=target_modules(model, None)
        )
    params = trainable_parameters(model)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49152, (args.batch, args.seq), generator=g)
    labels = torch.cat([ids[:, 1:], torch.full((args.batch, 1), -100)], 1).flatten()
    mem = PeakMemory(device)
    mem.start()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=5e-4 if args.arm == "lora" else 5e-5
    )
    model.train()
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        with precision.autocast(precision.resolve(args.precision, "cpu")):
            out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1, use_cache=False)
            loss, _ = distill_loss(
                out.hidden_states[-1].flatten(0, 1), model.get_output_embeddings().weight, labels, alpha=1.0
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    peak, train_peak = mem.stop()
    result = {
        "times": times,
        "median": statistics.median(times),
        "params": params,
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "peak": peak,
        "train_peak": train_peak,
        "mem_method": mem.method,
    }
    del optimizer, out, loss
    model.eval()
    decode = {}
    if args.arm == "lora":
        decode["lora, adapter attached"] = decode_speed(model, new_tokens=args.new_tokens, repeats=args.repeats)
        model = model.merge_and_unload()
        decode["lora, merged"] = decode_speed(model, new_tokens=args.new_tokens, repeats=args.repeats)
    else:
        decode["full"] = decode_speed(model, new_tokens=args.new_tokens, repeats=args.repeats)
    result["decode"] = {k: v["decode_tokens_per_s"] for k, v in decode.items()}
    result["merged_parameters"] = sum({p.data_ptr(): p.numel() for p in model.parameters()}.values())
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.arm:
        print("RESULT " + json.dumps(run_arm(args)), flush=True)
        return 0
    import torch

    tokens = args.batch * args.seq
    from slimlm import precision

    decided = precision.resolve(args.precision, "cpu")
    print(f"finetune_bench: {precision.describe_cpu()}; {decided.describe()}", flush=True)
    print(
        f"finetune_bench: cpu, {torch.get_num_threads()} threads, {decided.dtype} training, batch {args.batch} x "
        f"seq {args.seq} = {tokens} tokens/step, {args.layers} layers, LoRA r={args.rank} on all projections, "
        f"{args.warmup} warm-up + {args.steps} timed steps; fp32 batch-1 decode of {args.new_tokens} tokens, "
        f"median of {args.repeats}; each arm in a fresh process",
        flush=True,
    )
    results = {}
    passthrough = list(argv if argv is not None else sys.argv[1:])
    for arm in ARMS:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), *passthrough, "--arm", arm], capture_output=True, text=True
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"  {arm}: FAILED\n{proc.stderr[-3000:]}", flush=True)
            continue
        results[arm] = json.loads(lines[-1][len("RESULT ") :])
        print(
            f"  {arm:5s} done in {time.perf_counter() - t0:4.0f} s: steps "
            + ", ".join(f"{t:.2f}" for t in results[arm]["times"])
            + " s",
            flush=True,
        )
    print()
    print(format_table(results, tokens))
    return 0


def format_table(results, tokens):
    mib = 2**20
    lines = [
        "| arm | trainable params | % | step tokens/s | optimizer state (MiB) | peak mem (MiB) | train peak (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, r in results.items():
        lines.append(
            f"| {arm} | {r['params']['trainable']:,} | {r['params']['percent']:.2f} | "
            f"{tokens / r['median']:.0f} | {r['optimizer_state_bytes'] / mib:.1f} | {r['peak'] / mib:.0f} | "
            f"{r['train_peak'] / mib:.0f} |"
        )
    lines += ["", "| model | parameters | decode tokens/s |", "|---|---:|---:|"]
    for r in results.values():
        for name, speed in r["decode"].items():
            params = r["merged_parameters"] if name != "lora, adapter attached" else r["params"]["total"]
            lines.append(f"| {name} | {params:,} | {speed:.1f} |")
    if {"lora", "full"} <= results.keys():
        lo, fu = results["lora"], results["full"]
        lines += [
            "",
            f"LoRA / full: step tokens/s {fu['median'] / lo['median']:.2f}x, trainable parameters "
            f"{lo['params']['trainable'] / fu['params']['trainable']:.4f}, optimizer state "
            f"{lo['optimizer_state_bytes'] / fu['optimizer_state_bytes']:.4f}, train peak "
            f"{lo['train_peak'] / fu['train_peak']:.2f}; decode merged LoRA / full "
            f"{lo['decode']['lora, merged'] / fu['decode']['full']:.2f}x, adapter attached / full "
            f"{lo['decode']['lora, adapter attached'] / fu['decode']['full']:.2f}x",
        ]
    method = next(iter(results.values()))["mem_method"] if results else "?"
    lines.append(f"memory: {method}; train peak = peak minus the RSS when training began (weights resident).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
