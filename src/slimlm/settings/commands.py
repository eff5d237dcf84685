"""Settings of the commands that do not train (fetch, student, prune, quantize, export, eval) and of the paper's
studies (experiment, pipeline, report): one dataclass per command, each default and help text declared once.

The stage functions build these from their keyword arguments and the CLI generates its flags from them, so a
flag, a Python keyword and a recipe key are one name with one default and one check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from slimlm.errors import SlimlmError

# the choices are what the methods implement, declared there once
from slimlm.methods.gguf import TYPES as GGUF_TYPES
from slimlm.methods.pruning import METHODS as PRUNE_METHODS
from slimlm.methods.quantization import BITS as QUANT_BITS
from slimlm.methods.quantization import GRANULARITIES, RUNTIMES
from slimlm.settings.fields import Settings, finite, number, option
from slimlm.settings.training import FINETUNE_LEARNING_RATES, PRECISION_HINT, PRECISIONS

TEACHER_HELP = "built-in name, local dir, .gguf file or hub id"
DATA_HELP = "built-in corpus, local .txt/.jsonl/.parquet file or folder, hub id"
MODEL_HELP = "model directory, built-in name, .gguf file or hub id"
SWEEP_DISTILL_LEARNING_RATE = 6e-4  # the studies' short runs learn faster than `slimlm distill`'s default
# the measurement protocol of every experiment arm (experiments/runner.py applies it; `evaluate:` in a recipe)
EVAL_DEFAULTS = {
    "split": "test",
    "window": 256,
    "stride": 256,
    "tokens": 8192,
    "decode_new_tokens": 64,
    "repeats": 3,
    "tasks": ["cloze"],
    "task_items": None,
}
EXPERIMENT_KINDS = {
    "temperature": "KD temperature sweep (paper Table 1)",
    "feature-layer": "which teacher layer to distil features from (paper Figure 2)",
    "finetune": "LoRA vs full fine-tuning of a distilled student (paper Figure 3)",
}


def _out(help_text: str = "output directory (refused if it exists, unless --force)", required: bool = True):
    return option(None, help_text, required=required)


def _force(help_text: str = "replace an existing output"):
    return option(False, help_text)


def _trust():
    return option(False, "allow model code from the hub (off by default)")


def _precision(what: str):
    return option(
        "auto",
        f"precision of the {what}: auto uses bf16 autocast only where the hardware runs it "
        "natively (CUDA with bf16, a CPU with AVX-512 BF16/AMX), fp32 otherwise",
        choices=PRECISIONS,
        hint=PRECISION_HINT,
    )


@dataclass
class FetchSettings(Settings):
    """`slimlm fetch`: the teacher and corpus later commands use offline."""

    teacher: str = option("smollm2-135m", TEACHER_HELP)
    data: str = option("sotu", DATA_HELP)


@dataclass
class StudentSettings(Settings):
    """`slimlm student`: a student built from the teacher's layers (paper section 2)."""

    teacher: str = option("smollm2-135m", TEACHER_HELP)
    data: str = option("sotu", DATA_HELP)
    layers: int | None = option(None, "keep N layers chosen by measured importance", minimum=1, one_of="layers")
    keep_layers: str | None = option(
        None, "keep exactly these teacher layers, e.g. 0-4,20-29", layer_list=True, one_of="layers"
    )
    student_config: dict | None = option(None, "narrower widths: JSON or a .json/.yaml file")
    block_size: int = option(256, "tokens per block of the calibration and test text", minimum=2)
    calibration_blocks: int = option(8, "blocks that measure each layer's importance", minimum=1)
    seed: int = option(0, "seed of the calibration sample and of new parameters")
    precision: str = _precision("layer selection and measurement")
    evaluate_test: bool = option(True, "measure the student's starting test perplexity", cli=False)
    out: str | None = _out()
    force: bool = _force()
    trust_remote_code: bool = _trust()

    def check(self) -> None:
        if (self.layers is None) == (self.keep_layers is None):
            raise SlimlmError("give exactly one of --layers N or --keep-layers LIST")


