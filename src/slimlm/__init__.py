"""slimlm: compress a causal language model by distillation, fine-tuning, pruning and quantization,
and measure honestly what that bought. The functions below mirror the `slimlm` CLI commands."""

from slimlm.api import distill, evaluate, fetch, finetune, make_student
from slimlm.compress import prune, quantize
from slimlm.config import DistillSettings, FinetuneSettings
from slimlm.gguf_export import export
from slimlm.errors import SlimlmError

__all__ = ["distill", "evaluate", "export", "fetch", "finetune", "make_student", "prune", "quantize", "DistillSettings",
           "FinetuneSettings", "SlimlmError"]
