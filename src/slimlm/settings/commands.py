"""Settings of the commands that do not train (fetch, student, prune, quantize, export, eval) and of the paper's
studies (experiment, pipeline, report): one dataclass per command, each default and help text declared once.

The stage functions build these from their keyword arguments and the CLI generates its flags from them, so a
flag, a Python keyword and a recipe key are one name with one default and one check.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimlm.data.builtins import GENERAL_CORPUS
from slimlm.errors import SlimlmError

# the choices are what the methods implement, declared there once
from slimlm.methods.budget import AXES, check_target
from slimlm.methods.gguf import TYPES as GGUF_TYPES
from slimlm.methods.pruning import METHODS as PRUNE_METHODS
from slimlm.methods.quantization import BITS as QUANT_BITS
from slimlm.methods.quantization import GRANULARITIES, RUNTIMES
from slimlm.settings.fields import Settings, comma_list, finite, option
from slimlm.settings.groups import ADVANCED, EVALUATION, FORMAT, INPUTS, PRUNING, QUANTIZATION, STUDENT
from slimlm.settings.training import PRECISION_HINT, PRECISIONS

TEACHER_HELP = "built-in name, local dir, .gguf file or hub id"
DATA_HELP = "built-in corpus (sotu, wikipedia), local file or folder, hub id, or a mix: sotu:3,wikipedia:1"


def general_data_option():
    return option(
        GENERAL_CORPUS,
        "general text also scored, to show what was lost outside --data: wikipedia, any --data value, or none",
        corpus=True,
        group=INPUTS,
    )


MODEL_HELP = "model directory, built-in name, .gguf file or hub id"


def out_option(help_text: str = "output directory (refused if it exists, unless --force)", required: bool = True):
    return option(None, help_text, required=required, group=INPUTS)


def force_option(help_text: str = "replace an existing output"):
    return option(False, help_text, group=INPUTS)


def trust_option():
    return option(False, "allow model code from the hub (off by default)", group=ADVANCED)


def precision_option(what: str, group: str = ADVANCED):
    return option(
        "auto",
        f"precision of the {what}: auto = bf16 where the hardware runs it natively, else fp32",
        choices=PRECISIONS,
        hint=PRECISION_HINT,
        group=group,
    )


@dataclass
class FetchSettings(Settings):
    """`slimlm fetch`: the teacher and corpus later commands use offline."""

    teacher: str = option("smollm2-135m", TEACHER_HELP, group=INPUTS)
    data: str = option("sotu", DATA_HELP, corpus=True, group=INPUTS)
    general_data: str = general_data_option()


@dataclass
class StudentSettings(Settings):
    """`slimlm student`: a student built from the teacher's layers (paper section 2)."""

    teacher: str = option("smollm2-135m", TEACHER_HELP, group=INPUTS)
    data: str = option("sotu", DATA_HELP, corpus=True, group=INPUTS)
    layers: int | None = option(
        None, "keep N layers chosen by measured importance", minimum=1, one_of="layers", group=STUDENT
    )
    keep_layers: str | None = option(
        None, "keep exactly these teacher layers, e.g. 0-4,20-29", layer_list=True, one_of="layers", group=STUDENT
    )
    target_params: float | None = option(
        None,
        "a fraction of the teacher's parameters, e.g. 0.55: the closest shape of that size along --axes",
        one_of="layers",
        group=STUDENT,
    )
    axes: str = option(
        "both",
        "--target-params: cut layers (depth), channels (width), or try both",
        choices=AXES,
        group=STUDENT,
    )
    student_config: dict | None = option(
        None,
        "narrower widths (channels kept by activation importance): JSON or a .json/.yaml file",
        group=STUDENT,
    )
    block_size: int = option(256, "tokens per block of the calibration and test text", minimum=2, group=ADVANCED)
    calibration_blocks: int = option(
        8, "blocks that measure layer, channel and head importance", minimum=1, group=ADVANCED
    )
    heal_tokens: int = option(
        0,
        "after a depth cut, train the layers beside each cut on N tokens to match the teacher (0 = off)",
        minimum=0,
        group=STUDENT,
    )
    heal_learning_rate: float = option(3e-4, "learning rate of --heal-tokens (cosine to 0)", group=STUDENT)
    seed: int = option(0, "seed of the calibration sample and of new parameters", group=ADVANCED)
    precision: str = precision_option("layer selection, healing and measurement")
    evaluate_test: bool = option(True, "measure the student's starting test perplexity", cli=False)
    out: str | None = out_option()
    force: bool = force_option()
    trust_remote_code: bool = trust_option()

    def check(self) -> None:
        if sum(v is not None for v in (self.layers, self.keep_layers, self.target_params)) != 1:
            raise SlimlmError("give exactly one of --layers N, --keep-layers LIST or --target-params FRACTION")
        if not (finite(self.heal_learning_rate) and self.heal_learning_rate > 0):
            raise SlimlmError(f"--heal-learning-rate must be > 0 and finite (got {self.heal_learning_rate})")
        if self.target_params is not None:
            check_target(self.target_params)
            if self.student_config:
                raise SlimlmError(
                    "--target-params chooses the widths itself; drop --student-config, or use it with --layers"
                )


