"""Does distilling on the student's own text pay, at equal wall time? Off-policy KD (today), on-policy at λ = 0.5
and 1 (fresh rollouts, and each reused on 4 steps), and sequence-level KD, from the demo's student, scored on what
each student writes. One more control, off-policy for λ = 1's steps, parts what on-policy costs in steps from what it
does per step.

Every arm starts from the demo's student (`slimlm student --teacher smollm2-135m --layers 14`, built once in
--out) and trains with the demo's settings (online teacher, sotu,wikipedia, lr 6e-4, precision auto) for the
same quiet minutes (--minutes): its steps are minutes x 60 / its quiet seconds a step, read from the JSON
`bench/on_policy_bench.py` writes (--step-cost), so an arm whose steps cost more trains fewer of them. The
sequence-level arm gets the off-policy step count: the teacher's continuations are written once and cached,
and their one-off time is recorded beside the arm, not charged to it.

Each student is scored with `slimlm eval`'s protocol, as the teacher is (once): test perplexity and accuracy (sotu),
general-text perplexity, and `--generation`: the teacher's per-token NLL of what the student writes after 32
test prompts (sampled and greedy), distinct-2, rep-4, ROUGE-L against the teacher's own continuation, and the
same after 32 general-text prompts (Wikipedia's test split), the teacher loaded to score (`--generation-scorer`).
The on-policy arms use one divergence on the sampled tokens, picked first (--divergence-grid): each candidate
trains the λ = 1 arm at seed 0 for the same quiet minutes, and the one whose samples the teacher finds likeliest
(its per-token NLL of the student's sampled continuations of 32 *validation* prompts) wins; its run is reused
as seed 0 of "on-policy 1". Resumable: an arm whose result is in --out/results.json is skipped. Writes
results.json after every arm and table.md with each arm's mean over seeds and its paired difference by seed
against the off-policy arm, and paired.png, those differences drawn a dot a seed.

    python bench/on_policy_study.py --out runs/on-policy --step-cost docs/results/on-policy/step-cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the bench folder's shared modules
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_settings import DEMO  # noqa: E402

EVAL = {"data": "sotu", "repeats": 1, "new_tokens": 8, "generation": 32, "generation_tokens": 64}
# arm -> (distill settings on top of the demo's, the on_policy_bench arm whose step time it costs)
ARMS = {
    "off-policy": ({}, "off-policy"),
    "on-policy 0.5": ({"on_policy": 0.5}, "lambda 0.5"),
    "on-policy 1": ({"on_policy": 1.0}, "lambda 1"),
    # the setting that meets the step-cost target: each rollout trained on 4 steps, so more steps in the minutes
    "on-policy 1 reuse 4": ({"on_policy": 1.0, "rollout_reuse": 4}, "lambda 1 reuse 4"),
    "sequence-level": ({"teacher_generated": True}, "off-policy"),
    # off-policy for as many steps as λ = 1 trains (equal steps, not equal minutes): it tells what on-policy loses
    # by taking fewer steps in the minutes from what it does per step
    "off-policy equal steps": ({}, "lambda 1"),
}
ON_POLICY_ARMS = ("on-policy 0.5", "on-policy 1", "on-policy 1 reuse 4")
DIVERGENCES = ("forward", "reverse", "jsd", "sampled-reverse")  # --policy-divergence values the grid may try
# what each student writes after the test prompts, scored by the teacher (its own NLL of its samples: how flat it is)
WRITTEN = (
    "teacher_nll_sampled",
    "teacher_nll_greedy",
    "student_nll_sampled",
    "distinct_2",
    "rep_4",
    "rougeL_vs_teacher",
)
GENERAL = ("general_teacher_nll_sampled", "general_teacher_nll_greedy", "general_rougeL_vs_teacher")
METRICS = ("test_perplexity", "test_accuracy", "general_perplexity", *WRITTEN, *GENERAL)


def read_step_cost(path: str) -> dict:
    """{bench arm: quiet seconds a step} from on_policy_bench.py's JSON, or exit naming the fix."""
    try:
        arms = json.loads(Path(path).read_text())["arms"]
        return {name: float(row["s_per_step"]) for name, row in arms.items()}
    except FileNotFoundError:
        sys.exit(f"--step-cost {path} does not exist: run bench/on_policy_bench.py first")
    except (ValueError, KeyError, TypeError):
        sys.exit(f"--step-cost {path} is not the JSON bench/on_policy_bench.py writes")


