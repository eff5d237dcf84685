"""Stage `export`: write a model as one GGUF file (methods/gguf.py) and say how much smaller it got."""

from __future__ import annotations

from pathlib import Path

from slimlm.methods.gguf import export_gguf
from slimlm.settings import ExportSettings
from slimlm.sources import resolve_model


def export(model, *, out, force: bool = False, **settings) -> Path:
    """Resolve `model` like every other command does, export it, and say how much smaller it got.

    `settings` are ExportSettings' fields (slimlm.settings: type, format), with their defaults there."""
    s = ExportSettings.from_dict({**settings, "model": model, "out": out, "force": force}).validate()
    model_dir = resolve_model(s.model)
    path = export_gguf(model_dir, s.out, type=s.type, force=s.force)
    before = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e6
    after = path.stat().st_size / 1e6
    print(f"slimlm: exported {path} ({s.type}): {before:.1f} MB safetensors -> {after:.1f} MB gguf")
    return path
