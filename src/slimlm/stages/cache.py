"""Stage `cache`: list the teacher cache's entries with what they hold and their size, or remove some.

The teacher cache (training/teacher_cache.py) grows by one entry per (teacher, blocks, temperature) that a run
distilled with `--teacher-cache`; this is how a user sees what it costs on disk and frees it.
"""

from __future__ import annotations

import time

from slimlm.distributed import log
from slimlm.settings import CacheSettings


def cache(action: str = "list", keys: list | None = None, *, all: bool = False) -> list[dict]:
    """`slimlm cache list` prints the entries (and returns them); `slimlm cache remove KEY... | --all` deletes."""
    from slimlm.training.teacher_cache import list_entries, remove_entries, teacher_root

    s = CacheSettings.from_dict({"action": action, "keys": list(keys or []), "all": all}).validate()
    entries = list_entries()
    if s.action == "list":
        print(_table(entries) if entries else f"no teacher cache entries in {teacher_root()}")
        return entries
    try:
        freed = remove_entries([e["key"] for e in entries] if s.all else s.keys)
    except ValueError as exc:  # a key that names no entry, or several
        from slimlm.errors import SlimlmError

        raise SlimlmError(str(exc)) from None
    log(f"removed; freed {freed / 2**20:.1f} MiB from {teacher_root()}")
    return list_entries()


def _table(entries: list[dict]) -> str:
    rows = [("key", "mode", "tau", "B/position", "positions", "layers", "MiB", "last used")]
    for e in entries:
        rows.append(
            (
                e["key"],
                str(e.get("mode", "?")),
                f"{e['temperature']:g}" if "temperature" in e else "-",
                f"{e['bytes_per_position']} B/position" if "bytes_per_position" in e else "?",
                f"{e['positions']:,}" if "positions" in e else "?",
                ",".join(map(str, e.get("hidden_layers", []))) or "-",
                f"{e['bytes'] / 2**20:.1f}",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"])),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    total = sum(e["bytes"] for e in entries) / 2**20
    return "\n".join(lines + [f"{len(entries)} entries, {total:.1f} MiB"])
