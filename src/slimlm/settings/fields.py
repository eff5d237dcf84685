"""What every command's settings share: a field declares its default, its help and its checks once, and the
CLI flag (settings/flags.py), the type check of a recipe value and the one-line error all come from it.

This is TRL's GKDConfig style (`field(default=..., metadata={"help": ...})`, validated in one method), with
the checks that slimlm's users hit most declared in the metadata, so a command's `check()` keeps only the
rules that tie several fields together.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, field, fields

from slimlm.errors import SlimlmError

_TYPE_WORDS = {
    "float": "a finite number",
    "int": "an integer",
    "str": "a string (quote it in YAML)",
    "bool": "true or false",
    "dict": "a mapping",
    "list": "a list",
    "None": "null",
}


def option(default=None, help: str = "", **meta):
    """A settings field: its default, its help text, and optional metadata:

    flag="--name" (the CLI spelling, default --field-name), cli=False (a recipe/Python-only setting),
    group=... (the --help section the flag is listed in, settings/groups.py; default the advanced one),
    positional=True, choices=(...), minimum=N (an integer >= N), non_negative=True (a finite number >= 0),
    hint="; ..." (appended to the field's range error), corpus=True (a --data value: data/mix.py checks
    its weights), layer_list=True (a YAML list becomes "0,1,2"),
    nargs/const/metavar (argparse), aliases={"--no-bf16": "fp32"} (flags that store a constant),
    also=("--other-name",) (more spellings of the same flag, taking the same value),
    one_of="group" (flags of which exactly one is required), kinds=(...) (experiment kinds that take the
    flag), per_kind={kind: (flag, help, default)} (a flag spelled, explained and defaulted per experiment kind).
    """
    return field(default=default, metadata={"help": help, **meta})


def flag_of(f) -> str:
    """The CLI spelling of a field, used by the parser and by every error message about it."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def finite(value) -> bool:
    """NaN compares False with everything, so `nan < 0` lets it through a plain range check."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value: float) -> str:
    """A float as a person writes it in a help text: 2, 0.5, 3e-4 (not 0.0003 or 5e-05)."""
    if value and abs(value) < 1e-3 and float(f"{value:.0e}") == value:
        return f"{value:.0e}".replace("e-0", "e-")
    return f"{value:g}"


def show(value) -> str:
    """A value for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_positive_int(name: str, value, *, minimum: int = 1, hint: str = "") -> None:
    """The one check behind every count a user gives (`--block-size`, `--repeats`, ...): an int, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SlimlmError(f"--{name.lstrip('-').replace('_', '-')} must be {what} (got {value!r}){hint}")


def check_non_negative(name: str, value) -> None:
    if not (finite(value) and value >= 0):
        raise SlimlmError(f"--{name.lstrip('-').replace('_', '-')} must be >= 0 and finite (got {value})")


def comma_list(value) -> list[str]:
    """ "a, b,,c" or ["a", "b"] -> ["a", "b", "c"]: the one parser of comma lists (tasks, methods, modules)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [item.strip() for item in items if item.strip()]


def as_layer_list(value):
    """`keep_layers: [0, 1, 2]` or `cache_layers: 8` in a recipe -> "0,1,2" / "8", the flags' form."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    return value


def matches(value, annotation: str) -> bool:
    """Does `value` fit a field annotation such as "float", "int | None" or "dict | str | None"?"""
    for kind in (k.strip() for k in str(annotation).split("|")):
        if kind == "None" and value is None:
            return True
        if kind == "bool" and isinstance(value, bool):
            return True
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind == "float" and finite(value):
            return True
        if kind == "str" and isinstance(value, (str, os.PathLike)):
            return True
        if kind == "dict" and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return True
        if kind == "list" and isinstance(value, (list, tuple)):
            return True
    return False


def describe(annotation: str) -> str:
    return " or ".join(_TYPE_WORDS.get(k.strip(), k.strip()) for k in str(annotation).split("|"))


class Settings:
    """The base of every command's settings dataclass: built from a recipe or keyword arguments with
    `from_dict`, checked with `validate()` (types, then each field's own checks, then `check()`)."""

    def check(self) -> None:
        """Rules that tie several fields together; a command's settings override it."""

    def validate(self):
        self.check_types(asdict(self))
        for f in fields(self):
            check_field(f, getattr(self, f.name))
        self.check()
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        from slimlm.precision import from_legacy

        if not isinstance(values, dict):
            raise SlimlmError(f"settings must be a mapping of setting: value (got {show(values)})")
        bad_keys = [k for k in values if not isinstance(k, str)]
        if bad_keys:
            raise SlimlmError(f"setting name {show(bad_keys[0])} is not a name; write settings as name: value")
        values = from_legacy(values)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SlimlmError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}  # Path -> str
        values = {k: as_layer_list(v) if known[k].metadata.get("layer_list") else v for k, v in values.items()}
        cls.check_types(values)
        return cls(**values)

    @classmethod
    def check_types(cls, values: dict) -> None:
        """Each value against its field's annotation, so a recipe's `temperature: hot` is one line, not a
        TypeError deep in training. Ints pass for floats; bools pass only for bools; floats must be finite."""
        known = {f.name: f for f in fields(cls)}
        for name, value in values.items():
            f = known.get(name)
            if f is not None and not matches(value, f.type):
                on_cli = f.metadata.get("cli", True) and not f.metadata.get("positional")
                where = f" ({flag_of(f)})" if on_cli else ""
                raise SlimlmError(
                    f"setting {name}{where} must be {describe(f.type)} (got {show(value)}); "
                    "fix it in the recipe or on the command line"
                )


def check_field(f, value) -> None:
    """A field's own checks, declared in its metadata: choices, integer minimum, non-negative number."""
    meta = f.metadata
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise SlimlmError(
            f"{flag_of(f)} must be one of {', '.join(map(str, choices))} (got {value!r}){meta.get('hint', '')}"
        )
    if meta.get("minimum") is not None:
        check_positive_int(flag_of(f), value, minimum=meta["minimum"], hint=meta.get("hint", ""))
    if meta.get("non_negative"):
        check_non_negative(flag_of(f), value)
    if meta.get("corpus"):
        from slimlm.data.mix import check_data_spec

        check_data_spec(value, flag_of(f))
