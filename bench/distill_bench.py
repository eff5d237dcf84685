"""Benchmark: what a distillation step costs with slimlm's chunked loss, against the plain ways.

Random-weight Llama models of the built-in teacher's shape (SmolLM2-135M: hidden 576, 30 layers, vocab 49152,
tied embeddings) and a 15-layer student of the same widths. Arms, same shapes, same run:

  teacher-fwd      teacher forward with full logits under no_grad (for the floor)
  ce               plain student step: HF forward with labels, backward, AdamW step
  naive-kd         teacher full logits + student full logits + naive_distill_loss, backward, step
                   (naive_distill_loss and distill_loss_checkpointed: tests/reference_losses.py)
  slimlm-online    teacher/student final hidden states + distill_loss (chunked, online teacher)
  slimlm-cached    student hidden states + distill_loss against cached top-k teacher logits (--cache-mode topk)
  slimlm-sampled   student hidden states + distill_loss against cached teacher draws (--cache-mode sample)
  slimlm-ckpt      as slimlm-online, but the per-chunk loss under torch.utils.checkpoint (recompute in backward)

Each arm runs in a fresh subprocess, so the memory numbers of one arm cannot leak into another's.
Memory: CUDA: torch.cuda.max_memory_allocated. CPU: the kernel's peak resident set (VmHWM, reset through
/proc/self/clear_refs after warm-up). "step peak" is the peak above what was resident when the timed steps
began (weights + AdamW state, no gradients): the activations, logits, gradients and temporaries of a step.

    python bench/distill_bench.py                      # CPU defaults: batch 2 x seq 1024, precision auto
    python bench/distill_bench.py --dtype fp32         # fp32 on any CPU (auto = bf16 only where native)
    python bench/distill_bench.py --device cuda --batch 8 --seq 2048
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ARMS = ("teacher-fwd", "ce", "naive-kd", "slimlm-online", "slimlm-cached", "slimlm-sampled", "slimlm-ckpt")
TARGETS = {  # name: (ratio description, limit)
    "online": ("slimlm online KD step / (teacher fwd + CE step)", 1.15),
    "cached": ("slimlm top-k cached KD step / CE step", 1.30),
    "sampled": ("slimlm sampled-cache KD step / CE step", 1.00),
    "memory": ("slimlm online KD step peak / naive KD step peak", 0.50),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--teacher-layers", type=int, default=30)
    p.add_argument("--student-layers", type=int, default=15)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3, help="timed steps per arm (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per arm first")
    p.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="bf16 = autocast over fp32 weights; auto = bf16 only where the device runs it natively "
        "(slimlm.precision, as every slimlm command decides)",
    )
    p.add_argument("--chunk-size", type=int, default=1024, help="distill_loss chunk_size (tokens)")
    p.add_argument("--topk", type=int, default=64, help="cached teacher top-k")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    p.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process, print JSON
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# one arm (runs in its own process)
# ----------------------------------------------------------------------------------------------------------


def build(n_layers, device, seed):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=n_layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(device)


class PeakMemory:
    """Peak memory above a baseline: CUDA allocator stats, or the kernel's RSS high-water mark on CPU."""

    def __init__(self, device):
        self.device = device
        self.method = "cuda max_memory_allocated" if device.type == "cuda" else "VmHWM (kernel peak RSS)"
        self._sampler = None

    def start(self):
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:  # give freed heap pages back to the OS so the baseline is what is really live
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.base = _status_kb("VmRSS") * 1024
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:  # fall back to sampling RSS in a thread
            self.method = "sampled RSS (5 ms)"
            self._peak, self._stop = self.base, threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _status_kb("VmRSS") * 1024)
            time.sleep(0.005)

    def stop(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            peak = self._peak
        else:
            peak = _status_kb("VmHWM") * 1024
        return peak, peak - self.base


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def run_arm(args):
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the plain-torch reference losses
    from reference_losses import distill_loss_checkpointed, naive_distill_loss
    from slimlm.losses.kd import distill_loss

    arm, device = args.arm, torch.device(args.device)
    from slimlm import precision

    amp = precision.autocast(precision.resolve(args.dtype, device.type))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(49152, (args.batch, args.seq), generator=gen).to(device)
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)  # shifted; last position ignored
    flat_labels = labels.flatten()
    kd = dict(temperature=args.temperature, alpha=args.alpha, chunk_size=args.chunk_size)

    teacher = build(args.teacher_layers, device, seed=1).eval().requires_grad_(False) if arm != "ce" else None
    student = opt = None
    if arm != "teacher-fwd":
        student = build(args.student_layers, device, seed=2).train()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    cached = None
    if arm == "slimlm-cached":  # teacher top-k computed once, outside the timed region, then the teacher is gone
        with torch.no_grad(), amp:
            h = teacher.model(input_ids=ids).last_hidden_state.flatten(0, 1)
            parts = [
                (h[i : i + 1024] @ teacher.lm_head.weight.T).float().topk(args.topk, dim=-1)
                for i in range(0, h.shape[0], 1024)
            ]
        cached = (
            torch.cat([p.values for p in parts]).to(torch.bfloat16),
            torch.cat([p.indices for p in parts]).to(torch.int32),
        )
        del teacher, h, parts
        teacher = None
    if arm == "slimlm-sampled":  # the default cache: draws from the teacher at tau, computed outside the timed region
        from slimlm.training.teacher_cache import chunk_signal, default_draws

        gen = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad(), amp:
            h = teacher.model(input_ids=ids).last_hidden_state.flatten(0, 1)
            head, draws = teacher.lm_head.weight, default_draws(teacher.config.vocab_size)
            parts = [
                chunk_signal(h[i : i + 1024], head, "sample", args.temperature, draws, 0, gen)
                for i in range(0, h.shape[0], 1024)
            ]
        cached = {
            "teacher_entropy": torch.cat([e for e, _ in parts]).squeeze(1).float(),
            "teacher_samples": torch.cat([s for _, s in parts]).long(),
        }
        del teacher, h, parts
        teacher = None

    def step():
        if arm == "teacher-fwd":
            with torch.no_grad(), amp:
                _ = teacher(input_ids=ids).logits
            return
        if arm == "ce":
            with amp:
                loss = student(input_ids=ids, labels=ids).loss
        elif arm == "naive-kd":
            with torch.no_grad(), amp:
                t_logits = teacher(input_ids=ids).logits
            with amp:
                s_logits = student(input_ids=ids).logits
                loss = naive_distill_loss(s_logits, t_logits, labels, args.temperature, args.alpha)
        else:
            if cached is None:
                with torch.no_grad(), amp:
                    t_hidden = teacher.model(input_ids=ids).last_hidden_state.flatten(0, 1)
                teacher_kw = dict(teacher_hidden=t_hidden, teacher_head=teacher.lm_head.weight)
            elif isinstance(cached, dict):
                teacher_kw = cached
            else:
                teacher_kw = dict(teacher_topk_values=cached[0], teacher_topk_indices=cached[1])
            fn = distill_loss_checkpointed if arm == "slimlm-ckpt" else distill_loss
            with amp:
                s_hidden = student.model(input_ids=ids).last_hidden_state.flatten(0, 1)
                loss, _ = fn(s_hidden, student.lm_head.weight, flat_labels, **teacher_kw, **kd)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    mem = PeakMemory(device)
    mem.start()
    times = []
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak, delta = mem.stop()
    return {
        "arm": arm,
        "times": times,
        "median": statistics.median(times),
        "peak": peak,
        "step_peak": delta,
        "mem_method": mem.method,
    }


