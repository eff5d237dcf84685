"""Rollout speed of slimlm's sampler (eval/decode.sample_continuations) against HF `generate`, round-robin.

On-policy distillation samples a continuation of every prompt in a batch, so the speed of that sampling decides
what the method costs on CPU. Both paths draw from the full softmax at the same temperature (generate with
top_k=0, top_p=1.0, eos_token_id=None: fixed length, no truncation), on the same prompts, in the same precision.
The model is the demo student's shape (a 14-layer SmolLM2-135M-shaped Llama) with random weights, built from its
config in code, so nothing is downloaded; decode speed does not depend on the weights' values.

Each round times every path once, in turn, so whatever else the machine does falls on all of them alike; the
ratios to generate are taken within each round, then the median over rounds (as bench/decode_speed.py). Rollout
tokens/s counts B x C tokens over the whole call, prefill included (what a training step pays); decode tokens/s
leaves the prefill out: B x (C-1) / (time of a C-token call - time of a 1-token call).

    python bench/decode_bench.py --rounds 7
    python bench/decode_bench.py --layers 2 --hidden 64 --heads 4 --kv-heads 2 --intermediate 128 \\
        --vocab 1000 --prompt 16 --new-tokens 8 --rounds 2        # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

PATHS = ("generate", "static", "dynamic")
LABELS = {
    "generate": "HF generate (DynamicCache)",
    "static": "sample_continuations, StaticCache",
    "dynamic": "sample_continuations, DynamicCache",
}


def build_model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(2048, args.prompt + args.new_tokens),
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config).eval()


def runner(path, model, prompts, temperature, precision, seed):
    """A function n -> seconds of one rollout of n tokens per prompt along `path`."""
    import torch

    from slimlm.eval.decode import sample_continuations
    from slimlm.precision import autocast

    def generate(n):
        start = time.perf_counter()
        with autocast(precision, "cpu"):
            out = model.generate(
                prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=temperature,
                eos_token_id=None,
                pad_token_id=0,
                max_new_tokens=n,
            )
        seconds = time.perf_counter() - start
        if out.shape[1] - prompts.shape[1] != n:
            sys.exit(f"decode_bench: generate made {out.shape[1] - prompts.shape[1]} tokens, not {n}")
        return seconds

    def ours(n):
        if path == "dynamic":  # what a model type without static cache support gets
            model._can_compile_fullgraph = False
        try:
            generator = torch.Generator().manual_seed(seed)
            return sample_continuations(
                model, prompts, n, temperature=temperature, generator=generator, precision=precision
            ).seconds
        finally:
            model.__dict__.pop("_can_compile_fullgraph", None)

    return generate if path == "generate" else ours


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=14)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per row (default 128)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens sampled per row (default 128)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (slimlm.precision), for every path")
    p.add_argument("--paths", default="generate,static", help=f"comma-separated, from {','.join(PATHS)}")
    p.add_argument("--rounds", type=int, default=5, help="measurements of each path, in turn (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the table's numbers here as JSON")
    args = p.parse_args(argv)
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if not paths or any(x not in PATHS for x in paths) or len(set(paths)) != len(paths) or "generate" not in paths:
        p.error(f"--paths: distinct names from {', '.join(PATHS)}, generate among them (it is the baseline)")
    if min(args.rounds, args.batch, args.prompt, args.layers) < 1 or args.new_tokens < 2 or not args.temperature > 0:
        p.error("--rounds, --batch, --prompt, --layers >= 1, --new-tokens >= 2 and --temperature > 0")
    if args.out and Path(args.out).exists():
        p.error(f"--out {args.out} exists; choose a new path (a result is never overwritten)")

    import torch

    from slimlm.errors import SlimlmError
    from slimlm.precision import describe_cpu, resolve

    try:
        precision = resolve(args.precision, "cpu")
    except SlimlmError as error:
        sys.exit(f"decode_bench: {error}")
    model = build_model(args)
    prompts = torch.randint(args.vocab, (args.batch, args.prompt), generator=torch.Generator().manual_seed(args.seed))
    torch.manual_seed(args.seed)  # generate draws from the global generator
    run = {x: runner(x, model, prompts, args.temperature, precision, args.seed) for x in paths}
    for x in paths:  # warm-up: first-call allocations and lazy initialisations
        run[x](2)
    rounds = []
    for r in range(args.rounds):
        row = {}
        for x in paths:
            whole, prefill = run[x](args.new_tokens), run[x](1)
            decode_s = whole - prefill
            rate = args.batch * (args.new_tokens - 1) / decode_s if decode_s > 0.05 * whole else None
            row[x] = (args.batch * args.new_tokens / whole, rate)
        rounds.append(row)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{x} {v[0]:.1f}" for x, v in row.items()), file=sys.stderr)

    params = sum(t.numel() for t in model.parameters())
    result = {
        "cpu": describe_cpu(),
        "threads": torch.get_num_threads(),
        "precision": precision.dtype,
        "model": {k: getattr(args, k) for k in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab")},
        "parameters": params,
        "batch": args.batch,
        "prompt": args.prompt,
        "new_tokens": args.new_tokens,
        "temperature": args.temperature,
        "rounds": args.rounds,
        "paths": {},
    }
    print(
        f"\nCPU: {result['cpu']}, {result['threads']} threads, {precision.dtype}, {params / 1e6:.1f}M parameters, "
        f"batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new tokens, {args.rounds} rounds"
    )
    print("| path | rollout tok/s (median, min–max) | decode tok/s | × generate, rollout | × generate, decode |")
    print("|---|---:|---:|---:|---:|")
    for x in paths:
        rollout = [row[x][0] for row in rounds]
        decode = [row[x][1] for row in rounds if row[x][1]]
        ratios = [row[x][0] / row["generate"][0] for row in rounds]
        decode_ratios = [row[x][1] / row["generate"][1] for row in rounds if row[x][1] and row["generate"][1]]
        entry = {
            "rollout_tokens_per_s": statistics.median(rollout),
            "rollout_min": min(rollout),
            "rollout_max": max(rollout),
            "decode_tokens_per_s": statistics.median(decode) if decode else None,
            "ratio_to_generate": statistics.median(ratios),
            "decode_ratio_to_generate": statistics.median(decode_ratios) if decode_ratios else None,
        }
        result["paths"][x] = entry
        shown = f"{entry['decode_tokens_per_s']:.1f}" if decode else "– (prefill not separable)"
        shown_ratio = f"{entry['decode_ratio_to_generate']:.2f}" if decode_ratios else "–"
        print(
            f"| {LABELS[x]} | {entry['rollout_tokens_per_s']:.1f} ({min(rollout):.1f}–{max(rollout):.1f}) "
            f"| {shown} | {entry['ratio_to_generate']:.2f} | {shown_ratio} |"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