def steps_for(arm: str, minutes: float, cost: dict, divergence: str | None = None) -> int:
    """The steps `arm` (with on-policy `divergence`) trains in `minutes` quiet minutes."""
    bench_arm = ARMS[arm][1]
    if divergence == "sampled-reverse" and arm in ON_POLICY_ARMS:
        bench_arm += " sampled-reverse"  # the per-token estimate costs its own step time
    if bench_arm not in cost:
        sys.exit(f"--step-cost has no '{bench_arm}' arm, needed for {arm}: rerun bench/on_policy_bench.py")
    return max(1, int(minutes * 60 / cost[bench_arm]))


def scores(report: dict, model: str) -> dict:
    m = report["results"][model]
    written, general = m["generation"], m.get("general_generation") or {}
    return {
        "test_perplexity": m["perplexity"],
        "test_accuracy": m["accuracy"],
        "general_perplexity": m.get("general_perplexity"),
        **{k: written.get(k) for k in WRITTEN},
        **{k: general.get(k.removeprefix("general_")) for k in GENERAL},
    }


def run_folder(results: dict, out: Path, name: str) -> Path:
    """Where arm `name`'s weights are: seed 0 of "on-policy 1" is the divergence grid's winning run."""
    arm = results["arms"][name]
    if arm["arm"] == "on-policy 1" and arm["seed"] == 0:
        return out / "arms" / results["divergence_grid"][results["divergence"]]["run"]
    return out / "arms" / name


def fill_in_student_nll(results: dict, out: Path, results_file: Path) -> None:
    """Arms scored before the student's own NLL of its samples was recorded get it from their weights, where they
    are still on disk: the test prompts and sampling seed of `slimlm eval --generation`, so the samples are the
    ones already scored, which the teacher's NLL of them, recomputed, must match."""
    from learning_curve import save
    from slimlm.data.corpus import prepare_data
    from slimlm.eval.generation import generation_metrics
    from slimlm.sources import load_model
    from slimlm.stages.evaluate import generation_prompts

    teacher_row = results.get("teacher")
    if teacher_row and teacher_row.get("student_nll_sampled") is None:  # the teacher's own text, by itself
        teacher_row["student_nll_sampled"] = teacher_row["teacher_nll_sampled"]
    missing = [n for n, r in results.get("arms", {}).items() if r.get("student_nll_sampled") is None]
    missing = [n for n in missing if (run_folder(results, out, n) / "config.json").exists()]
    if not missing:
        return

    teacher, tokenizer, _ = load_model(DEMO["teacher"])
    test = prepare_data(EVAL["data"], tokenizer, 256).test
    prompts = generation_prompts(test, EVAL["generation"])
    for name in missing:
        arm = results["arms"][name]
        student = load_model(str(run_folder(results, out, name)))[0]
        written = generation_metrics(student, teacher, prompts, new_tokens=EVAL["generation_tokens"])
        if abs(written["teacher_nll_sampled"] - arm["teacher_nll_sampled"]) > 1e-6 * arm["teacher_nll_sampled"]:
            print(f"{name}: its samples differ from the scored ones; its own NLL is left out", file=sys.stderr)
            continue
        arm["student_nll_sampled"] = written["student_nll_sampled"]
        save(results_file, results)


def validation_nll(model_dir: Path, prompts_of) -> float:
    """The teacher's per-token NLL of what the model in `model_dir` samples after the validation prompts."""
    from slimlm.eval.generation import generation_metrics
    from slimlm.sources import load_model

    student, tokenizer, _ = load_model(str(model_dir))
    teacher, prompts = prompts_of(tokenizer)
    written = generation_metrics(student, teacher, prompts, new_tokens=EVAL["generation_tokens"])
    return written["teacher_nll_sampled"]


def validation_prompts(tokenizer, n: int = EVAL["generation"]):
    """(teacher, n prompts spread evenly over the sotu validation split, as --generation takes them), loaded once."""
    from slimlm.data.corpus import prepare_data
    from slimlm.sources import load_model
    from slimlm.stages.evaluate import generation_prompts

    return load_model(DEMO["teacher"])[0], generation_prompts(prepare_data("sotu", tokenizer, 256).val, n)


