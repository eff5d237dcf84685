"""Settings of the studies: `slimlm experiment` (the three sweeps of the paper's section 3.2 and the
student-shape frontier), `slimlm pipeline` and `slimlm report`, with the measurement protocol every arm shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from slimlm.data.builtins import GENERAL_CORPUS
from slimlm.errors import SlimlmError
from slimlm.methods.budget import check_target
from slimlm.settings.commands import DATA_HELP, TEACHER_HELP, force_option, out_option, precision_option
from slimlm.settings.fields import Settings, number, option
from slimlm.settings.groups import EVALUATION, INPUTS, STUDY, TEACHER, TRAINING
from slimlm.settings.training import CACHE_MODES, FINETUNE_LEARNING_RATES

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
    "general_data": GENERAL_CORPUS,  # general-domain text scored beside the split (eval/general.py); or "none"
    "general_tokens": 16384,
}
EXPERIMENT_KINDS = {  # kind: its one-line summary in `slimlm experiment --help`
    "temperature": "KD temperature sweep (paper Table 1)",
    "feature-layer": "the teacher layer to distil features from (Figure 2)",
    "finetune": "LoRA vs full fine-tuning of a student (Figure 3)",
    "student-shape": "students of one size cut in depth, width or both",
    "data-mix": "in-domain, general or mixed training text",
}
DEMO_BUDGET_KINDS = ("student-shape", "data-mix")  # kinds that train the demo's 200k tokens per arm by default
# the teacher's quantized copies measured beside every study (experiments/baselines.py)
BASELINES = ("quantized", "none")
SHAPE_KINDS = ("student-shape",)  # kinds whose arms each build their own student (no --student, --student-layers)
STUDY_CACHE_MODES = (*CACHE_MODES, "online")  # online: every arm runs the teacher live (sweeps.py)


def baselines_option():
    return option(
        "quantized",
        "baselines beside the arms: the teacher quantized to 8 and 4 bits, or none",
        choices=BASELINES,
        group=EVALUATION,
    )


@dataclass
class ExperimentSettings(Settings):
    """`slimlm experiment KIND`: one of the paper's studies (section 3.2), or slimlm's student-shape frontier,
    over several seeds.

    The swept values are one field, spelled per kind on the command line (`--values`, `--layers`,
    `--methods`, `--axes`); `model`, `rank`, `feature_weight`, `online_control` and `target_params` are flags
    only of the kinds that use them; `max_tokens` has its default per kind (MAX_TOKENS)."""

    VALUES: ClassVar[dict] = {
        "temperature": ("--values", "temperatures", [0.5, 1.0, 2.0, 5.0, 10.0]),
        "feature-layer": (
            "--layers",
            "teacher layers, 1..N (default: the paper's relative depths 1/12, 1/4, 1/2, 3/4, 1)",
            None,
        ),
        "finetune": ("--methods", "methods", ["lora", "full"]),
        "student-shape": (
            "--axes",
            "axes the students are cut along: depth, width and/or both",
            ["depth", "width", "both"],
        ),
        "data-mix": (
            "--corpora",
            "training text of each arm: a corpus, or a mix joined by + (sotu+wikipedia, sotu:3+wikipedia:1); "
            "default: --data, the general text, and the two mixed",
            None,
        ),
    }
    MAX_TOKENS: ClassVar[dict] = {
        kind: ("--max-tokens", "training tokens per arm", 200_000 if kind in DEMO_BUDGET_KINDS else 20480)
        for kind in EXPERIMENT_KINDS
    }
    OWN_STUDENT: ClassVar[tuple] = tuple(k for k in EXPERIMENT_KINDS if k not in SHAPE_KINDS)

    kind: str = option(
        "temperature", "which study", choices=tuple(EXPERIMENT_KINDS), subcommand=True, flag="experiment KIND"
    )
    values: str | list | None = option(None, "the swept values, comma-separated", per_kind=VALUES, group=STUDY)
    seeds: str | list = option("0,1,2", "seeds per arm", group=STUDY)
    teacher: str = option("smollm2-135m", TEACHER_HELP, group=INPUTS)
    data: str = option("sotu", DATA_HELP, corpus=True, group=INPUTS)
    student: str | None = option(
        None, "starting student directory (default: built from the teacher)", kinds=OWN_STUDENT, group=INPUTS
    )
    student_layers: int = option(
        14, "layers of the student built from the teacher", minimum=1, kinds=OWN_STUDENT, group=STUDY
    )
    target_params: float = option(
        0.55,
        "share of the teacher's parameters every arm's student keeps (`slimlm student --target-params`)",
        kinds=SHAPE_KINDS,
        group=STUDY,
    )
    model: str | None = option(
        None, "model both methods fine-tune (default: a student distilled once)", kinds=("finetune",), group=INPUTS
    )
    rank: int = option(8, "LoRA rank", minimum=1, kinds=("finetune",), group=STUDY)
    lr_grid: str | list | None = option(
        None,
        "learning-rate multiples tried first, e.g. 0.2,1,5: the best validation perplexity picks the rate",
        kinds=("finetune",),
        group=STUDY,
    )
    with_teacher: bool = option(
        False,
        "fine-tune with the teacher in the loss (KD at --temperature and --alpha) instead of cross-entropy alone",
        kinds=("finetune",),
        group=STUDY,
    )
    max_tokens: int | None = option(None, "training tokens per arm", minimum=1, per_kind=MAX_TOKENS, group=TRAINING)
    learning_rate: float | None = option(
        None,
        f"default {number(SWEEP_DISTILL_LEARNING_RATE)} for distillation; fine-tuning: "
        f"{number(FINETUNE_LEARNING_RATES['lora'])} LoRA, {number(FINETUNE_LEARNING_RATES['full'])} full",
        group=TRAINING,
    )
    batch_size: int = option(4, "blocks per optimizer step", minimum=1, group=TRAINING)
    block_size: int = option(256, "tokens per training block", cli=False, minimum=1)
    temperature: float = option(2.0, "KD temperature of the arms that do not sweep it", group=TEACHER)
    alpha: float = option(0.5, "weight of the hard-label CE in the KD loss", group=TEACHER)
    feature_weight: float = option(1.0, "beta, weight of the feature loss", kinds=("feature-layer",), group=STUDY)
    weight_grid: str | list | None = option(
        None,
        "feature weights tried first, e.g. 0.1,1,10: the best validation perplexity picks --feature-weight",
        kinds=("feature-layer",),
        group=STUDY,
    )
    attention_weight: float = option(
        1.0, "weight of the attention-map loss of the study's attention arm", kinds=("feature-layer",), group=STUDY
    )
    cache_mode: str = option(
        "sample",
        "teacher signal of the arms: sample (cached draws), topk (cached logits) or online (no cache)",
        choices=STUDY_CACHE_MODES,
        group=TEACHER,
    )
    top_k: int = option(128, "--cache-mode topk: teacher logits kept per token", minimum=1, group=TEACHER)
    online_control: bool = option(
        False,
        "add an arm at --temperature with the teacher online, to show what the cache changes",
        kinds=("temperature",),
        group=STUDY,
    )
    recipe: str | None = option(
        None, "YAML of extra training settings applied to every run (e.g. warmup_ratio)", group=INPUTS
    )
    settings: dict | None = option(
        None, "extra training settings applied to every run (what --recipe holds)", cli=False
    )
    precision: str = precision_option("training of every arm (measurement stays fp32)", TRAINING)
    baselines: str = baselines_option()
    eval_tokens: int | None = option(
        None, f"test tokens scored, from the start of the split (default {EVAL_DEFAULTS['tokens']})", group=EVALUATION
    )
    repeats: int | None = option(None, f"decode-speed repeats (default {EVAL_DEFAULTS['repeats']})", group=EVALUATION)
    tasks: str | list | None = option(
        None,
        f"downstream checks per model: cloze,summarization or none (default {','.join(EVAL_DEFAULTS['tasks'])})",
        group=EVALUATION,
    )
    task_items: int | None = option(None, "items per downstream task (default: each task's own)", group=EVALUATION)
    general_data: str | None = option(
        None,
        f"general text also scored: wikipedia, any --data value, or none (default {EVAL_DEFAULTS['general_data']})",
        corpus=True,
        group=EVALUATION,
    )
    evaluation: dict | None = option(
        None,
        "the measurement protocol (EVAL_DEFAULTS above); the flags above override its keys",
        cli=False,
    )
    out: str | None = out_option("run folder; rerun the same command to finish missing arms")
    force: bool = force_option("delete the run folder and start over")
    command: str | None = option(None, "the command line, recorded in experiment.json", cli=False)

    def check(self) -> None:
        if self.online_control and self.kind != "temperature":
            raise SlimlmError(
                f"--online-control is an option of `slimlm experiment temperature` only (got kind {self.kind}); drop it"
            )
        if self.online_control and self.cache_mode == "online":
            raise SlimlmError(
                "--online-control with --cache-mode online: every arm already runs the teacher online; drop one"
            )
        if self.lr_grid is not None and self.learning_rate is not None:
            raise SlimlmError("--lr-grid picks each method's learning rate: drop --learning-rate, or drop --lr-grid")
        if self.kind in SHAPE_KINDS:
            check_target(self.target_params)
            if self.student:
                raise SlimlmError(
                    f"--student: `slimlm experiment {self.kind}` builds each arm's own student at --target-params; "
                    "drop --student"
                )

    def tokens_per_arm(self) -> int:
        """--max-tokens, or the kind's default (MAX_TOKENS)."""
        return self.max_tokens if self.max_tokens is not None else self.MAX_TOKENS[self.kind][2]

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
            "general_data": self.general_data,
        }
        return {**(self.evaluation or {}), **{k: v for k, v in flags.items() if v is not None}}


@dataclass
class PipelineSettings(Settings):
    """`slimlm pipeline RECIPE`: distil -> fine-tune -> prune -> quantize from one recipe, every stage measured."""

    recipe: str = option("", "YAML recipe (examples in recipes/)", positional=True, group=INPUTS)
    baselines: str = baselines_option()
    out: str | None = out_option("run folder; rerun the same command to finish missing stages")
    force: bool = force_option("delete the run folder and start over")
    command: str | None = option(None, "the command line, recorded in experiment.json", cli=False)


@dataclass
class ReportSettings(Settings):
    """`slimlm report RUN_DIR`: report.md, report.html and plots of a finished (or partial) run folder."""

    run_dir: str = option("", "an experiment or pipeline folder", positional=True, group=INPUTS)
    force: bool = force_option("replace an existing report")
