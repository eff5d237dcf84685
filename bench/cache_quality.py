"""Does the teacher cache change what the student learns? Same student, same blocks, same budget: the online
teacher against the sampled cache (the default, unbiased) and the top-k cache (biased), at tau 1, 2 and 10.

Each arm distils the built-in teacher into the same 14-layer student for --tokens training tokens and is
measured on the test split (perplexity and next-token accuracy, `slimlm eval`'s protocol, fp32). Resumable:
an arm whose result file exists is skipped, so rerunning the command continues where a stopped run ended;
results go to --out/results.json and a markdown table to --out/table.md.

    python bench/cache_quality.py --out runs/cache-quality            # 3 taus x 3 teachers x 2 seeds
    python bench/cache_quality.py --out runs/cache-quality --taus 2 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

TEACHERS = {  # arm name: distill settings for the teacher's signal
    "online": {},
    "sampled": {"teacher_cache": True, "cache_mode": "sample"},
    "top-k": {"teacher_cache": True, "cache_mode": "topk", "top_k": 128},
    # 4x the default draws (256 bytes a position): the sampled estimate's gradient variance per position is
    # about tau^2 / draws, so at high tau more draws is the lever (not run unless named in --teachers)
    "sampled-127": {"teacher_cache": True, "cache_mode": "sample", "cache_draws": 127},
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the arms, results.json and table.md")
    p.add_argument("--taus", default="1,2,10")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--tokens", type=int, default=100_000, help="training tokens per arm (default 100000)")
    p.add_argument("--eval-tokens", type=int, default=16384, help="test tokens scored per arm")
    p.add_argument(
        "--teachers", default="online,sampled,top-k", help=f"which teacher signals, of: {', '.join(TEACHERS)}"
    )
    args = p.parse_args(argv)

    import slimlm
    from slimlm.precision import describe_cpu

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    student = out / "student-init"
    if not (student / "slimlm.json").exists():
        slimlm.make_student(teacher="smollm2-135m", data="sotu", layers=14, out=str(student), force=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for tau in [float(t) for t in args.taus.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.teachers.split(","):
                arm = f"{name}-t{tau:g}-seed{seed}"
                if arm in results:
                    continue
                start = time.time()
                model = slimlm.distill(
                    teacher="smollm2-135m",
                    student=str(student),
                    data="sotu",
                    temperature=tau,
                    seed=seed,
                    max_tokens=args.tokens,
                    learning_rate=6e-4,
                    out=str(out / "arms" / arm),
                    force=True,
                    **TEACHERS[name],
                )
                report = slimlm.evaluate([str(model)], data="sotu", repeats=1, new_tokens=8)
                metrics = report["results"][str(model)]
                record = json.loads((model / "slimlm.json").read_text())
                results[arm] = {
                    "teacher": name,
                    "tau": tau,
                    "seed": seed,
                    "tokens": record["training"]["tokens"],
                    "test_perplexity": metrics["perplexity"],
                    "test_accuracy": metrics["accuracy"],
                    "cache": record["training"].get("teacher_cache_storage"),
                    "precision": record["precision"]["dtype"],
                    "cpu": describe_cpu(),
                    "wall_s": round(time.time() - start, 1),
                }
                results_file.write_text(json.dumps(results, indent=1))
                print(f"{arm}: test perplexity {metrics['perplexity']:.2f}", file=sys.stderr, flush=True)
    (out / "table.md").write_text(table(results, args))
    print(table(results, args))


def table(results: dict, args) -> str:
    """Mean ± sample std over seeds per (tau, teacher signal)."""
    lines = [
        f"Protocol: built-in teacher (smollm2-135m) -> 14-layer student, sotu, {args.tokens:,} training tokens, "
        "lr 6e-4, alpha 0.5; test split, window 256, fp32. CPU: "
        + (next(iter(results.values()))["cpu"] if results else "?"),
        "",
        "| tau | teacher signal | seeds | test perplexity | next-token accuracy |",
        "|---:|---|---:|---:|---:|",
    ]
    groups = {}
    for r in results.values():
        groups.setdefault((r["tau"], r["teacher"]), []).append(r)
    for (tau, name), rows in sorted(groups.items()):
        ppl = [r["test_perplexity"] for r in rows]
        acc = [r["test_accuracy"] for r in rows]
        spread = lambda v, digits=2: f" ± {statistics.stdev(v):.{digits}f}" if len(v) > 1 else ""
        lines.append(
            f"| {tau:g} | {name} | {len(rows)} | {statistics.mean(ppl):.2f}{spread(ppl)} | "
            f"{statistics.mean(acc):.4f}{spread(acc, 4)} |"
        )
    lines += [
        "",
        "Paired by seed (the same blocks in the same order): test perplexity of each cached arm / the online arm "
        "of the same tau and seed.",
        "",
        "| tau | teacher signal | per seed | mean |",
        "|---:|---|---|---:|",
    ]
    online = {(r["tau"], r["seed"]): r["test_perplexity"] for r in results.values() if r["teacher"] == "online"}
    for (tau, name), rows in sorted(groups.items()):
        ratios = [r["test_perplexity"] / online[tau, r["seed"]] for r in rows if (tau, r["seed"]) in online]
        if name != "online" and ratios:
            each = ", ".join(f"{x:.3g}" for x in ratios)
            lines.append(f"| {tau:g} | {name} | {each} | {statistics.mean(ratios):.3g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