def pick_divergence(args, results: dict, results_file: Path, cost: dict, student: Path) -> str:
    """Train λ = 1 at seed 0 with each --divergence-grid candidate for the same quiet minutes; the lowest teacher
    NLL of its samples on validation prompts wins (recorded in results['divergence_grid'])."""
    from learning_curve import save

    grid = results.setdefault("divergence_grid", {})
    cached = {}

    def prompts_of(tokenizer):
        return cached.setdefault("prompts", validation_prompts(tokenizer))

    for divergence in args.divergence_grid:
        if divergence in grid:
            continue
        run_dir = train(args, student, "on-policy 1", 0, cost, divergence, f"grid-{divergence}")
        grid[divergence] = {"run": run_dir.name, "validation_teacher_nll_sampled": validation_nll(run_dir, prompts_of)}
        save(results_file, results)
    best = min(args.divergence_grid, key=lambda d: grid[d]["validation_teacher_nll_sampled"])
    results["divergence"] = best
    save(results_file, results)
    return best


def train(args, student: Path, arm: str, seed: int, cost: dict, divergence: str | None, name: str) -> Path:
    """One distillation of `arm` at `seed` for its share of --minutes, into --out/arms/NAME. A study stopped
    mid-arm loses nothing finished: a run trained but not yet scored is scored as it is, and a killed run resumes
    from its last checkpoint."""
    import slimlm

    extra = {"policy_divergence": divergence} if divergence and arm in ON_POLICY_ARMS else {}
    steps = steps_for(arm, args.minutes, cost, divergence)
    out = Path(args.out) / "arms" / name
    done = out / "slimlm.json"
    if done.exists() and json.loads(done.read_text())["training"]["steps"] == steps:
        return out
    resume = out.with_name(out.name + ".partial").exists()
    return Path(
        slimlm.distill(
            student=str(student),
            max_steps=steps,
            seed=seed,
            out=str(out),
            force=True,
            resume=resume,
            **DEMO,
            **ARMS[arm][0],
            **extra,
        )
    )