@dataclass
class PruneSettings(Settings):
    """`slimlm prune`: weights, channels or key/value groups removed, with a before/after table."""

    model: str = option("", MODEL_HELP, positional=True)
    method: str = option(
        "magnitude",
        "what is removed: smallest weights, Wanda scores, an N:M pattern, or whole MLP channels and key/value groups",
        choices=PRUNE_METHODS,
    )
    sparsity: float = option(0.5, "fraction of weights (or MLP channels) removed")
    scope: str = option("layer", "magnitude/wanda: per layer or global", choices=("layer", "global"))
    nm: str = option("2:4", "N:M pattern for --method nm")
    kv_groups_removed: int = option(
        0,
        "structured: key/value groups removed per layer",
        minimum=0,
        hint="; it counts key/value groups removed per layer",
    )
    data: str = option("sotu", "calibration and evaluation text", flag="--calibration")
    calibration_blocks: int = option(16, "calibration blocks", minimum=1)
    recover_tokens: int = option(
        0, "structured: then distil the pruned model from the unpruned one for N tokens", minimum=0
    )
    block_size: int = option(256, "tokens per calibration block and evaluation window", cli=False, minimum=2)
    eval_tokens: int = option(8192, "test tokens for the before/after table", minimum=1)
    repeats: int = option(3, "decode-speed repeats of the before/after table", cli=False, minimum=1)
    precision: str = _precision("calibration passes and --recover-tokens training (the table is measured in fp32)")
    out: str | None = _out()
    force: bool = _force()
    trust_remote_code: bool = _trust()

    def check(self) -> None:
        if not (finite(self.sparsity) and 0 <= self.sparsity < 1):
            raise SlimlmError(
                f"--sparsity must be in [0, 1) (got {self.sparsity!r}); e.g. 0.5 removes half the weights"
            )
        if self.recover_tokens and self.method != "structured":
            raise SlimlmError(
                "--recover-tokens needs --method structured: training would refill the zeros of "
                f"{self.method} pruning; distil first, then prune"
            )
        self.nm_pattern()

    def nm_pattern(self) -> tuple[int, int]:
        """--nm "2:4" -> (2, 4): keep N of every M weights."""
        try:
            n, m = (int(x) for x in str(self.nm).split(":"))
        except ValueError:
            raise SlimlmError(f"--nm {self.nm!r} is not N:M; write e.g. 2:4") from None
        if not 0 < n < m:
            raise SlimlmError(f"--nm {self.nm}: N:M keeps N of every M weights, so it needs 0 < N < M; write e.g. 2:4")
        return n, m


@dataclass
class QuantizeSettings(Settings):
    """`slimlm quantize`: the paper's min-max rule with packed storage, with a before/after table."""

    model: str = option("", MODEL_HELP, positional=True)
    bits: int = option(8, "bits per weight", choices=QUANT_BITS)
    granularity: str = option(
        "channel",
        "weights sharing one scale and zero: a tensor, an output channel or a group of inputs",
        choices=GRANULARITIES,
    )
    group_size: int | None = option(None, "inputs per group with --granularity group, e.g. 32")
    symmetric: bool = option(False, "symmetric range (max|w|) instead of min-max")
    runtime: str = option(
        "dequantized",
        "how the result runs: fp32 weights, or torch's int8 kernels (faster, costs perplexity)",
        choices=RUNTIMES,
    )
    data: str = option("sotu", "evaluation text for the before/after table")
    block_size: int = option(256, "tokens per evaluation window", cli=False, minimum=2)
    eval_tokens: int = option(8192, "test tokens for the before/after table", minimum=1)
    repeats: int = option(3, "decode-speed repeats of the before/after table", cli=False, minimum=1)
    out: str | None = _out()
    force: bool = _force()
    trust_remote_code: bool = _trust()

    def check(self) -> None:
        if self.granularity == "group" and (self.group_size is None or self.group_size < 1):
            raise SlimlmError(
                f"--group-size must be a positive integer with --granularity group (got {self.group_size!r})"
            )


@dataclass
class ExportSettings(Settings):
    """`slimlm export`: one GGUF file that llama.cpp and transformers load."""

    model: str = option("", MODEL_HELP, positional=True)
    format: str = option("gguf", "file format", choices=("gguf",))
    type: str = option("f16", "GGUF tensor type", choices=GGUF_TYPES)
    out: str | None = _out("output .gguf file (refused if it exists, unless --force)")
    force: bool = _force()


@dataclass
class EvalSettings(Settings):
    """`slimlm eval`: the same metrics for every model on the same test split.

    `precision` defaults to fp32 here, unlike the training stages: a measurement protocol that does not change
    with the machine keeps numbers comparable across machines."""

    models: list | None = option(None, "built-in names, model dirs, .gguf files or hub ids", positional=True, nargs="+")
    data: str = option("sotu", DATA_HELP)
    window: int = option(256, "tokens per perplexity window", minimum=2)
    stride: int | None = option(None, "tokens the window moves (default: the window, no overlap)")
    new_tokens: int = option(64, "tokens decoded per speed run", minimum=1)
    repeats: int = option(3, "decode-speed repeats", minimum=1)
    precision: str = option(
        "fp32",
        "fp32 (the same protocol on every machine), bf16 (weights cast to bf16), or "
        "auto (bf16 where the hardware runs it natively)",
        choices=PRECISIONS,
        hint=PRECISION_HINT,
        aliases={"--bf16": "bf16"},
    )
    tasks: str | list = option("", "downstream checks, offline: cloze,summarization (docs/downstream.md)")
    task_items: int | None = option(None, "items per downstream task (default: each task's own)", minimum=1)
    lm_eval: str = option(
        "", "also run lm-evaluation-harness tasks (needs `pip install lm-eval` and a network)", metavar="TASKS"
    )
    out: str | None = _out("JSON file of the results (refused if it exists, unless --force)", required=False)
    force: bool = _force()
    trust_remote_code: bool = _trust()

    def check(self) -> None:
        if not self.models:
            raise SlimlmError("give at least one model to evaluate")
        if self.stride is not None and not 1 <= self.stride <= self.window:
            raise SlimlmError(
                f"--window must be >= 2 and --stride in [1, window] (got window {self.window}, stride {self.stride})"
            )


