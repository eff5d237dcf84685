"""Decode and prefill speed of several models in one quiet pass, round-robin, against the first one.

A study measures each model's decode speed when that model is evaluated, minutes or hours apart, so on a
shared 2-core machine one busy minute moves one model's number by 25% and not the others'. Here every
model is loaded once and measured in turn, one repeat each per round, so whatever the machine does falls
on all of them alike; the ratio to the first model (the teacher) is taken within each round, then the
median over rounds. A round where a model's prefill could not be told apart from its decoding (decode_note)
is left out for it. Same measurement as `slimlm eval` (eval/metrics.decode_speed: batch-1 greedy decoding
of 64 new tokens after the test split's first 32 tokens, fp32, prefill of 256 tokens), same threads.

    python bench/decode_speed.py teacher=smollm2-135m depth=runs/exp/student-shape/arms/depth-seed0 \\
        --rounds 7 --out runs/decode-speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="NAME=MODEL (a directory or built-in name); the first is the baseline")
    p.add_argument("--rounds", type=int, default=7, help="measurements of each model, in turn (default 7)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--data", default="sotu", help="the prompt: the first 32 tokens of this corpus's test split")
    p.add_argument("--out", help="write the table's numbers here as JSON")
    args = p.parse_args(argv)
    pairs = [m.split("=", 1) if "=" in m else [m, m] for m in args.models]
    if len({n for n, _ in pairs}) != len(pairs) or args.rounds < 1 or args.new_tokens < 1:
        p.error("give each model a different NAME, and --rounds >= 1 and --new-tokens >= 1")
    if args.out and Path(args.out).exists():
        p.error(f"--out {args.out} exists; choose a new path (a result is never overwritten)")

    import torch

    from slimlm.data.corpus import prepare_data
    from slimlm.errors import SlimlmError
    from slimlm.eval.metrics import decode_speed
    from slimlm.precision import describe_cpu
    from slimlm.sources import load_model

    loaded = {}
    for name, spec in pairs:
        try:
            model, tokenizer, _ = load_model(spec)
            prompt = prepare_data(args.data, tokenizer).test[:32]
        except SlimlmError as error:  # a bad model or corpus: one line, as the slimlm commands say it
            sys.exit(f"decode_speed: {name}={spec}: {error}")
        loaded[name] = (model, prompt, sum(t.numel() for t in model.parameters()))
        decode_speed(model, prompt_ids=prompt, new_tokens=args.new_tokens, repeats=1, warmup=1)  # warm-up
    rounds = []
    for r in range(args.rounds):
        row = {}
        for name, (model, prompt, _) in loaded.items():
            m = decode_speed(model, prompt_ids=prompt, new_tokens=args.new_tokens, repeats=1, warmup=0)
            rate = None if m.get("decode_note") else m["decode_tokens_per_s"]  # prefill not separable: left out
            row[name] = (rate, m["prefill_tokens_per_s"])
        rounds.append(row)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[0]}" for n, v in row.items()), file=sys.stderr)
    base = pairs[0][0]
    result = {
        "cpu": describe_cpu(),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "new_tokens": args.new_tokens,
        "baseline": base,
        "models": {},
    }
    print(f"\nCPU: {result['cpu']}, {result['threads']} threads, {args.rounds} rounds, fp32, batch 1")
    header = f"| model | params (M) | decode tok/s (median, min–max) | × {base} (per-round median) | prefill tok/s |"
    print(header)
    print("|---|---:|---:|---:|---:|")
    for name, (_, _, params) in loaded.items():
        decode = [row[name][0] for row in rounds if row[name][0]]
        ratios = [row[name][0] / row[base][0] for row in rounds if row[name][0] and row[base][0]]
        if not decode or not ratios:
            print(f"| {name} | {params / 1e6:.2f} | no clean round (machine too busy) | – | – |")
            continue
        ratio = statistics.median(ratios)
        prefill = statistics.median(row[name][1] for row in rounds)
        result["models"][name] = {
            "model": dict(pairs)[name],
            "parameters": params,
            "decode_tokens_per_s": statistics.median(decode),
            "decode_min": min(decode),
            "decode_max": max(decode),
            "decode_ratio": ratio,
            "clean_rounds": len(ratios),
            "prefill_tokens_per_s": prefill,
        }
        print(
            f"| {name} | {params / 1e6:.2f} | {statistics.median(decode):.1f} ({min(decode):.1f}–{max(decode):.1f}) "
            f"| {ratio:.2f} | {prefill:.0f} |"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
