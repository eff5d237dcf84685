"""What a write needs from the disk: room checked before the work, and one line when a write fails.

Every writer (a model's publish, a teacher cache entry, a GGUF file, a report) reports a failed write through
`write_problem`, so a full disk reads the same everywhere: which path, how much room is left, and the fix; and
work whose size is known up front (a student's weights, a teacher cache entry) checks `require_space` first.
"""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

from safetensors import SafetensorError

from slimlm.errors import SlimlmError

WRITE_FAULTS = (OSError, SafetensorError)  # safetensors raises its own error for a failed write of weights


def is_disk_full(exc: BaseException) -> bool:
    """A failed write that means a full disk (or quota): the errno, safetensors' wording, or a short write
    (`N requested and M written`, as numpy's tofile reports it)."""
    text = str(exc)
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    return (
        getattr(exc, "errno", None) in codes
        or "No space left" in text
        or "StorageFull" in text
        or re.search(r"\d+ requested and \d+ written", text) is not None
    )


def existing_folder(path: str | Path) -> Path:
    """`path`, or its nearest ancestor that exists: the folder whose disk a result at `path` would land on."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def free_space(path: str | Path) -> str:
    """ ", N MiB free on the disk holding FOLDER" for the nearest existing folder of `path`, or "" if unknown."""
    folder = existing_folder(path)
    try:
        return f", {shutil.disk_usage(folder).free / 2**20:,.0f} MiB free on the disk holding {folder}"
    except OSError:
        return ""


def require_space(path: str | Path, needed: int, what: str, *, fix: str = "choose --out on another disk") -> None:
    """Refuse, before the work, a result of `needed` bytes that the disk holding `path` has no room for."""
    folder = existing_folder(path)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # unknown: the write itself will say
    if needed > free:
        raise SlimlmError(
            f"{what} needs about {needed / 2**20:,.0f} MiB but the disk holding {folder} has {free / 2**20:,.0f} "
            f"MiB free; free some space or {fix}"
        )


def write_problem(path: str | Path, exc: BaseException, *, fix: str = "choose another --out") -> str:
    """One line for a failed write: the problem (a full disk, a read-only disk, or the system's reason) and the
    fix. Every writer (models, teacher cache entries, GGUF files, reports) reports through this one function."""
    if is_disk_full(exc):
        return f"disk full while writing {path}{free_space(path)}; free some space or {fix}"
    if getattr(exc, "errno", None) == errno.EROFS:
        return f"cannot write {path}: its disk is read-only; {fix}"
    text = str(exc)
    reason = getattr(exc, "strerror", None) or (text.splitlines()[0][:200] if text.strip() else type(exc).__name__)
    return f"cannot write {path} ({reason}); free some space or fix the folder, or {fix}"