# ----------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    if args.arm:
        print("RESULT " + json.dumps(run_arm(args)), flush=True)
        return 0
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        sys.exit(f"unknown arm(s) {bad}: choose from {', '.join(ARMS)}")
    tokens = args.batch * args.seq
    from slimlm import precision

    decided = precision.resolve(args.dtype, args.device)
    where = precision.describe_cpu() if args.device == "cpu" else args.device
    print(f"distill_bench: {where}; {decided.describe()}", flush=True)
    print(
        f"distill_bench: device {args.device}, {decided.dtype}, batch {args.batch} x seq {args.seq} = {tokens} "
        f"tokens/step, teacher {args.teacher_layers} layers, student {args.student_layers} layers, "
        f"vocab 49152, chunk {args.chunk_size}, top-k {args.topk}, {args.warmup} warm-up + {args.steps} "
        f"timed steps per arm, each arm in a fresh process",
        flush=True,
    )
    results = {}
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for arm in arms:
        t0 = time.perf_counter()
        cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--arm", arm]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"  {arm}: FAILED\n{proc.stderr[-3000:]}", flush=True)
            continue
        results[arm] = json.loads(lines[-1][len("RESULT ") :])
        r = results[arm]
        print(
            f"  {arm:14s} done in {time.perf_counter() - t0:5.0f} s: steps "
            + ", ".join(f"{t:.2f}" for t in r["times"])
            + " s",
            flush=True,
        )
    print()
    print(format_table(results, tokens, args.topk))
    return 0


