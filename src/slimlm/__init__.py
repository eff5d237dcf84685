"""slimlm: compress a causal language model by distillation, fine-tuning, pruning and quantization,
and measure honestly what that bought. The functions below mirror the `slimlm` CLI commands."""

from slimlm.errors import SlimlmError
from slimlm.experiments.pipeline import pipeline
from slimlm.experiments.report import write_report as report
from slimlm.experiments.sweeps import experiment
from slimlm.settings import DistillSettings, FinetuneSettings
from slimlm.stages.distill import distill
from slimlm.stages.evaluate import evaluate
from slimlm.stages.export import export
from slimlm.stages.fetch import fetch
from slimlm.stages.finetune import finetune
from slimlm.stages.prune import prune
from slimlm.stages.quantize import quantize
from slimlm.stages.student import make_student

__all__ = [
    "distill",
    "evaluate",
    "experiment",
    "export",
    "fetch",
    "finetune",
    "make_student",
    "pipeline",
    "prune",
    "quantize",
    "report",
    "DistillSettings",
    "FinetuneSettings",
    "SlimlmError",
]
