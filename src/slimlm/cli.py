"""The `slimlm` command: each command is a settings dataclass (its flags) and a stage function (its work).

No logic of its own: the flags are generated from the settings (settings/flags.py), the values typed are
passed to the stage function, and the stage fills in the defaults and validates, exactly as for a Python call.
A `SlimlmError`, or a ValueError/TypeError raised by library code, is printed as one line and exits with
status 2; pass --debug for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from dataclasses import fields

from slimlm.errors import SlimlmError, first_line
from slimlm.settings import (
    EXPERIMENT_KINDS,
    CacheSettings,
    DistillSettings,
    EvalSettings,
    ExperimentSettings,
    ExportSettings,
    FetchSettings,
    FinetuneSettings,
    PipelineSettings,
    PruneSettings,
    QuantizeSettings,
    ReportSettings,
    StudentSettings,
    TrainingRun,
)
from slimlm.settings.examples import EXAMPLES, WORKFLOW, epilog
from slimlm.settings.flags import add_settings

# command: (one-line summary, its settings, the function that runs it), in the order a user works
COMMANDS = {
    "fetch": ("download the teacher and corpora into the cache", (FetchSettings,), "slimlm.stages.fetch:fetch"),
    "student": ("cut a student from the teacher's layers", (StudentSettings,), "slimlm.stages.student:make_student"),
    "distill": (
        "train a student to match its teacher",
        (DistillSettings, TrainingRun),
        "slimlm.stages.distill:distill",
    ),
    "finetune": (
        "LoRA or full fine-tuning, with or without a teacher",
        (FinetuneSettings, TrainingRun),
        "slimlm.stages.finetune:finetune",
    ),
    "eval": ("measure models side by side on the test split", (EvalSettings,), "slimlm.stages.evaluate:evaluate"),
    "prune": ("remove weights, channels or key/value groups", (PruneSettings,), "slimlm.stages.prune:prune"),
    "quantize": ("min-max quantization with packed storage", (QuantizeSettings,), "slimlm.stages.quantize:quantize"),
    "export": ("write a GGUF file for llama.cpp", (ExportSettings,), "slimlm.stages.export:export"),
    "experiment": (
        "run one of the paper's studies over several seeds",
        (ExperimentSettings,),
        "slimlm.experiments.sweeps:experiment",
    ),
    "pipeline": (
        "distil, fine-tune, prune, quantize from one recipe",
        (PipelineSettings,),
        "slimlm.experiments.pipeline:pipeline",
    ),
    "report": ("write a run folder's report and plots", (ReportSettings,), "slimlm.experiments.report:report"),
    "cache": ("list or remove teacher cache entries", (CacheSettings,), "slimlm.stages.cache:cache"),
}
DESCRIPTION = "Compress a causal LM and measure what it bought.\n`slimlm COMMAND --help` shows a command's flags."


class MenuFormatter(argparse.RawDescriptionHelpFormatter):
    """Help as a menu: the descriptions and examples as written, and the commands listed one a line, with no
    COMMAND header line above them (argparse indents them under it and then misjudges the column width)."""

    def _iter_indented_subactions(self, action):
        yield from action._get_subactions() if hasattr(action, "_get_subactions") else ()

    def _format_action(self, action):
        text = super()._format_action(action)
        return text.split("\n", 1)[1] if isinstance(action, argparse._SubParsersAction) else text


def build_parser() -> argparse.ArgumentParser:
    parser = _parser("slimlm", DESCRIPTION, epilog(WORKFLOW, "example workflow"))
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for name, (text, settings_types, _) in COMMANDS.items():
        p = sub.add_parser(name, help=text, **_menu(name, text))
        if name != "experiment":
            add_settings(p, *settings_types)
            short_usage(p)
            continue
        kinds = p.add_subparsers(dest="kind", required=True, title="studies", metavar="KIND")
        for kind, kind_text in EXPERIMENT_KINDS.items():
            kind_parser = kinds.add_parser(kind, help=kind_text, **_menu(f"{name} {kind}", kind_text))
            add_settings(kind_parser, *settings_types, kind=kind)
            short_usage(kind_parser)
    return parser


def _parser(prog: str, text: str, end: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=text, epilog=end, formatter_class=MenuFormatter)


def _menu(words: str, text: str) -> dict:
    """A command's help: its summary, its flags in sections (settings/groups.py), its examples last."""
    return {
        "description": text,
        "epilog": epilog(EXAMPLES[words]),
        "formatter_class": MenuFormatter,
    }


def short_usage(parser: argparse.ArgumentParser) -> None:
    """The usage line names only what must be typed (positionals, required flags) and leaves the rest to the
    sections below: argparse's own line lists every flag, dozens for distill."""
    must = [a for a in parser._actions if not a.option_strings or a.required]
    groups = [g for g in parser._mutually_exclusive_groups if g.required]
    must += [a for g in groups for a in g._group_actions if a not in must]
    must.sort(key=parser._actions.index)
    formatter = parser._get_formatter()
    formatter.add_usage(None, must, groups, prefix="")
    parser.usage = formatter.format_help().strip().replace("%", "%%") + " [options]"


def command_line(argv: list[str]) -> str:
    return "slimlm " + " ".join(shlex.quote(a) for a in argv)


# flags a command does not take, that a user may well type there: what to give instead
MOVED_FLAGS = {
    ("eval", "--precision"): "slimlm eval casts the weights themselves: give --dtype fp32|bf16|auto "
    "(--precision is the training stages' autocast over fp32 weights)",
}


def run(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    for (command, flag), fix in MOVED_FLAGS.items():
        if argv[:1] == [command] and any(a == flag or a.startswith(flag + "=") for a in argv):
            raise SlimlmError(fix)
    typed = vars(build_parser().parse_args(argv))
    _, settings_types, target = COMMANDS[typed.pop("command")]
    typed.pop("debug")
    given = {k: v for k, v in typed.items() if v is not None and v is not False}  # settings/flags.py: typed only
    if any(f.name == "command" for t in settings_types for f in fields(t)):
        given["command"] = command_line(argv)  # experiment.json records how the run was started
    module, function = target.split(":")
    getattr(importlib.import_module(module), function)(**given)
    return 0


def main(argv=None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        return run(argv)
    except (SlimlmError, ValueError, TypeError) as exc:  # library code raises plain ValueError/TypeError
        if debug:
            raise
        # a SlimlmError names the fix; anything else came from library code: say how to see where
        text = str(exc) if isinstance(exc, SlimlmError) else f"{first_line(exc)} (rerun with --debug for the traceback)"
        print(f"slimlm: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimlm: interrupted; rerun with --resume to continue a training run", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # under torchrun: close the process groups before exit
            from slimlm.distributed import shutdown  # (its docstring says why)

            shutdown()


if __name__ == "__main__":
    sys.exit(main())
