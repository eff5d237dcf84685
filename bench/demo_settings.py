"""The demo's distillation settings, shared by the studies and timings that start from the demo's student, and
one timed distillation with them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

# the teacher, training text, learning rate and precision of `make demo` (the rest are distill's defaults)
DEMO = {"teacher": "smollm2-135m", "data": "sotu,wikipedia", "learning_rate": 6e-4, "precision": "auto"}


def timed_distill(student: str, steps: int, **settings) -> dict:
    """slimlm.json's `training` record of `steps` demo steps from `student` (plus `settings`), in a temporary
    folder: train_runtime_s is the Trainer's, so the optimizer, logging and the first step count as in a run."""
    import slimlm

    with tempfile.TemporaryDirectory() as tmp:
        model = slimlm.distill(student=student, max_steps=steps, out=f"{tmp}/d", eval_tokens=256, **DEMO, **settings)
        return json.loads((Path(model) / "slimlm.json").read_text())["training"]
