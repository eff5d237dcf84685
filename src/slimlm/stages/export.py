"""Stage `export`: write a model as one GGUF file (methods/gguf.py) and say how much smaller it got."""

from __future__ import annotations

from pathlib import Path

from slimlm.methods.gguf import export_gguf
from slimlm.sources import resolve_model


def export(model, *, out, type: str = "f16", force: bool = False) -> Path:
    """Resolve `model` like every other command does, export it, and say how much smaller it got."""
    model_dir = resolve_model(model)
    path = export_gguf(model_dir, out, type=type, force=force)
    before = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e6
    after = path.stat().st_size / 1e6
    print(f"slimlm: exported {path} ({type}): {before:.1f} MB safetensors -> {after:.1f} MB gguf")
    return path
