"""Crash-safe training checkpoints.

The Trainer writes checkpoint-N file by file; a crash (SIGKILL, power loss, full disk) can leave a
folder that looks like a checkpoint but is not one. slimlm's trainer therefore saves into
`checkpoints/.saving/checkpoint-N`, then `commit_checkpoint` fsyncs every file, writes a completion
record (every file's size) and renames the folder to `checkpoints/checkpoint-N` in one step. A resume
takes the newest checkpoint whose record verifies and moves damaged ones aside, to `damaged-N`: a name
that transformers' checkpoint glob (`checkpoint-*`, used by save_total_limit's rotation) does not match.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from slimlm.output import CHECKPOINT_NAME

CHECKPOINT_RECORD = "slimlm-checkpoint.json"
SAVING_DIR = ".saving"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def commit_checkpoint(saved: Path, final: Path, step: int) -> Path:
    """Make the checkpoint in `saved` durable, record what it holds, and rename it to `final` atomically."""
    # the Trainer pickles its TrainingArguments here; nothing reads it back, and loading it would need an
    # unrestricted unpickler, so it is not kept (optimizer/scheduler/RNG states load with weights_only=True)
    (saved / "training_args.bin").unlink(missing_ok=True)
    files = {}
    for path in sorted(saved.rglob("*")):
        if path.is_file() and path.name != CHECKPOINT_RECORD:
            _fsync(path)
            files[path.relative_to(saved).as_posix()] = path.stat().st_size
    tmp = saved / (CHECKPOINT_RECORD + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({"step": step, "files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(saved / CHECKPOINT_RECORD)
    _fsync(saved)
    if final.exists():  # the same step saved by an earlier attempt (a resume repeats the steps after its checkpoint)
        old = final.with_name("replaced-" + final.name.removeprefix("checkpoint-"))  # not `checkpoint-*`
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        saved.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        saved.rename(final)
    _fsync(final.parent)
    return final


def checkpoint_problem(path: Path) -> str | None:
    """None if `path` is a complete checkpoint (its record verifies), else what is wrong with it."""
    record = path / CHECKPOINT_RECORD
    if not record.is_file():
        return "it has no completion record (its save was interrupted)"
    try:
        files = json.loads(record.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"its completion record {CHECKPOINT_RECORD} is unreadable"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        actual = file.stat().st_size
        if actual != size:
            return (
                f"{name} is truncated ({actual} of {size} bytes)"
                if actual < size
                else f"{name} has {actual} bytes, the record says {size}"
            )
    return None


def last_good_checkpoint(folder: Path, log=print) -> Path | None:
    """The newest checkpoint in `folder` that verifies; damaged newer ones are renamed `damaged-N` (logged),
    out of the way of transformers' rotation (`checkpoint-*`) and of `discard_if_unstarted`."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT_NAME.match(p.name))]
    for step, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        broken = path.with_name(f"damaged-{step}")
        shutil.rmtree(broken, ignore_errors=True)
        path.rename(broken)
        log(f"skipping {path.name}: {problem}; moved it to {broken.name} and trying the one before")
    return None
