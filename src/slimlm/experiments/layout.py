"""Where an experiment keeps what: the one contract between the runners and `slimlm report`.

    RUN_DIR/
      experiment.json          kind, parameter, arms, seeds, protocol (written before any arm runs)
      references/NAME.json     models measured once for comparison (teacher, starting student):
                               {"name", "model_dir", "metrics": {...}, "wall_time_s"}
      results/ARM/seedS.json   one finished (arm, seed): {"arm", "value", "seed", "model_dir",
                               "metrics": {...}, "training": {...}, "wall_time_s"}
      arms/ARM-seedS/          the arm's model directory (a normal slimlm stage output)
      baselines/NAME/          the teacher's quantized copies (baselines.py), measured as references/NAME.json
      students/AXIS/           student-shape: each arm's starting student, measured as references/student-AXIS.json
      report.md, report.html, report.json, plots/*.png   (written by `slimlm report`)

`metrics` is flat: perplexity, accuracy, bits_per_byte, decode_tokens_per_s, prefill_tokens_per_s,
size_on_disk_mb, parameters, inference_memory_mib, and downstream scores such as
cloze_exact_match when measured. An (arm, seed) is finished exactly when its results file exists,
which is what lets a rerun skip it.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimlm.errors import SlimlmError

EXPERIMENT_FILE = "experiment.json"
RUN_PREFIX = "{run}/"  # a path inside the run folder, as the spec writes it (so a moved folder still continues)


def experiment_file(run_dir: Path) -> Path:
    return Path(run_dir) / EXPERIMENT_FILE


def result_file(run_dir: Path, arm: str, seed: int) -> Path:
    return Path(run_dir) / "results" / arm / f"seed{seed}.json"


def reference_file(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "references" / f"{name}.json"


def arm_dir(run_dir: Path, arm: str, seed: int) -> Path:
    return Path(run_dir) / "arms" / f"{arm}-seed{seed}"


def baseline_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "baselines" / name


def student_dir(run_dir: Path, axis: str) -> Path:
    return Path(run_dir) / "students" / axis


def in_run(value, run_dir: Path):
    """A setting written as "{run}/..." (a path inside the run folder) as the real path; anything else as it is."""
    if isinstance(value, str) and value.startswith(RUN_PREFIX):
        return str(Path(run_dir) / value[len(RUN_PREFIX) :])
    return value


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SlimlmError(f"cannot read {path} ({type(exc).__name__}); rerun the experiment to rewrite it") from None


def load_run(run_dir: str | Path) -> dict:
    """The experiment spec with its finished results and references: what `slimlm report` reads."""
    run_dir = Path(run_dir)
    spec_path = experiment_file(run_dir)
    if not spec_path.is_file():
        raise SlimlmError(
            f"{run_dir} is not an experiment folder (no {EXPERIMENT_FILE}); "
            "give the --out of `slimlm experiment` or `slimlm pipeline`"
        )
    spec = read_json(spec_path)
    results = {}
    for arm in spec["arms"]:
        results[arm["name"]] = [read_json(p) for p in sorted((run_dir / "results" / arm["name"]).glob("seed*.json"))]
    references = {p.stem: read_json(p) for p in sorted((run_dir / "references").glob("*.json"))}
    return {"spec": spec, "results": results, "references": references}
