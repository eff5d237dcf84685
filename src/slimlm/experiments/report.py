"""`slimlm report RUN_DIR`: turn an experiment folder (see layout.py) into report.md, report.html,
report.json and plots/*.png, with the paper's numbers beside ours (compare.py; the figures: plots.py; the
opening verdict: verdict.py; the markdown: render.py; the HTML page: webpage.py).

Honesty rules: every number shown is in report.json; std is the sample std over seeds (ddof=1, null
for one seed; stats.py); missing arms and seeds are listed, never hidden; the paper's levels are not
comparable with ours (see paper.ACCURACY_CAVEAT), so the comparison speaks of rankings, shapes and seed
spread. Agreement sentences are computed from the numbers, never written in advance. A study the paper does not
have (paper.NO_COUNTERPART: student-shape) says so and gets its frontier table instead (frontier.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from slimlm.disk import WRITE_FAULTS, write_problem
from slimlm.errors import SlimlmError
from slimlm.experiments.compare import paper_comparison
from slimlm.experiments.frontier import frontier_rows
from slimlm.experiments.layout import load_run
from slimlm.experiments.paired import paired_differences
from slimlm.experiments.plots import draw_plots
from slimlm.experiments.render import render_markdown
from slimlm.experiments.round_robin import read_round_robin
from slimlm.experiments.stats import SPREAD_NOTE, STD_NOTE, finite, summarize, summarize_block
from slimlm.experiments.validation_grid import read_grids
from slimlm.experiments.verdict import verdict
from slimlm.experiments.webpage import render_html

REPORT_FILES = ("report.md", "report.html", "report.json")
KIND_TITLES = {
    "temperature": "KD temperature sweep (paper Table 1)",
    "feature-layer": "feature-distillation layer sweep (paper Figure 2)",
    "finetune": "LoRA vs full fine-tuning (paper Figure 3)",
    "pipeline": "the whole compression pipeline",
    "student-shape": "student shape at a parameter budget: depth, width or both (no paper counterpart)",
    "data-mix": "training text: in-domain, general or a mix, scored on both (no paper counterpart)",
}
FRONTIER_KINDS = ("student-shape",)  # kinds whose report has the frontier table (frontier.py)


# ---------------------------------------------------------------- numbers


def arm_summary(arm: dict, results: list[dict], seeds: list[int]) -> dict:
    """Everything the report says about one arm: which seeds exist, their metric summaries and wall time."""
    found = sorted(r.get("seed") for r in results)
    walls = [(r.get("seed"), r.get("wall_time_s")) for r in results]
    return {
        "name": arm["name"],
        "value": arm.get("value"),
        "label": arm.get("label", arm["name"]),
        "settings": arm.get("settings", {}),
        **({"control": arm["control"]} if arm.get("control") else {}),  # beside the sweep, not on it (control.py)
        "seeds": found,
        "missing_seeds": [s for s in seeds if s not in found],
        # seeds whose decode rate includes the prefill (eval/metrics.py decode_note): their tok/s is rougher
        "decode_rough_seeds": sorted(r.get("seed") for r in results if (r.get("metrics") or {}).get("decode_note")),
        "metrics": summarize_block(results, "metrics"),
        "training": summarize_block(results, "training"),
        "wall_time_s": summarize(walls),
        "total_wall_time_s": float(sum(v for _, v in walls if finite(v))),
    }


def reference_summary(ref: dict) -> dict:
    """A reference's numbers, with what it is where its record says (a baseline's build, a student's shape)."""
    return {
        "name": ref.get("name"),
        "model_dir": ref.get("model_dir"),
        **{k: ref[k] for k in ("baseline", "student") if ref.get(k)},
        "metrics": {k: float(v) for k, v in (ref.get("metrics") or {}).items() if finite(v)},
        "decode_rough": bool((ref.get("metrics") or {}).get("decode_note")),
        "unrepacked": str((ref.get("metrics") or {}).get("weight_repacking", "on")).startswith("off"),
        "wall_time_s": float(ref["wall_time_s"]) if finite(ref.get("wall_time_s")) else None,
    }


KEPT_METRICS = ("perplexity", "accuracy", "general_perplexity", "general_accuracy")


def teacher_ratios(arms: list[dict], references: dict) -> dict:
    """Each arm's mean over seeds divided by the teacher's, in domain and on general text: how much of the
    teacher a student kept where it was trained and elsewhere (eval/general.py)."""
    teacher = (references.get("teacher") or {}).get("metrics") or {}
    ratios = {}
    for arm in arms:
        row = {
            key: arm["metrics"][key]["mean"] / teacher[key]
            for key in KEPT_METRICS
            if teacher.get(key) and (arm["metrics"].get(key) or {}).get("mean") is not None
        }
        if row:
            ratios[arm["name"]] = row
    return ratios


def timing(arms: list[dict], references: dict) -> dict:
    """Wall time per arm (all its seeds) and for the whole experiment, from the recorded wall_time_s."""
    per_arm = {a["name"]: a["total_wall_time_s"] for a in arms}
    per_ref = {n: r["wall_time_s"] for n, r in references.items() if r["wall_time_s"] is not None}
    return {
        "arms_s": per_arm,
        "references_s": per_ref,
        "arms_total_s": sum(per_arm.values()),
        "references_total_s": sum(per_ref.values()),
        "total_s": sum(per_arm.values()) + sum(per_ref.values()),
    }


