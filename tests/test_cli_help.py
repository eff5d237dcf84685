"""`slimlm --help` and each command's --help read as a short menu: one line per command in the order a user
works, a command's flags in sections with the common ones first, and examples at the end that parse."""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import fields

import pytest

from slimlm.cli import COMMANDS, build_parser
from slimlm.settings import EXPERIMENT_KINDS
from slimlm.settings.groups import INPUTS, ORDER

COMMON = {"--teacher", "--student", "--data", "--out"}  # what most runs type: in the first section if taken


@pytest.fixture(autouse=True)
def _columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps at the terminal's width


def _subparsers(parser) -> dict:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _command_parsers():
    """(the words after `slimlm`, the parser of that command) for every command and experiment kind."""
    for name, parser in _subparsers(build_parser()).items():
        yield name, parser
        if name == "experiment":
            for kind, kind_parser in _subparsers(parser).items():
                yield f"{name} {kind}", kind_parser


PARSERS = dict(_command_parsers())


def _sections(text: str) -> list[str]:
    """The section titles of a help text, in order (usage's line is not one)."""
    return [line[:-1] for line in text.splitlines() if re.fullmatch(r"[a-z][\w ,/-]*:", line)]


def _examples(text: str) -> list[str]:
    """The command lines of the last section, which must be the examples."""
    head, _, tail = text.rstrip().rpartition("\nexamples:\n")
    assert head and not _sections(tail), "the help does not end with an examples section"
    return [line.strip() for line in tail.splitlines() if line.strip().startswith("slimlm ")]


def _parses(line: str) -> bool:
    try:
        build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit:
        return False
    return True


def test_top_level_help_lists_every_command_on_one_line_in_working_order():
    text = build_parser().format_help()
    listing = text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    rows = [re.fullmatch(r"  (\S+) +(\S.*)", line) for line in listing]
    assert all(rows), f"a command's summary runs onto a second line: {listing}"
    assert [row[1] for row in rows] == list(COMMANDS)
    assert list(COMMANDS)[:5] == ["fetch", "student", "distill", "finetune", "eval"]
    for row in rows:
        assert row[2] == COMMANDS[row[1]][0]


def test_experiment_help_lists_every_kind_on_one_line():
    text = PARSERS["experiment"].format_help()
    listing = text.split("\nstudies:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [re.fullmatch(r"  (\S+) +\S.*", line)[1] for line in listing] == list(EXPERIMENT_KINDS)


def test_the_top_level_help_ends_with_a_workflow_that_parses():
    text = build_parser().format_help().rstrip()
    workflow = text.rpartition("\nexample workflow:\n")[2].splitlines()
    lines = [line.strip() for line in workflow if line.strip().startswith("slimlm ")]
    assert len(lines) >= 4 and [shlex.split(line)[1] for line in lines][:3] == ["fetch", "student", "distill"]
    assert all(_parses(line) for line in lines), [line for line in lines if not _parses(line)]


@pytest.mark.parametrize("words", [w for w in PARSERS if w != "experiment"])
def test_sections_come_in_order_with_the_common_flags_first(words):
    parser = PARSERS[words]
    titles = [t for t in _sections(parser.format_help()) if t not in ("options", "examples")]
    assert titles and all(t in ORDER for t in titles), titles
    assert titles == sorted(titles, key=ORDER.index)
    sections = {g.title: {s for a in g._group_actions for s in a.option_strings} for g in parser._action_groups}
    common = COMMON & {s for a in parser._actions for s in a.option_strings}
    if common:
        assert titles[0] == INPUTS and common <= sections[INPUTS], (words, common - sections[INPUTS])
    assert sections["options"] == {"-h", "--help"}  # every flag is in a named section


@pytest.mark.parametrize("words", list(PARSERS))
def test_every_help_ends_with_examples_that_parse(words):
    lines = _examples(PARSERS[words].format_help())
    assert 2 <= len(lines) <= 4, lines
    for line in lines:
        assert f"{line} ".startswith(f"slimlm {words} "), f"an example of `slimlm {words}` runs another: {line}"
        assert _parses(line), f"example `{line}` does not parse"


def test_the_example_check_catches_a_misspelt_flag():
    assert _parses("slimlm distill --layers 15 --out runs/d15")
    assert not _parses("slimlm distill --layers 15 --tempurature 2 --out runs/d15")


def test_the_usage_line_names_only_what_must_be_typed():
    usage = " ".join(PARSERS["student"].format_usage().split())
    assert usage.startswith("usage: slimlm student ") and usage.endswith(" [options]")
    assert "--out" in usage and "--layers" in usage and "--teacher" not in usage and "--heal-tokens" not in usage
    assert "--teacher" not in PARSERS["distill"].format_usage()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_flag_names_its_section(name):
    """A new flag says where its help belongs rather than falling into the advanced section by default."""
    for settings_type in COMMANDS[name][1]:
        for f in fields(settings_type):
            if f.metadata.get("cli", True) and not f.metadata.get("subcommand"):
                assert f.metadata.get("group") in ORDER, f"{settings_type.__name__}.{f.name} names no --help section"