@dataclass
class PruneSettings(Settings):
    """`slimlm prune`: weights, channels or key/value groups removed, with a before/after table."""

    model: str = option("", MODEL_HELP, positional=True, group=INPUTS)
    method: str = option(
        "magnitude",
        "what is removed: smallest weights, Wanda scores, an N:M pattern, or MLP channels and key/value groups",
        choices=PRUNE_METHODS,
        group=PRUNING,
    )
    sparsity: float = option(0.5, "fraction of weights (or MLP channels) removed", group=PRUNING)
    scope: str = option("layer", "magnitude/wanda: per layer or global", choices=("layer", "global"), group=PRUNING)
    nm: str = option("2:4", "N:M pattern for --method nm", group=PRUNING)
    kv_groups_removed: int = option(
        0,
        "structured: key/value groups removed per layer, the lowest by activation x weight norm",
        minimum=0,
        hint="; it counts key/value groups removed per layer",
        group=PRUNING,
    )
    data: str = option("sotu", "calibration and evaluation text", flag="--calibration", corpus=True, group=INPUTS)
    calibration_blocks: int = option(16, "calibration blocks", minimum=1, group=ADVANCED)
    recover_tokens: int = option(
        0, "structured: then distil the pruned model from the unpruned one for N tokens", minimum=0, group=PRUNING
    )
    block_size: int = option(256, "tokens per calibration block and evaluation window", cli=False, minimum=2)
    eval_tokens: int = option(8192, "test tokens for the before/after table", minimum=1, group=EVALUATION)
    repeats: int = option(3, "decode-speed repeats of the before/after table", cli=False, minimum=1)
    precision: str = precision_option(
        "calibration passes and --recover-tokens training (the table is measured in fp32)"
    )
    out: str | None = out_option()
    force: bool = force_option()
    trust_remote_code: bool = trust_option()

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

    model: str = option("", MODEL_HELP, positional=True, group=INPUTS)
    bits: int = option(8, "bits per weight", choices=QUANT_BITS, group=QUANTIZATION)
    granularity: str = option(
        "channel",
        "weights sharing one scale and zero: a tensor, an output channel or a group of inputs",
        choices=GRANULARITIES,
        group=QUANTIZATION,
    )
    group_size: int | None = option(None, "inputs per group with --granularity group, e.g. 32", group=QUANTIZATION)
    symmetric: bool = option(False, "symmetric range (max|w|) instead of min-max", group=QUANTIZATION)
    runtime: str = option(
        "dequantized",
        "how the result runs: fp32 weights, or torch's int8 kernels (faster, costs perplexity)",
        choices=RUNTIMES,
        group=QUANTIZATION,
    )
    data: str = option("sotu", "evaluation text for the before/after table", corpus=True, group=INPUTS)
    block_size: int = option(256, "tokens per evaluation window", cli=False, minimum=2)
    eval_tokens: int = option(8192, "test tokens for the before/after table", minimum=1, group=EVALUATION)
    repeats: int = option(3, "decode-speed repeats of the before/after table", cli=False, minimum=1)
    out: str | None = out_option()
    force: bool = force_option()
    trust_remote_code: bool = trust_option()

    def check(self) -> None:
        if self.granularity == "group" and (self.group_size is None or self.group_size < 1):
            raise SlimlmError(
                f"--group-size must be a positive integer with --granularity group (got {self.group_size!r})"
            )


@dataclass
class ExportSettings(Settings):
    """`slimlm export`: one GGUF file that llama.cpp and transformers load."""

    model: str = option("", MODEL_HELP, positional=True, group=INPUTS)
    format: str = option("gguf", "file format", choices=("gguf",), group=FORMAT)
    type: str = option("f16", "GGUF tensor type", choices=GGUF_TYPES, group=FORMAT)
    out: str | None = out_option("output .gguf file (refused if it exists, unless --force)")
    force: bool = force_option()


