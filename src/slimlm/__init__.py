"""slimlm: compress a causal language model by distillation, fine-tuning, pruning and quantization,
and measure honestly what that bought. The functions below mirror the `slimlm` CLI commands."""

from slimlm.api import distill, evaluate, fetch, finetune, make_student
from slimlm.compress import prune, quantize
from slimlm.config import DistillSettings, FinetuneSettings
from slimlm.gguf_export import export
from slimlm.errors import SlimlmError
from slimlm.experiments.pipeline import pipeline
from slimlm.experiments.report import write_report as report
from slimlm.experiments.sweeps import experiment

__all__ = ["distill", "evaluate", "experiment", "export", "fetch", "finetune", "make_student", "pipeline", "prune",
           "quantize", "report", "DistillSettings", "FinetuneSettings", "SlimlmError"]
