"""The fine-tuning study's learning rates, picked on the validation split.

The paper's Fig. 3 compares LoRA with full fine-tuning; run each at a rate nobody measured and the study
compares rates, not methods (LoRA moves few weights and wants a larger rate than full fine-tuning). So with
`--lr-grid 0.2,1,5` every method first trains once (seed 0) at each multiple of its default rate, the
validation perplexity the stage records after training decides, and the arms then run every seed at their
method's pick. The test split is never seen by the choice.

Resumable like the arms: each (method, rate) is one folder under lr-grid/ and one entry of lr-grid.json; the
winning folder is seed 0 of its arm, copied rather than trained again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from slimlm.distributed import log
from slimlm.experiments.layout import read_json
from slimlm.output import staging_dir, write_json_atomic
from slimlm.settings.training import FINETUNE_LEARNING_RATES

GRID_FILE = "lr-grid.json"
GRID_DIR = "lr-grid"
SPLIT = "validation"  # what FinetuneSettings' in-training evaluation scores (stages/finetune.py)


def grid_rates(methods: list[str], multipliers: list[float]) -> dict[str, list[float]]:
    """Each method's rates: its default (settings FINETUNE_LEARNING_RATES) times every multiplier."""
    return {m: [float(f"{FINETUNE_LEARNING_RATES[m] * k:.3g}") for k in multipliers] for m in methods}


def _folder(run_dir: Path, method: str, rate: float) -> Path:
    return run_dir / GRID_DIR / f"{method}-lr{rate:g}"


def pick_rates(run_dir: Path, grid: dict[str, list[float]], train: Callable[[str, float, Path, bool], None]) -> dict:
    """Train what is missing of the grid (seed 0), record each run's validation perplexity, and pick per
    method the rate with the lowest. `train(method, rate, out, resume)` runs one fine-tuning."""
    path = run_dir / GRID_FILE
    record = read_json(path) if path.exists() else {"split": SPLIT, "seed": 0, "scores": {}}
    for method, rates in grid.items():
        scores = record["scores"].setdefault(method, {})
        for rate in rates:
            if f"{rate:g}" in scores:
                continue
            out = _folder(run_dir, method, rate)
            if not (out / "slimlm.json").exists():
                log(f"learning-rate grid: {method} at {rate:g} (seed 0, scored on the {SPLIT} split)")
                train(method, rate, out, staging_dir(out).exists())
            after = read_json(out / "slimlm.json")["metrics"]["validation_after"]
            scores[f"{rate:g}"] = after["perplexity"]
            write_json_atomic(path, record, force=True)
    record["picked"] = {m: float(min(s, key=s.get)) for m, s in record["scores"].items() if m in grid}
    write_json_atomic(path, record, force=True)
    picked = ", ".join(f"{m} {r:g}" for m, r in record["picked"].items())
    log(f"learning rates picked on the {SPLIT} split: {picked}")
    return record["picked"]


def reuse_seed0(run_dir: Path, method: str, rate: float, out: Path) -> bool:
    """Seed 0 of an arm is the grid's run at the picked rate: copy it instead of training it again."""
    source = _folder(run_dir, method, rate)
    if not (source / "slimlm.json").exists() or out.exists():
        return False
    tmp = out.with_name(out.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    tmp.rename(out)
    log(f"{out.name}: the learning-rate grid's seed-0 run at {rate:g}, reused")
    return True


def grid_lines(record: dict | None) -> list[str]:
    """The report's table: every rate tried, its validation perplexity, and the pick."""
    if not record:
        return []
    lines = [
        f"### Learning rate of each method, picked on the {record['split']} split",
        "",
        f"Each method trained once (seed {record['seed']}) at every rate below; the lowest {record['split']} "
        "perplexity picked the rate every seed of its arm then used. The test split played no part.",
        "",
        "| method | learning rate | validation perplexity | picked |",
        "|---|---:|---:|---|",
    ]
    for method, scores in record["scores"].items():
        picked = (record.get("picked") or {}).get(method)
        for rate, ppl in sorted(scores.items(), key=lambda kv: float(kv[0])):
            mark = "yes" if picked is not None and float(rate) == picked else ""
            lines.append(f"| {method} | {float(rate):g} | {ppl:.2f} | {mark} |")
    return lines + [""]