def run(args, results: dict, results_file: Path) -> None:
    import slimlm
    from learning_curve import initial_student, save
    from slimlm.precision import describe_cpu

    out = Path(args.out)
    cost = read_step_cost(args.step_cost)
    student = initial_student(out, 0)
    arms = results.setdefault("arms", {})
    results.setdefault("protocol", {"minutes": args.minutes, "step_cost": cost, "demo": DEMO, "eval": EVAL})
    if "teacher" not in results:  # measured once: each arm's eval below only loads it, to score the writing
        results["teacher"] = scores(slimlm.evaluate([DEMO["teacher"]], **EVAL), DEMO["teacher"])
        save(results_file, results)
    divergence = results.get("divergence")  # a resumed study keeps the divergence its finished arms used
    if divergence is None and any(a in ON_POLICY_ARMS for a in args.arms):
        divergence = pick_divergence(args, results, results_file, cost, student)
    for seed in args.seeds:
        for arm in args.arms:
            name = f"{arm}-seed{seed}"
            if name in arms:
                continue
            start = time.time()
            if arm == "on-policy 1" and seed == 0:  # the grid's winning run is this arm's seed 0
                # trained again only where results.json came without its weights (a new machine): train() returns
                # a finished run as it is
                model = train(args, student, arm, 0, cost, divergence, results["divergence_grid"][divergence]["run"])
            else:
                model = train(args, student, arm, seed, cost, divergence, name)
            record = json.loads((Path(model) / "slimlm.json").read_text())["training"]
            report = slimlm.evaluate([str(model)], generation_scorer=DEMO["teacher"], **EVAL)
            arms[name] = {
                "arm": arm,
                "seed": seed,
                "steps": record["steps"],
                "tokens": record["tokens"],
                **scores(report, str(model)),
                "on_policy": record.get("on_policy"),
                "policy_divergence": divergence if arm in ON_POLICY_ARMS else None,
                "teacher_generated": record.get("teacher_generated"),
                "train_runtime_s": record["train_runtime_s"],
                "wall_s": round(time.time() - start, 1),
                "cpu": describe_cpu(),
            }
            save(results_file, results)
            print(
                f"{name}: {record['steps']} steps, teacher NLL of its samples {arms[name]['teacher_nll_sampled']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    fill_in_student_nll(results, out, results_file)  # arms scored before it was recorded


# the per-arm table's columns: (key, header, decimals, scale)
COLUMNS = (
    ("test_perplexity", "test perplexity", 2, 1),
    ("test_accuracy", "accuracy %", 1, 100),
    ("general_perplexity", "general-text perplexity", 2, 1),
    ("teacher_nll_sampled", "teacher NLL of its samples", 3, 1),
    ("teacher_nll_greedy", "of its greedy text", 3, 1),
    ("student_nll_sampled", "its own NLL of its samples", 3, 1),
    ("general_teacher_nll_sampled", "of its samples, general text", 3, 1),
    ("distinct_2", "distinct-2", 3, 1),
    ("rep_4", "rep-4", 3, 1),
    ("rougeL_vs_teacher", "ROUGE-L against the teacher", 3, 1),
)

# the paired differences the table lists and the plot draws: (key, words, lower is better)
PAIRED = (
    ("test_perplexity", "test perplexity (sotu)", True),
    ("teacher_nll_sampled", "teacher NLL of its samples (sotu)", True),
    ("teacher_nll_greedy", "teacher NLL of its greedy text (sotu)", True),
    ("general_teacher_nll_sampled", "teacher NLL of its samples (general text)", True),
    ("rougeL_vs_teacher", "ROUGE-L against the teacher's text (sotu)", False),
    ("rep_4", "rep-4: repeated 4-grams (sotu)", True),
)


def _mean_std(values: list[float], decimals: int, scale: float = 1.0) -> str:
    """mean ± std over seeds, or the value alone where one seed has finished."""
    mean = f"{scale * statistics.mean(values):.{decimals}f}"
    return mean + (f" ± {scale * statistics.stdev(values):.{decimals}f}" if len(values) > 1 else "")


def paired_cell(diffs: list[float], relative: bool) -> str:
    """A paired difference as the docs quote it: mean ± std over seeds and each seed's sign, e.g. +14.6 ± 2.0% (++)
    for a relative one, +0.219 ± 0.030 (++) for an absolute one."""
    scale, decimals, unit = (100, 1, "%") if relative else (1, 3, "")
    mean = round(scale * statistics.mean(diffs), decimals)  # rounded first: a mean that shows as 0 is +0, not −0
    spread = f" ± {scale * statistics.stdev(diffs):.{decimals}f}" if len(diffs) > 1 else ""
    signs = "".join("+" if d > 0 else "−" if d < 0 else "0" for d in diffs)  # as stats.paired writes them
    return f"{'−' if mean < 0 else '+'}{abs(mean):.{decimals}f}{spread}{unit} ({signs})"


def table(results: dict) -> str:
    """Each arm's mean ± std over seeds (the teacher's own scores first), the divergence the on-policy arms used,
    each arm's paired difference by seed against the off-policy arm, and λ = 1's against off-policy for its steps
    (per step): what the results page quotes."""
    arms = results.get("arms", {})
    names = [a for a in ARMS if any(r["arm"] == a for r in arms.values())]
    head = "| arm | seeds | steps | " + " | ".join(words for _, words, _, _ in COLUMNS) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(COLUMNS)]
    if teacher := results.get("teacher"):
        # its ROUGE-L is against its own text: 1 by construction, so left out
        cells = [
            f"{scale * teacher[k]:.{d}f}" if teacher.get(k) is not None and k != "rougeL_vs_teacher" else "–"
            for k, _, d, scale in COLUMNS
        ]
        lines.append("| teacher | – | – | " + " | ".join(cells) + " |")
    for arm in names:
        rows = sorted((r for r in arms.values() if r["arm"] == arm), key=lambda r: r["seed"])
        cells = []
        for key, _, decimals, scale in COLUMNS:
            values = [r[key] for r in rows if r.get(key) is not None]
            cells.append(_mean_std(values, decimals, scale) if values else "–")
        lines.append(f"| {arm} | {len(rows)} | {rows[0]['steps']} | " + " | ".join(cells) + " |")
    if results.get("divergence"):
        picked = results["divergence_grid"]
        nll = ", ".join(f"{d} {g['validation_teacher_nll_sampled']:.3f}" for d, g in picked.items())
        lines += ["", f"On-policy divergence: {results['divergence']} (teacher NLL of validation samples: {nll})."]
    controls = [("off-policy", [a for a in names if a != "off-policy"])]
    if "off-policy equal steps" in names and "on-policy 1" in names:  # per step: the same steps, not the same minutes
        controls.append(("off-policy equal steps", ["on-policy 1"]))
    for control, arms_paired in controls:
        if not arms_paired:
            continue
        lines += [
            "",
            f"Paired by seed against {control} (arm − {control}; perplexity relative; mean ± std over seeds, and"
            " each seed's sign):",
            "",
            "| arm | seeds | " + " | ".join(words for _, words, _ in PAIRED) + " |",
            "|---|---:|" + "---:|" * len(PAIRED),
        ]
        for arm in arms_paired:
            seeds = len(paired_by_seed(results, arm, "test_perplexity", control))
            cells = []
            for key, _, _ in PAIRED:
                diffs = [d for _, d in paired_by_seed(results, arm, key, control)]
                cells.append(paired_cell(diffs, key.endswith("perplexity")) if diffs else "–")
            lines.append(f"| {arm} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_by_seed(results: dict, arm: str, key: str, control: str = "off-policy") -> list[tuple[int, float]]:
    """(seed, arm − control) for every seed both arms have; a perplexity as a relative difference."""
    arms = results.get("arms", {})
    out = []
    for seed in sorted({r["seed"] for r in arms.values()}):
        a, off = arms.get(f"{arm}-seed{seed}"), arms.get(f"{control}-seed{seed}")
        if a and off and a.get(key) is not None and off.get(key) is not None:
            diff = a[key] / off[key] - 1 if key.endswith("perplexity") else a[key] - off[key]
            out.append((seed, diff))
    return out


def plot(results: dict, path: Path) -> None:
    """One panel a metric: each arm's difference from the off-policy arm of the same seed (a dot a seed, a bar at
    their mean), so a reader sees at once whether every seed agrees; the better side is named on each panel."""
    from matplotlib.figure import Figure

    names = [a for a in ARMS if a != "off-policy" and any(r["arm"] == a for r in results.get("arms", {}).values())]
    fig = Figure(figsize=(13, 7), layout="constrained")
    for ax, (key, words, lower) in zip(fig.subplots(2, 3).flat, PAIRED):
        for i, arm in enumerate(names):
            pairs = paired_by_seed(results, arm, key)
            scale = 100 if key == "test_perplexity" else 1
            values = [d * scale for _, d in pairs]
            if values:
                ax.bar(i, statistics.mean(values), color=f"C{i}", alpha=0.4)
                ax.scatter([i] * len(values), values, color=f"C{i}", zorder=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(names)), labels=[textwrap.fill(n, 12) for n in names], fontsize=8)
        unit = "%" if key == "test_perplexity" else ""
        ax.set_ylabel(
            f"arm − off-policy{' (' + unit + ')' if unit else ''}; {'lower' if lower else 'higher'} is better"
        )
        ax.set_title(words, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    minutes = (results.get("protocol") or {}).get("minutes")
    fig.suptitle(
        "Paired by seed against off-policy KD"
        + (f", {minutes:g} quiet minutes of training each" if minutes else "")
        + (" (off-policy equal steps: λ = 1's steps)" if "off-policy equal steps" in names else "")
        + "; dots: seeds, bars: their mean"
    )
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the arms, results.json and table.md")
    p.add_argument("--step-cost", required=True, help="the JSON bench/on_policy_bench.py writes")
    p.add_argument("--minutes", type=float, default=14.0, help="quiet minutes of training per arm (default 14)")
    p.add_argument("--seeds", default="0,1", help="comma list (default 0,1)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list among: {', '.join(ARMS)}")
    p.add_argument(
        "--divergence-grid",
        default="forward,reverse,jsd",
        help=f"on-policy divergences tried at λ = 1, seed 0 (comma list among: {', '.join(DIVERGENCES)})",
    )
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"--seeds {args.seeds}: give whole numbers, e.g. 0,1")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := [a for a in args.arms if a not in ARMS]:
        sys.exit(f"unknown arm(s) {unknown}; choose among {', '.join(ARMS)}")
    if "off-policy" not in args.arms:
        args.arms.insert(0, "off-policy")  # the control every difference is paired against
    args.divergence_grid = [d.strip() for d in args.divergence_grid.split(",") if d.strip()]
    unknown = [d for d in args.divergence_grid if d not in DIVERGENCES]
    if not args.divergence_grid or unknown:
        given = ",".join(unknown) or "(empty)"
        sys.exit(f"--divergence-grid {given}: give a comma list among {', '.join(DIVERGENCES)}")
    if not args.minutes > 0:
        sys.exit("--minutes must be > 0")
    cost = read_step_cost(args.step_cost)  # every step cost a run could need, checked before anything trains
    for arm in args.arms:
        for divergence in args.divergence_grid if arm in ON_POLICY_ARMS else [None]:
            steps_for(arm, args.minutes, cost, divergence)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    run(args, results, results_file)
    (out / "table.md").write_text(table(results))
    plot(results, out / "paired.png")
    print(table(results))
    print(f"plot: {out / 'paired.png'}")


if __name__ == "__main__":
    main()
