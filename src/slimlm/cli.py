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
from slimlm.settings.flags import add_settings

# command: (help, its settings, the function that runs it)
COMMANDS = {
    "fetch": ("download the built-in teacher and corpus into the cache", (FetchSettings,), "slimlm.stages.fetch:fetch"),
    "student": (
        "build a student from the teacher's layers and write it",
        (StudentSettings,),
        "slimlm.stages.student:make_student",
    ),
    "distill": (
        "distil a teacher into a student (paper section 2)",
        (TrainingRun, DistillSettings),
        "slimlm.stages.distill:distill",
    ),
    "finetune": (
        "LoRA or full fine-tuning, with the teacher in the loss if given",
        (TrainingRun, FinetuneSettings),
        "slimlm.stages.finetune:finetune",
    ),
    "prune": (
        "prune weights, channels or key/value groups; before/after table",
        (PruneSettings,),
        "slimlm.stages.prune:prune",
    ),
    "quantize": (
        "min-max quantization with packed storage; before/after table",
        (QuantizeSettings,),
        "slimlm.stages.quantize:quantize",
    ),
    "export": (
        "write a GGUF file that llama.cpp and transformers load",
        (ExportSettings,),
        "slimlm.stages.export:export",
    ),
    "eval": ("evaluate models side by side on the test split", (EvalSettings,), "slimlm.stages.evaluate:evaluate"),
    "experiment": (
        "run one of the paper's studies over several seeds and write a report",
        (ExperimentSettings,),
        "slimlm.experiments.sweeps:experiment",
    ),
    "pipeline": (
        "distil -> fine-tune -> prune -> quantize from a recipe, every stage measured",
        (PipelineSettings,),
        "slimlm.experiments.pipeline:pipeline",
    ),
    "cache": (
        "list the teacher cache's entries and their size, or remove some",
        (CacheSettings,),
        "slimlm.stages.cache:cache",
    ),
    "report": (
        "write report.md, report.html and plots for an experiment or pipeline folder",
        (ReportSettings,),
        "slimlm.experiments.report:report",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimlm", description="Compress a causal LM and measure what it bought.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, settings_types, _) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if name != "experiment":
            add_settings(p, *settings_types)
            continue
        kinds = p.add_subparsers(dest="kind", required=True)
        for kind, kind_text in EXPERIMENT_KINDS.items():
            add_settings(kinds.add_parser(kind, help=kind_text, description=kind_text), *settings_types, kind=kind)
    return parser


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
