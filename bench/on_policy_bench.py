"""What an on-policy step costs against an off-policy one: seconds a step of `slimlm distill` at --on-policy 0
(today's step), 0.5 and 1, and the measures that make sampling cheaper (shorter continuations, reusing a
rollout), with the share of the step the student spends sampling.

Every arm starts from the demo's student (`--student`, built by `slimlm student --teacher smollm2-135m --layers
14`) with the demo's settings (online teacher, sotu,wikipedia, 4 x 256 tokens a step, lr 6e-4, precision auto)
and runs --steps steps; the arms are alternated --repeats times (round-robin), each timed alone by the
Trainer's train_runtime_s over its steps. The table gives medians and each arm's ratio to the off-policy step
of the same round (median over rounds). Run it with nothing else on the machine (pause a running study:
kill -STOP, then kill -CONT).

    python bench/on_policy_bench.py --student runs/demo/student-init --out runs/on-policy-bench.json
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
from demo_settings import timed_distill  # noqa: E402

ARMS = {  # name -> distill settings on top of the demo's
    "off-policy": {},
    "lambda 0.5": {"on_policy": 0.5},
    "lambda 1": {"on_policy": 1.0},
    "lambda 1 reuse 4": {"on_policy": 1.0, "rollout_reuse": 4},
    "lambda 1 C64 reuse 2": {"on_policy": 1.0, "continuation_tokens": 64, "rollout_reuse": 2},
    "lambda 1 sampled-reverse": {"on_policy": 1.0, "policy_divergence": "sampled-reverse"},
}


def step_time(student: str, steps: int, settings: dict) -> dict:
    training = timed_distill(student, steps, **settings)
    sampling = (training.get("on_policy") or {}).get("sampling_s", 0.0)
    return {
        "s_per_step": training["train_runtime_s"] / training["steps"],
        "sampling_share": sampling / training["train_runtime_s"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True, help="the demo's student folder (slimlm student --layers 14)")
    p.add_argument("--steps", type=int, default=6, help="steps per timing (default 6)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of all arms (default 2)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list among: {', '.join(ARMS)}")
    p.add_argument("--out", help="write the results here as JSON")
    args = p.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not (Path(args.student) / "slimlm.json").is_file():
        sys.exit(f"--student {args.student} is not a slimlm student folder; build it with slimlm student first")
    if unknown := [a for a in arms if a not in ARMS]:
        sys.exit(f"unknown arm(s) {unknown}; choose among {', '.join(ARMS)}")
    if "off-policy" not in arms:
        arms.insert(0, "off-policy")  # the baseline every ratio is taken against
    if args.steps < 2 or args.repeats < 1:
        sys.exit("--steps must be >= 2 and --repeats >= 1")
    if args.out and Path(args.out).exists():
        sys.exit(f"{args.out} already exists; remove it or choose another --out")
    from slimlm.precision import describe_cpu

    rounds = []
    for _ in range(args.repeats):
        measured = {}
        for arm in arms:
            start = time.time()
            measured[arm] = step_time(args.student, args.steps, ARMS[arm])
            print(f"{arm}: {measured[arm]['s_per_step']:.2f} s a step ({time.time() - start:.0f} s)", file=sys.stderr)
        rounds.append(measured)
    summary = {}
    for arm in arms:
        summary[arm] = {
            "s_per_step": statistics.median(r[arm]["s_per_step"] for r in rounds),
            "ratio_to_off_policy": statistics.median(
                r[arm]["s_per_step"] / r["off-policy"]["s_per_step"] for r in rounds
            ),
            "sampling_share": statistics.median(r[arm]["sampling_share"] for r in rounds),
        }
    result = {"cpu": describe_cpu(), "steps": args.steps, "repeats": args.repeats, "arms": summary, "rounds": rounds}
    print(f"CPU: {result['cpu']}; {args.steps} steps x {args.repeats} rounds, round-robin; medians")
    print("| arm | s a step | × off-policy | sampling share |\n|---|---:|---:|---:|")
    for arm, row in summary.items():
        print(f"| {arm} | {row['s_per_step']:.2f} | {row['ratio_to_off_policy']:.2f} | {row['sampling_share']:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