@dataclass
class ExperimentSettings(Settings):
    """`slimlm experiment KIND`: one of the paper's studies (section 3.2) over several seeds.

    The swept values are one field, spelled per kind on the command line (`--values`, `--layers`,
    `--methods`); `model`, `rank` and `feature_weight` are flags only of the kinds that use them."""

    VALUES: ClassVar[dict] = {
        "temperature": ("--values", "temperatures", [0.5, 1.0, 2.0, 5.0, 10.0]),
        "feature-layer": (
            "--layers",
            "teacher layers, 1..N (default: the paper's relative depths 1/12, 1/4, 1/2, 3/4, 1)",
            None,
        ),
        "finetune": ("--methods", "methods", ["lora", "full"]),
    }

    kind: str = option(
        "temperature", "which study", choices=tuple(EXPERIMENT_KINDS), subcommand=True, flag="experiment KIND"
    )
    values: str | list | None = option(None, "the swept values, comma-separated", per_kind=VALUES)
    seeds: str | list = option("0,1,2", "seeds per arm")
    teacher: str = option("smollm2-135m", TEACHER_HELP)
    data: str = option("sotu", DATA_HELP)
    student: str | None = option(None, "starting student directory (default: built from the teacher)")
    student_layers: int = option(14, "layers of the student built from the teacher", minimum=1)
    model: str | None = option(
        None, "model both methods fine-tune (default: a student distilled once)", kinds=("finetune",)
    )
    rank: int = option(8, "LoRA rank", minimum=1, kinds=("finetune",))
    max_tokens: int = option(20480, "training tokens per arm", minimum=1)
    learning_rate: float | None = option(
        None,
        f"default {number(SWEEP_DISTILL_LEARNING_RATE)} for distillation; fine-tuning: "
        f"{number(FINETUNE_LEARNING_RATES['lora'])} LoRA, {number(FINETUNE_LEARNING_RATES['full'])} full",
    )
    batch_size: int = option(4, "blocks per optimizer step", minimum=1)
    block_size: int = option(256, "tokens per training block", cli=False, minimum=1)
    temperature: float = option(2.0, "KD temperature of the arms that do not sweep it")
    alpha: float = option(0.5, "weight of the hard-label CE in the KD loss")
    feature_weight: float = option(1.0, "beta, weight of the feature loss", kinds=("feature-layer",))
    top_k: int = option(128, "teacher logits kept per token in the cache", minimum=1)
    recipe: str | None = option(None, "YAML of extra training settings applied to every run (e.g. warmup_ratio)")
    settings: dict | None = option(
        None, "extra training settings applied to every run (what --recipe holds)", cli=False
    )
    precision: str = _precision("training of every arm (measurement stays fp32)")
    eval_tokens: int | None = option(
        None, f"test tokens scored, from the start of the split (default {EVAL_DEFAULTS['tokens']})"
    )
    repeats: int | None = option(None, f"decode-speed repeats (default {EVAL_DEFAULTS['repeats']})")
    tasks: str | list | None = option(
        None, f"downstream checks per model: cloze,summarization or none (default {','.join(EVAL_DEFAULTS['tasks'])})"
    )
    task_items: int | None = option(None, "items per downstream task (default: each task's own)")
    evaluation: dict | None = option(
        None,
        "the measurement protocol (EVAL_DEFAULTS above); the flags above override its keys",
        cli=False,
    )
    out: str | None = _out("run folder; rerun the same command to finish missing arms")
    force: bool = _force("delete the run folder and start over")
    command: str | None = option(None, "the command line, recorded in experiment.json", cli=False)

    def distill_learning_rate(self) -> float:
        return self.learning_rate or SWEEP_DISTILL_LEARNING_RATE

    def default_values(self):
        return self.VALUES[self.kind][2]

    def protocol(self) -> dict:
        """The measurement protocol: `evaluation`, with the flags that were given on top."""
        flags = {
            "tokens": self.eval_tokens,
            "repeats": self.repeats,
            "tasks": self.tasks,
            "task_items": self.task_items,
        }
        return {**(self.evaluation or {}), **{k: v for k, v in flags.items() if v is not None}}


@dataclass
class PipelineSettings(Settings):
    """`slimlm pipeline RECIPE`: distil -> fine-tune -> prune -> quantize from one recipe, every stage measured."""

    recipe: str = option("", "YAML recipe (examples in recipes/)", positional=True)
    out: str | None = _out("run folder; rerun the same command to finish missing stages")
    force: bool = _force("delete the run folder and start over")
    command: str | None = option(None, "the command line, recorded in experiment.json", cli=False)


@dataclass
class ReportSettings(Settings):
    """`slimlm report RUN_DIR`: report.md, report.html and plots of a finished (or partial) run folder."""

    run_dir: str = option("", "an experiment or pipeline folder", positional=True)
    force: bool = _force("replace an existing report")
