"""Every stage's result: a Hugging Face model directory plus `slimlm.json` and a model card.

Work happens in `OUT.partial/` (training checkpoints live there too) and is renamed to `OUT`
only when the stage has finished, so a crash never leaves a half-written result that looks
complete, and an existing result is only replaced when the user passes --force.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

from slimlm.errors import SlimlmError


def staging_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def claim_output(out: str | Path, *, force: bool = False, resume: bool = False) -> Path:
    """Check, before any work starts, that `out` may be written; return its staging directory."""
    out = Path(out)
    if out.exists() and not force:
        raise SlimlmError(f"output {out} already exists; pass --force to replace it or choose another --out")
    parent = out.resolve().parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise SlimlmError(f"cannot create the output's parent folder {parent} ({exc.strerror}); "
                              "choose a writable --out") from None
    if not os.access(parent, os.W_OK):
        raise SlimlmError(f"output folder {parent} is not writable; choose a writable --out")
    stage = staging_dir(out)
    if stage.exists() and not resume:
        if not force:
            raise SlimlmError(f"an interrupted run left {stage}; pass --resume to continue it or --force to start over")
        shutil.rmtree(stage)
    stage.mkdir(exist_ok=True)
    return stage


def discard_if_unstarted(stage: Path) -> None:
    """After a failure, remove a staging area that holds no checkpoint (nothing worth resuming)."""
    if stage.exists() and not any((stage / "checkpoints").glob("checkpoint-*")):
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, out: Path, model=None, tokenizer=None, record: dict | None = None,
            card: str | None = None, files: dict[str, str] | None = None) -> Path:
    """Write the model, its record and card into the staging area, then move it to `out` in one rename."""
    final = stage / "result"  # a stage may have written files here already (e.g. packed weights)
    final.mkdir(exist_ok=True)
    if model is not None:
        model.save_pretrained(final, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(final)
    if record is not None:
        record = {"slimlm_version": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "machine": {"python": platform.python_version(), "platform": platform.platform()}, **record}
        (final / "slimlm.json").write_text(json.dumps(record, indent=2, default=str))
    if card is not None:
        (final / "README.md").write_text(card)
    for name, text in (files or {}).items():
        (final / name).write_text(text)
    out = Path(out)
    if out.exists():
        trash = out.with_name(out.name + ".old")
        shutil.rmtree(trash, ignore_errors=True)
        out.rename(trash)
        final.rename(out)
        shutil.rmtree(trash)
    else:
        final.rename(out)
    shutil.rmtree(stage, ignore_errors=True)
    return out


def write_json_atomic(path: Path, data: dict, *, force: bool = False) -> None:
    path = Path(path)
    if path.exists() and not force:
        raise SlimlmError(f"{path} already exists; pass --force to replace it or choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def model_card(title: str, record: dict, metrics_table: str | None = None) -> str:
    """A short model card: what this is, how it was made, how it scores, how to load it."""
    settings = record.get("settings", {})
    lines = [f"# {title}", "", "Made with [slimlm](https://github.com/) — "
             f"stage `{record.get('stage')}`.", "", "## How it was made", ""]
    lines += [f"- {key}: `{value}`" for key, value in settings.items() if value not in (None, "", False)]
    data = record.get("data")
    if data:
        lines += ["", "## Data", "", f"- corpus: `{data.get('corpus')}`; split {data.get('rule')}",
                  f"- tokens: train {data['train']['tokens']:,}, validation {data['val']['tokens']:,}, "
                  f"test {data['test']['tokens']:,}"]
    if metrics_table:
        lines += ["", "## Measured", "", "```", metrics_table, "```"]
    lines += ["", "## Load", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained('PATH')",
              "tokenizer = AutoTokenizer.from_pretrained('PATH')", "```", ""]
    return "\n".join(lines)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("slimlm")
    except Exception:
        return "unknown"