def format_table(results, tokens, topk=64):
    gib = 1024**3
    method = next(iter(results.values()))["mem_method"] if results else "?"
    lines = ["| arm | median step (s) | tokens/s | peak mem (GiB) | step peak (GiB) |", "|---|---:|---:|---:|---:|"]
    for arm, r in results.items():
        lines.append(
            f"| {arm} | {r['median']:.2f} | {tokens / r['median']:.0f} | {r['peak'] / gib:.2f} | "
            f"{r['step_peak'] / gib:.2f} |"
        )
    med = {a: r["median"] for a, r in results.items()}
    if "teacher-fwd" in med and "ce" in med:
        floor = med["teacher-fwd"] + med["ce"]
        lines.append(f"| floor: teacher-fwd + ce | {floor:.2f} | {tokens / floor:.0f} | | |")
    lines.append("")
    lines.append(
        f"memory: {method}; step peak = peak minus the memory live when the timed steps began (weights, AdamW state)."
    )
    lines.append("")
    checks = []
    if {"teacher-fwd", "ce", "slimlm-online"} <= med.keys():
        checks.append(("online", med["slimlm-online"] / (med["teacher-fwd"] + med["ce"])))
    if {"ce", "slimlm-cached"} <= med.keys():
        checks.append(("cached", med["slimlm-cached"] / med["ce"]))
    if {"ce", "slimlm-sampled"} <= med.keys():
        checks.append(("sampled", med["slimlm-sampled"] / med["ce"]))
    if {"naive-kd", "slimlm-online"} <= results.keys():
        checks.append(("memory", results["slimlm-online"]["step_peak"] / results["naive-kd"]["step_peak"]))
    for name, value in checks:
        text, limit = TARGETS[name]
        lines.append(f"{text}: {value:.2f} (target <= {limit:.2f}) {'PASS' if value <= limit else 'MISS'}")
    extra = []
    if {"naive-kd", "slimlm-online"} <= med.keys():
        extra.append(f"slimlm online / naive KD time: {med['slimlm-online'] / med['naive-kd']:.2f}")
    if {"slimlm-ckpt", "slimlm-online"} <= med.keys():
        extra.append(f"checkpointed / fused loss step time: {med['slimlm-ckpt'] / med['slimlm-online']:.2f}")
    if {"naive-kd", "slimlm-cached"} <= results.keys():
        extra.append(
            "slimlm cached / naive KD step peak: "
            f"{results['slimlm-cached']['step_peak'] / results['naive-kd']['step_peak']:.2f}"
        )
    if {"slimlm-cached", "slimlm-sampled"} & results.keys():
        from slimlm.training.teacher_cache import bytes_per_position

        extra.append(
            f"teacher cache bytes per position: sampled {bytes_per_position('sample', 49152)}, "
            f"top-{topk} {bytes_per_position('topk', 49152, top_k=topk)}"
        )
    lines += extra
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