@dataclass
class EvalSettings(Settings):
    """`slimlm eval`: the same metrics for every model on the same test split.

    `dtype` is what the weights are cast to before anything is measured (a deployment's dtype: it sets memory
    and speed), not the training stages' `--precision` (autocast over fp32 weights). It defaults to fp32: a
    measurement protocol that does not change with the machine keeps numbers comparable across machines."""

    models: list | None = option(
        None, "built-in names, model dirs, .gguf files or hub ids", positional=True, nargs="+", group=INPUTS
    )
    data: str = option("sotu", DATA_HELP, corpus=True, group=INPUTS)
    general_data: str = general_data_option()
    general_tokens: int = option(
        32768,
        "general-text tokens scored, in windows spread evenly over its test split",
        minimum=2,
        group=EVALUATION,
    )
    window: int = option(256, "tokens per perplexity window", minimum=2, group=EVALUATION)
    stride: int | None = option(None, "tokens the window moves (default: the window, no overlap)", group=EVALUATION)
    new_tokens: int = option(64, "tokens decoded per speed run", minimum=1, group=EVALUATION)
    repeats: int = option(3, "decode-speed repeats", minimum=1, group=EVALUATION)
    dtype: str = option(
        "fp32",
        "dtype the weights are cast to: fp32 (the same on every machine), bf16, or auto",
        choices=PRECISIONS,
        hint=PRECISION_HINT,
        aliases={"--bf16": "bf16"},
        group=EVALUATION,
    )
    runtime: str = option(
        "transformers",
        "what runs the models: transformers (every format) or llama.cpp (.gguf files)",
        choices=("transformers", "llama.cpp"),
        group=EVALUATION,
    )
    tasks: str | list = option(
        "", "downstream checks, offline: cloze,summarization (docs/downstream.md)", group=EVALUATION
    )
    task_items: int | None = option(
        None, "items per downstream task (default: each task's own)", minimum=1, group=EVALUATION
    )
    generation: int = option(
        0,
        "prompts (test split and general text) every model continues, scored by the first model "
        "(NLL, distinct-n, ROUGE-L); 0 = off",
        minimum=0,
        also=("--generation-prompts",),
        group=EVALUATION,
    )
    generation_tokens: int = option(
        64, "with --generation: tokens each model writes after a prompt", minimum=1, group=EVALUATION
    )
    generation_scorer: str | None = option(
        None,
        "with --generation: the model that scores what each model writes, loaded for that alone (not measured); "
        "default: the first model",
        metavar="MODEL",
        group=EVALUATION,
    )
    lm_eval: str = option(
        "",
        "also run lm-evaluation-harness tasks (needs `pip install lm-eval` and a network)",
        metavar="TASKS",
        group=EVALUATION,
    )
    out: str | None = out_option("JSON file of the results (refused if it exists, unless --force)", required=False)
    force: bool = force_option()
    trust_remote_code: bool = trust_option()

    def check(self) -> None:
        if not self.models:
            raise SlimlmError("give at least one model to evaluate")
        if self.runtime == "llama.cpp" and (comma_list(self.tasks) or comma_list(self.lm_eval)):
            raise SlimlmError(
                "--tasks and --lm-eval run under transformers; drop them, or measure the .gguf without "
                "--runtime llama.cpp"
            )
        if self.generation_scorer and not self.generation:
            raise SlimlmError("--generation-scorer scores what the models write: add --generation N (e.g. 32)")
        if self.generation and self.runtime == "llama.cpp":
            raise SlimlmError("--generation runs under transformers: drop it, or drop --runtime llama.cpp")
        if self.stride is not None and not 1 <= self.stride <= self.window:
            raise SlimlmError(
                f"--window must be >= 2 and --stride in [1, window] (got window {self.window}, stride {self.stride})"
            )


@dataclass
class CacheSettings(Settings):
    """`slimlm cache list|remove`: the teacher cache's entries, their size, and deleting them."""

    action: str = option(
        "list",
        "list (the default) the teacher cache entries, or remove some",
        positional=True,
        choices=("list", "remove"),
        nargs="?",
        group=INPUTS,
    )
    keys: list | None = option(
        None, "remove: entry keys (or unique prefixes) as `list` shows them", positional=True, nargs="*", group=INPUTS
    )
    all: bool = option(False, "remove: every teacher cache entry", group=INPUTS)

    def check(self) -> None:
        if self.action == "remove" and not (self.keys or self.all):
            raise SlimlmError("slimlm cache remove needs entry keys (see slimlm cache list) or --all")
        if self.action == "list" and (self.keys or self.all):
            raise SlimlmError("slimlm cache list takes no keys; to delete entries use slimlm cache remove KEY")
