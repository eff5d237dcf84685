"""A study's free setting, picked on the validation split before its arms run.

A comparison run at values nobody measured compares those values, not the methods: LoRA moves few weights and
wants a larger learning rate than full fine-tuning (the paper's Fig. 3), and feature distillation's weight β
sets how much the feature loss pulls against the logits (Fig. 2). So with `--lr-grid 0.2,1,5` (fine-tuning:
multiples of each method's default rate) or `--weight-grid 0.1,1,10` (feature layers: β of the middle layer's
arm), each candidate first trains once (seed 0), the validation perplexity the stage records after training
decides, and the arms then run every seed at the pick. The test split plays no part in the choice.

Resumable like the arms: each (group, value) is one folder under GRID/ and one entry of GRID.json, and the
winning folder is seed 0 of the arm it was trained as, copied rather than trained again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from slimlm.distributed import log
from slimlm.experiments.layout import read_json
from slimlm.output import staging_dir, write_json_atomic
from slimlm.settings.training import FINETUNE_LEARNING_RATES

SPLIT = "validation"  # what distill and finetune score after training (slimlm.json metrics.validation_after)
GRIDS = {"lr-grid": "learning rate", "weight-grid": "feature weight β"}  # name -> the setting it picks


def lr_rates(methods: list[str], multipliers: list[float]) -> dict[str, list[float]]:
    """Each method's learning rates: its default (settings FINETUNE_LEARNING_RATES) times every multiplier."""
    return {m: [float(f"{FINETUNE_LEARNING_RATES[m] * k:.3g}") for k in multipliers] for m in methods}


def _folder(run_dir: Path, grid: str, group: str, value: float) -> Path:
    return run_dir / grid / f"{group}-{value:g}"


def pick(run_dir: Path, grid: str, candidates: dict[str, list[float]], train: Callable) -> dict[str, float]:
    """Train what is missing of `candidates` ({group: values}, seed 0) with `train(group, value, out, resume)`,
    record each run's validation perplexity in GRID.json, and pick per group the value with the lowest."""
    path = run_dir / f"{grid}.json"
    record = read_json(path) if path.exists() else {"setting": GRIDS[grid], "split": SPLIT, "seed": 0, "scores": {}}
    for group, values in candidates.items():
        scores = record["scores"].setdefault(group, {})
        for value in values:
            if f"{value:g}" in scores:
                continue
            out = _folder(run_dir, grid, group, value)
            if not (out / "slimlm.json").exists():
                log(f"{GRIDS[grid]} grid: {group} at {value:g} (seed 0, scored on the {SPLIT} split)")
                train(group, value, out, staging_dir(out).exists())
            scores[f"{value:g}"] = read_json(out / "slimlm.json")["metrics"]["validation_after"]["perplexity"]
            write_json_atomic(path, record, force=True)
    record["picked"] = {g: float(min(s, key=s.get)) for g, s in record["scores"].items() if g in candidates}
    write_json_atomic(path, record, force=True)
    log(f"{GRIDS[grid]} picked on the {SPLIT} split: " + ", ".join(f"{g} {v:g}" for g, v in record["picked"].items()))
    return record["picked"]


def reuse_seed0(run_dir: Path, grid: str, group: str, value: float, out: Path) -> bool:
    """Seed 0 of the arm a grid run was trained as: copy that run instead of training it again."""
    source = _folder(run_dir, grid, group, value)
    if not (source / "slimlm.json").exists() or out.exists():
        return False
    tmp = out.with_name(out.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    tmp.rename(out)
    log(f"{out.name}: the {GRIDS[grid]} grid's seed-0 run at {value:g}, reused")
    return True


def read_grids(run_dir: Path) -> dict:
    """The grids a run folder holds, by name, for the report."""
    return {g: read_json(run_dir / f"{g}.json") for g in GRIDS if (run_dir / f"{g}.json").exists()}


def grid_lines(grids: dict | None) -> list[str]:
    """The report's table per grid: every value tried, its validation perplexity, and the pick."""
    lines = []
    for record in (grids or {}).values():
        setting = record["setting"]
        lines += [
            f"### {setting[0].upper()}{setting[1:]}, picked on the {record['split']} split",
            "",
            f"Each candidate trained once (seed {record['seed']}); the lowest {record['split']} perplexity picked "
            "the value every seed of its arms then used. The test split played no part.",
            "",
            f"| trained as | {setting} | {record['split']} perplexity | picked |",
            "|---|---:|---:|---|",
        ]
        for group, scores in record["scores"].items():
            picked = (record.get("picked") or {}).get(group)
            for value, ppl in sorted(scores.items(), key=lambda kv: float(kv[0])):
                mark = "yes" if picked is not None and float(value) == picked else ""
                lines.append(f"| {group} | {float(value):g} | {ppl:.2f} | {mark} |")
        lines.append("")
    return lines


def grid_notes(kind: str, grid: dict | None) -> list[str]:
    """Where a validation grid sets a value, the settings shown for the arms do not: say which wins."""
    if not grid:
        return []
    what = "every feature arm's β (feature_weight)" if kind == "feature-layer" else "each method's learning rate"
    return [
        f"{what} is the value picked on the validation split (the table of the grid below the results), not the "
        "one in the arms' or base settings"
    ]
