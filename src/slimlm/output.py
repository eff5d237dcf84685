"""Every stage's result: a Hugging Face model directory plus `slimlm.json` and a model card.

Work happens in `OUT.partial/` (training checkpoints live there too) and is renamed to `OUT`
only when the stage has finished, so a crash never leaves a half-written result that looks
complete, and an existing result is only replaced when the user passes --force.

One output, one writer: a process writing OUT holds an advisory lock (flock) on `OUT.lock` beside it, so
a second slimlm process on the same OUT is refused (even with --force, which would otherwise delete the
first one's staging area). The kernel drops the lock when its holder dies, even by SIGKILL, so a lock file
left behind never blocks the next run. Windows has no flock: there two runs on one OUT are not detected.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path

from slimlm.disk import WRITE_FAULTS, write_problem
from slimlm.errors import SlimlmError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see the module docstring)
    fcntl = None


# a committed training checkpoint folder (training/checkpoints.py); `discard_if_unstarted` keeps a stage holding one
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def staging_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def lock_path(out: str | Path) -> Path:
    """Beside OUT, not inside: --force deletes OUT and OUT.partial, and the lock must outlive both."""
    out = Path(out).resolve()
    return out.with_name(out.name + ".lock")


_held: dict[str, int] = {}  # lock files this process holds -> their descriptors
_owner = os.getpid()  # a forked child inherits _held but must not remove its parent's lock files at exit


def lock_output(out: str | Path) -> bool:
    """Become the one process writing `out`, or raise naming the process that is; True if newly locked.

    Re-entry is fine: a process that already holds `out` gets False (and must not release it then)."""
    out = Path(out)
    parent = out.resolve().parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise SlimlmError(
                f"cannot create the output's parent folder {parent} ({exc.strerror}); choose a writable --out"
            ) from None
    path = lock_path(out)
    if fcntl is None or str(path) in _held:
        return False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SlimlmError(
                f"output folder {parent} is not writable ({exc.strerror}); choose a writable --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"another slimlm process (pid {pid})" if pid.isdigit() else "another slimlm process"
            raise SlimlmError(f"{who} is writing {out}; wait for it to finish or choose another --out") from None
        except OSError:  # a file system without flock (some network mounts): go on unlocked
            os.close(fd)
            return False
        try:  # the holder may have removed the file between our open and lock: then lock the new one
            current = os.stat(path)
            mine = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[str(path)] = fd
    return True


def release_output(out: str | Path) -> None:
    """Stop being the writer of `out`: remove the lock file (while still holding it), then unlock."""
    _unlock(str(lock_path(out)))


def _unlock(path: str) -> None:
    fd = _held.pop(path, None)
    if fd is not None:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


@atexit.register
def _release_all() -> None:
    """A stage that never published (or an experiment's run folder, held to the end) unlocks at exit."""
    if os.getpid() == _owner:
        for path in list(_held):
            _unlock(path)


def claim_output(out: str | Path, *, force: bool = False, resume: bool = False, resumable: bool = True) -> Path:
    """Lock `out`, then check, before any work starts, that it may be written; return its staging directory.
    `resumable`: the stage has --resume (training stages), so a stale staging folder's advice may name it.

    The lock is held until `publish` or `discard_if_unstarted` (or process exit). Under torchrun/accelerate
    only rank 0 calls this (see `slimlm.distributed.on_main`)."""
    out = Path(out)
    # the lock first: a live run's staging area must never be judged, resumed or deleted
    return under_lock(out, lambda: _check_output(out, force, resume, resumable))


def under_lock(out: str | Path, check):
    """Lock `out`, then run `check()`; if it fails, give the lock back (when this call took it)."""
    locked = lock_output(out)
    try:
        return check()
    except BaseException:
        if locked:
            release_output(out)
        raise


@contextlib.contextmanager
def claimed(out: str | Path, *, force: bool = False, resume: bool = False):
    """`with claimed(OUT) as stage:` claim OUT (claim_output), work in `stage`, and on any failure drop the
    staging area unless it holds work to resume (discard_if_unstarted). Training stages, which claim on
    rank 0 only, use training/launch.py's run_training_stage instead."""
    stage = claim_output(out, force=force, resume=resume, resumable=False)
    try:
        yield stage
    except BaseException:
        discard_if_unstarted(stage)
        raise


def _check_output(out: Path, force: bool, resume: bool, resumable: bool) -> Path:
    if out.exists() and not force:
        raise SlimlmError(f"output {out} already exists; pass --force to replace it or choose another --out")
    parent = out.resolve().parent
    if not os.access(parent, os.W_OK):
        raise SlimlmError(f"output folder {parent} is not writable; choose a writable --out")
    stage = staging_dir(out)
    if stage.exists() and not resume:
        if not force:
            advice = "pass --resume to continue it or " if resumable else "pass "
            advice += "--force to start over"
            raise SlimlmError(f"an interrupted run left {stage}; {advice}")
        shutil.rmtree(stage)
    try:  # the real test: os.access says yes to root on a read-only (immutable, read-only mount) folder
        stage.mkdir(exist_ok=True)
        probe = stage / ".slimlm-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SlimlmError(f"output folder {parent} is not writable ({exc.strerror}); choose a writable --out") from None
    return stage


def discard_if_unstarted(stage: Path) -> None:
    """After a failure, remove a staging area that holds no checkpoint (nothing worth resuming; damaged
    checkpoints, moved aside as `damaged-N`, do not count), and give up the lock on its output.

    A staging area that another live process is writing into is left alone."""
    stage = Path(stage)
    out = stage.with_name(stage.name.removesuffix(".partial"))
    if stage.exists():
        try:
            lock_output(out)  # a no-op when this process holds it already
        except SlimlmError:
            return
        folder = stage / "checkpoints"
        if not (folder.is_dir() and any(CHECKPOINT_NAME.match(p.name) for p in folder.iterdir())):
            shutil.rmtree(stage, ignore_errors=True)
    release_output(out)


def publish(
    stage: Path,
    out: Path,
    model=None,
    tokenizer=None,
    record: dict | None = None,
    card: str | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Write the model, its record and card into the staging area, then move it to `out` in one rename.

    A write that fails (full disk, I/O error) becomes one line; the half-written result is removed and the
    staging area too, unless it holds training checkpoints for --resume."""
    out = Path(out)
    final = stage / "result"  # a stage may have written files here already (e.g. packed weights)
    try:
        final.mkdir(exist_ok=True)
        if model is not None:
            model.save_pretrained(final, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(final)
        if record is not None:
            record = {
                "slimlm_version": slimlm_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {"python": platform.python_version(), "platform": platform.platform()},
                **record,
            }
            (final / "slimlm.json").write_text(json.dumps(record, indent=2, default=str))
        if card is not None:
            (final / "README.md").write_text(card)
        for name, text in (files or {}).items():
            (final / name).write_text(text)
        _move_into_place(final, out)
    except WRITE_FAULTS as exc:
        shutil.rmtree(final, ignore_errors=True)
        discard_if_unstarted(stage)
        raise SlimlmError(write_problem(out, exc)) from None
    shutil.rmtree(stage, ignore_errors=True)
    release_output(out)
    return out


def _move_into_place(final: Path, out: Path) -> None:
    """Rename `final` to `out`; an existing `out` (--force) is replaced, and put back if that fails."""
    if not out.exists():
        final.rename(out)
        return
    trash = out.with_name(out.name + ".old")
    shutil.rmtree(trash, ignore_errors=True)
    out.rename(trash)
    try:
        final.rename(out)
    except OSError:
        trash.rename(out)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def write_json_atomic(path: Path, data: dict, *, force: bool = False) -> None:
    """Write through a temporary file and a rename, so `path` is either the old file or the whole new one."""
    path = Path(path)
    if path.exists() and not force:
        raise SlimlmError(f"{path} already exists; pass --force to replace it or choose another --out")
    tmp = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise SlimlmError(write_problem(path, exc)) from None


def model_card(title: str, record: dict, metrics_table: str | None = None) -> str:
    """A short model card: what this is, how it was made, how it scores, how to load it."""
    settings = record.get("settings", {})
    lines = [
        f"# {title}",
        "",
        f"Made with [slimlm](https://github.com/) — stage `{record.get('stage')}`.",
        "",
        "## How it was made",
        "",
    ]
    lines += [f"- {key}: `{value}`" for key, value in settings.items() if value not in (None, "", False)]
    data = record.get("data")
    if data:
        lines += [
            "",
            "## Data",
            "",
            f"- corpus: `{data.get('corpus')}`; split {data.get('rule')}",
            f"- tokens: train {data['train']['tokens']:,}, validation {data['val']['tokens']:,}, "
            f"test {data['test']['tokens']:,}",
        ]
    if metrics_table:
        lines += ["", "## Measured", "", "```", metrics_table, "```"]
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained('PATH')",
        "tokenizer = AutoTokenizer.from_pretrained('PATH')",
        "```",
        "",
    ]
    return "\n".join(lines)


def slimlm_version() -> str:
    """The installed slimlm version, recorded in every slimlm.json and experiment run."""
    try:
        from importlib.metadata import version

        return version("slimlm")
    except Exception:
        return "unknown"