def compute_summary(run: dict) -> list[str]:
    """Each distinct precision decision (with its reason) and CPU the arms were trained with, in words;
    more than one line means arms ran on different machines or settings, which the reader must know."""
    seen = []
    for record in (r for rs in run["results"].values() for r in rs):
        compute = record.get("compute") or {}
        precision, cpu = compute.get("precision"), compute.get("cpu") or {}
        if not precision:
            continue
        where = f" on {cpu.get('model', '?')} ({cpu.get('capability', '?')})" if cpu else ""
        line = f"{precision.get('dtype')} ({precision.get('reason')}){where}"
        if line not in seen:
            seen.append(line)
    return seen


def downstream_protocol(run: dict) -> dict:
    """How the downstream sets were built and scored, as the first measured model recorded it (same for all)."""
    records = [r for rs in run["results"].values() for r in rs] + list(run["references"].values())
    for record in records:
        found = (record.get("metrics") or {}).get("downstream_protocol")
        if isinstance(found, dict):
            return {task: {k: v for k, v in (p or {}).items() if k != "seconds"} for task, p in found.items()}
    return {}


def build_report(run: dict, run_dir: Path) -> dict:
    """Every number the report shows, in one JSON-able dict."""
    spec = run["spec"]
    seeds = list(spec.get("seeds", []))
    arms = [arm_summary(a, run["results"].get(a["name"], []), seeds) for a in spec["arms"]]
    references = {n: reference_summary(r) for n, r in run["references"].items()}
    report = {
        "run_dir": str(run_dir),
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": spec["kind"],
        "title": KIND_TITLES.get(spec["kind"], spec["kind"]),
        "command": spec.get("command"),
        "created": spec.get("created"),
        "slimlm_version": spec.get("slimlm_version"),
        "parameter": spec.get("parameter", {}),
        "seeds": seeds,
        "protocol": spec.get("protocol", {}),
        "downstream_protocol": downstream_protocol(run),
        "compute": compute_summary(run),
        "std": STD_NOTE,
        "spread": SPREAD_NOTE,
        "arms": arms,
        "missing": {
            "arms": [a["name"] for a in arms if not a["seeds"]],
            "seeds": {a["name"]: a["missing_seeds"] for a in arms if a["missing_seeds"]},
        },
        "references": references,
        "timing": timing(arms, references),
        "teacher_ratios": teacher_ratios(arms, references),
        "paired": paired_differences(arms, spec),
        "validation_grids": read_grids(run_dir),
        **({"round_robin": speeds} if (speeds := read_round_robin(run_dir)) else {}),
        **({"frontier": frontier_rows(arms, references, spec)} if spec["kind"] in FRONTIER_KINDS else {}),
        "paper": paper_comparison(arms, spec, references),
        "plots": [],
    }
    report["verdict"] = verdict(report)  # from the numbers above, as report.json holds them
    return report


# ---------------------------------------------------------------- writing


def report(run_dir: str, force: bool = False) -> None:
    """The `slimlm report RUN_DIR` command: validate its settings, write the report, say where."""
    from slimlm.distributed import log
    from slimlm.settings import ReportSettings

    s = ReportSettings.from_dict({"run_dir": run_dir, "force": force}).validate()
    write_report(s.run_dir, force=s.force)
    log(f"wrote {Path(s.run_dir) / 'report.md'} and report.html")


def write_report(run_dir, *, force: bool = False) -> dict:
    """Write report.md, report.html, report.json and plots/*.png into RUN_DIR; return what report.json holds.
    Built in a temporary folder inside RUN_DIR and renamed into place, so a crash never leaves half a report."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    existing = [n for n in REPORT_FILES if (run_dir / n).exists()]
    if existing and not force:
        raise SlimlmError(f"{run_dir / existing[0]} already exists: pass --force to overwrite the report")
    report = build_report(run, run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=run_dir))
    try:
        report["plots"] = draw_plots(report, run["spec"], tmp / "plots")
        write_files(report, tmp)
        install(tmp, run_dir)
    except WRITE_FAULTS as exc:  # a full disk: one line, and the temporary folder goes below
        raise SlimlmError(write_problem(run_dir, exc, fix="rerun the report once there is room")) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def write_files(report: dict, folder: Path) -> None:
    md_text = render_markdown(report)
    (folder / "report.json").write_text(
        json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (folder / "report.md").write_text(md_text, encoding="utf-8")
    (folder / "report.html").write_text(render_html(report), encoding="utf-8")


def install(tmp: Path, run_dir: Path) -> None:
    """Move the finished files into place: plots first, report.md last, since report.md's existence is
    what marks a report as written."""
    old = run_dir / "plots"
    if old.exists():
        os.replace(old, tmp / "old-plots")
    if (tmp / "plots").exists():
        os.replace(tmp / "plots", old)
    for name in ("report.json", "report.html", "report.md"):
        os.replace(tmp / name, run_dir / name)
