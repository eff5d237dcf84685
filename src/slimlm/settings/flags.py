"""argparse flags generated from the settings dataclasses, so a flag's name, default and help exist once.

Why not transformers.HfArgumentParser: it spells flags as the field names (--block_size, where slimlm's flags
have always been --block-size), turns booleans into `--flag {true,false}` options and has no place for
slimlm's aliases (--no-bf16, eval's --bf16), per-kind spellings (experiment --values/--layers/--methods),
the optional-value --fsdp or a required either/or pair (--layers/--keep-layers). This is those few rules.

Every option defaults to None (a switch to False), whatever the setting's default: the parsed namespace then
holds only what was typed, the CLI passes that on, and the settings dataclass fills in the rest. So a recipe
value is overridden only by a flag actually given, and the CLI cannot disagree with the Python API about a
default. The help text shows the dataclass's default.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from slimlm.settings.fields import flag_of, number
from slimlm.settings.groups import ADVANCED, ORDER


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None  # the range: the settings'


def json_or_file(text: str) -> dict:
    """--student-config: inline JSON or a path to a .json/.yaml file."""
    import yaml

    path = Path(text)
    try:
        raw = path.read_text(encoding="utf-8") if path.is_file() else text
        value = yaml.safe_load(raw)
    except Exception:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a readable file nor JSON") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a mapping such as '{{\"intermediate_size\": 768}}'")
    return value


def cli_fields(settings_type, kind: str | None = None) -> list:
    """The fields that are flags (or positionals) of a command, in the dataclass's order: the fields it shares
    with other commands (the training settings' base) first, so a --help section opens with the common flags."""
    return [
        f
        for f in fields(settings_type)
        if f.metadata.get("cli", True)
        and not f.metadata.get("subcommand")
        and (kind is None or kind in f.metadata.get("kinds", (kind,)))
    ]


def add_settings(parser: argparse.ArgumentParser, *settings_types, kind: str | None = None) -> None:
    """Add one argument per settings field of `settings_types` (an experiment's flags depend on its `kind`),
    each in its help section (settings/groups.py), the sections in the order a user reads them."""
    chosen = [f for settings_type in settings_types for f in cli_fields(settings_type, kind)]
    sections, exclusive = {}, {}
    # stable: within a section the positionals (typed first) lead, then the fields in their declared order
    for f in sorted(chosen, key=lambda f: (ORDER.index(section_of(f)), not f.metadata.get("positional"))):
        name = section_of(f)
        if name not in sections:
            sections[name] = parser.add_argument_group(name)
        _add_field(sections[name], f, kind, exclusive)


def section_of(f) -> str:
    """The help section a field's flag is listed in; a field that names none is an advanced one."""
    return f.metadata.get("group", ADVANCED)


def _add_field(section, f, kind: str | None, exclusive: dict) -> None:
    """One field's argument (and its aliases) in `section`; `exclusive` holds the one_of groups made so far."""
    meta = f.metadata
    flag, help_text, default = flag_of(f), meta.get("help", ""), f.default
    if "per_kind" in meta:
        flag, help_text, default = meta["per_kind"][kind]
    if meta.get("positional"):
        # not typed: None ("?") or absent ("*"), so the field's default applies
        extra = {"?": {"default": None}, "*": {"default": argparse.SUPPRESS}}.get(meta.get("nargs"), {})
        choices, metavar = meta.get("choices"), None if meta.get("choices") else f.name.upper()
        section.add_argument(f.name, nargs=meta.get("nargs"), help=help_text, choices=choices, metavar=metavar, **extra)
        return
    target = section
    if meta.get("one_of"):  # one of these flags is required, and only one
        if meta["one_of"] not in exclusive:
            exclusive[meta["one_of"]] = section.add_mutually_exclusive_group(required=True)
        target = exclusive[meta["one_of"]]
    target.add_argument(flag, *meta.get("also", ()), dest=f.name, **_argument(f, help_text, default, flag))
    for alias, const in meta.get("aliases", {}).items():
        target.add_argument(
            alias,
            dest=f.name,
            action="store_const",
            const=const,
            default=argparse.SUPPRESS,
            help=f"same as {flag} {const}",
        )


def _argument(f, help_text: str, default, flag: str) -> dict:
    meta = f.metadata
    kinds = {k.strip() for k in str(f.type).split("|")}
    choices = meta.get("choices")
    if kinds == {"bool"}:
        return {"action": "store_true", "help": _help(help_text)}
    if "dict" in kinds and "str" not in kinds:
        parse = json_or_file
    elif "int" in kinds and "str" not in kinds:
        parse = integer
    elif "float" in kinds and "str" not in kinds:
        parse = float
    else:
        parse = str
    if choices is not None and parse is not str:  # argparse would print {2,3,...}: say it in words
        help_text += f"; one of {', '.join(map(str, choices))}"
        choices = None
    if meta.get("const") is not None:
        help_text += f"; a bare {flag} means {meta['const']!r}"
    if not (default is None or default is False or default == ""):
        help_text += f" (default {_show_default(default)})"
    kwargs = {
        "type": parse,
        "default": None,
        "help": _help(help_text),
        "choices": choices,
        "required": meta.get("required", False),
    }
    if parse in (integer, float):  # `--block-size N`, not `--block-size BLOCK_SIZE`: the help fits beside it
        kwargs["metavar"] = "N" if parse is integer else "X"
    kwargs.update({k: meta[k] for k in ("nargs", "const", "metavar") if meta.get(k) is not None})
    return kwargs


def _show_default(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_show_default(v) for v in value)
    return number(value) if isinstance(value, float) else str(value)


def _help(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help with %
