"""A model folder's config.json, read so that a damaged file is named as damaged (not mistaken for a model
that needs custom code). Below every layer that reads model folders: the sources that load models and the
methods that write them (GGUF export) both use it."""

from __future__ import annotations

import json
from pathlib import Path

from slimlm.errors import SlimlmError


def read_config_json(path: Path) -> dict:
    """The folder's config.json as a mapping; a damaged one is named as such (not as a custom-code model)."""
    file = Path(path) / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SlimlmError(f"cannot read {file} ({exc.strerror}); check its permissions") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise SlimlmError(
            f"{file} is not valid JSON{where}; restore it from the model's source or save the model again"
        ) from None
    if not isinstance(config, dict):
        raise SlimlmError(f"{file} is not a JSON object of model settings; restore it from the model's source")
    return config
