"""The few setting values that are small languages of their own (a recipe file, a duration, a layer map), each
read in one place with a one-line error that shows how to write it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from slimlm.errors import SlimlmError
from slimlm.settings.fields import show


def parse_layer_map(spec, n_teacher, n_student):
    """'6:3,12:6' -> [(6, 3), (12, 6)]: teacher hidden-state index : student hidden-state index.

    Index i is HF `output_hidden_states[i]`: 0 = embeddings, i = output of decoder layer i-1, n = last layer.
    Empty or None -> [] (no feature distillation).
    """
    if spec is None or not str(spec).strip():
        return []
    pairs = []
    for item in str(spec).split(","):
        item = item.strip()
        parts = item.split(":")
        try:
            t, s = (int(p) for p in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            t = s = None
        if t is None:
            raise SlimlmError(
                f"bad layer-map entry {item!r} in {spec!r}: write teacher:student pairs of "
                "hidden-state indices, e.g. '6:3,12:6'"
            )
        if not 0 <= t <= n_teacher:
            raise SlimlmError(
                f"teacher index {t} in {spec!r} is out of range: use 0..{n_teacher} "
                f"(0 = embeddings, {n_teacher} = last layer)"
            )
        if not 0 <= s <= n_student:
            raise SlimlmError(
                f"student index {s} in {spec!r} is out of range: use 0..{n_student} "
                f"(0 = embeddings, {n_student} = last layer)"
            )
        pairs.append((t, s))
    return pairs


def general_off(data) -> bool:
    """Whether `--general-data` turns general-text scoring off ("none", any case; None as in a recipe)."""
    return data is None or str(data).strip().lower() == "none"


def parse_duration(value) -> float:
    """--max-time: "90s", "15m", "1.5h", "1h30m" or a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
        if not text or parts is None or not any(parts.groups()):
            raise SlimlmError(f"--max-time {value!r} is not a duration; write e.g. 90s, 15m, 1.5h or 1h30m")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise SlimlmError(f"--max-time must be a positive duration (got {value!r}); write e.g. 15m")
    return seconds


def load_recipe(path: str | Path) -> dict:
    """Read a YAML recipe (a mapping of setting -> value) with a clear error for every way it can be wrong."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SlimlmError(f"recipe {path} does not exist; check the path")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SlimlmError(f"recipe {path} is not valid YAML ({type(exc).__name__}); fix its syntax") from None
    except RecursionError:  # a hostile or broken file nested thousands deep
        raise SlimlmError(
            f"recipe {path} is nested too deeply to read; a recipe is a flat mapping of setting: value"
        ) from None
    except OSError as exc:
        raise SlimlmError(f"recipe {path} cannot be read ({exc.strerror}); check its permissions") from None
    if not isinstance(values, dict):
        raise SlimlmError(f"recipe {path} must be a mapping of setting: value")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise SlimlmError(
            f"recipe {path}: key {show(bad[0])} is not a setting name; write name: value "
            "(quote the name if YAML reads it as a number or true/false)"
        )
    return {k.replace("-", "_"): v for k, v in values.items()}


def with_overrides(recipe: dict, explicit: dict, recipe_name: str = "the recipe") -> dict:
    """The one precedence rule of every stage: an explicit keyword or flag > the recipe > the default. Each
    value a keyword changes from the recipe's is said in one line, the same way everywhere."""
    from slimlm.distributed import log

    explicit = {k: v for k, v in explicit.items() if v is not None}
    for key in sorted(set(recipe) & set(explicit)):
        if recipe[key] != explicit[key]:
            flag = "--" + key.replace("_", "-")
            log(f"{flag} {explicit[key]} overrides {recipe_name}'s {key}: {recipe[key]}")
    return {**recipe, **explicit}
