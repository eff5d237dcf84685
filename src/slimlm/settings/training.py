"""Settings of the two training commands, `distill` and `finetune` (paper section 2), from flags, a YAML recipe
or Python; `to_dict()` is what `slimlm.json` records under "settings".

Both train with the same loop, budget, precision and launch plumbing, so those fields are declared once in
`TrainingSettings` and the two commands build on it: a dataclass can only share fields through a base class,
and a subclass redeclares a field (same name, own default or help) where the commands differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slimlm.errors import SlimlmError
from slimlm.losses import KL_KINDS, POLICY_DIVERGENCES
from slimlm.losses.uld import CROSS_TOKENIZER_MODES
from slimlm.precision import PRECISIONS  # precision.py decides what auto means on the machine
from slimlm.settings.fields import Settings, finite, number, option
from slimlm.settings.groups import ADVANCED, CACHE, FINETUNING, GENERATED, INPUTS, STUDENT, TEACHER, TRAINING
from slimlm.settings.values import parse_duration

PRECISION_HINT = "; auto uses bf16 only where the hardware runs it natively"
FINETUNE_METHODS = ("lora", "full")
CACHE_MODES = ("sample", "topk")  # training/teacher_cache.py: sampled draws (unbiased) or top-k logits (biased)
FINETUNE_LEARNING_RATES = {"lora": 5e-4, "full": 5e-5}  # the default of each method: few weights move further
FSDP_OPTIONS = ("full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "no_shard", "offload", "auto_wrap")
# refused for slimlm's own fsdp_config here, and for accelerate's FSDP plugin in training/trainer.py
SHARDED_STATE_DICT_REFUSED = (
    "fsdp_config state_dict_type SHARDED_STATE_DICT resumes through "
    "torch.distributed.checkpoint, whose metadata is a pickle; slimlm keeps "
    "FULL_STATE_DICT checkpoints"
)


@dataclass
class TrainingSettings(Settings):
    """What both training commands take: the KD loss (paper section 2, eq. L_KD), the step budget, precision
    and launch."""

    data: str = option(
        "sotu", "built-in corpus, local .txt/.jsonl/.parquet files or folder, hub dataset id", corpus=True, group=INPUTS
    )
    temperature: float = option(
        2.0, "tau of the KD term (paper section 2, eq. L_KD); finetune: with --teacher", group=TEACHER
    )
    alpha: float = option(
        0.5, "weight of the hard-label CE; 1-alpha weighs the KD term; finetune: with --teacher", group=TEACHER
    )
    kl: str = option("forward", "divergence of the KD term; finetune: with --teacher", choices=KL_KINDS, group=TEACHER)
    block_size: int = option(256, "tokens per training block", minimum=2, group=TRAINING)
    batch_size: int = option(4, "blocks per optimizer step and process", minimum=1, group=TRAINING)
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step", minimum=1, group=ADVANCED)
    learning_rate: float = option(3e-4, "peak learning rate", group=TRAINING)
    weight_decay: float = option(0.0, "AdamW weight decay", cli=False, non_negative=True)
    warmup_ratio: float = option(0.05, "fraction of the steps spent warming up", cli=False, non_negative=True)
    max_tokens: int = option(
        300_000, "training budget in tokens (sets the number of optimizer steps)", minimum=1, group=TRAINING
    )
    max_steps: int | None = option(None, "optimizer steps (overrides --max-tokens)", minimum=1, group=TRAINING)
    optim: str = option("adamw_torch", "any transformers.TrainingArguments optimizer name", cli=False)
    max_grad_norm: float = option(1.0, "gradient clipping norm; 0 disables it", cli=False, non_negative=True)
    chunk_size: int = option(1024, "tokens per loss chunk (bounds the fp32 logits memory)", minimum=1, group=ADVANCED)
    seed: int = option(0, "seed of the block order and of new parameters", group=TRAINING)
    precision: str = option(
        "auto",
        "precision of training and teacher passes: auto = bf16 where the hardware runs it natively, else fp32",
        choices=PRECISIONS,
        hint=PRECISION_HINT,
        aliases={"--no-bf16": "fp32"},
        group=TRAINING,
    )
    max_time: str | float | None = option(
        None,
        "time budget, e.g. 15m or 1h30m (a bare number is seconds): the plan is fitted to it",
        metavar="DURATION",
        group=TRAINING,
    )
    save_steps: int = option(50, "checkpoint every N steps", minimum=1, group=ADVANCED)
    logging_steps: int = option(10, "log losses every N steps", minimum=1, group=ADVANCED)
    eval_window: int = option(256, "window of the validation perplexity before/after training", cli=False, minimum=1)
    eval_tokens: int = option(
        16384,
        "validation tokens scored before/after training (the test split is `slimlm eval`'s)",
        cli=False,
        minimum=1,
    )
    fsdp: str = option(
        "",
        "under torchrun/accelerate: shard with FSDP instead of DDP (docs/multi-gpu.md)",
        nargs="?",
        const="full_shard auto_wrap",
        metavar="OPTIONS",
        group=ADVANCED,
    )
    fsdp_config: dict | str | None = option(
        None, "transformers' fsdp_config file (a mapping in a recipe), with --fsdp", metavar="JSON", group=ADVANCED
    )
    deepspeed: str | None = option(
        None, "a DeepSpeed config; ZeRO-3 partitions the teacher (docs/multi-gpu.md)", metavar="JSON", group=ADVANCED
    )
    trust_remote_code: bool = option(False, "allow model code from the hub (off by default)", group=ADVANCED)

    def steps(self, world_size: int = 1) -> int:
        """Optimizer steps; `batch_size` is per process, so N processes (torchrun) take N times the tokens a step."""
        if self.max_steps is not None:
            return self.max_steps
        per_step = self.batch_size * self.grad_accum * world_size * self.block_size
        return max(1, -(-self.max_tokens // per_step))

    def time_budget_s(self) -> float | None:
        return None if self.max_time is None else parse_duration(self.max_time)

    def check(self) -> None:
        """The KD loss's settings (the same for every stage that can use a teacher), the budget and launch."""
        if not (finite(self.temperature) and self.temperature > 0):
            raise SlimlmError(
                f"--temperature must be > 0 and finite (got {self.temperature}); the paper uses 0.5 to 10"
            )
        if not (finite(self.alpha) and 0 <= self.alpha <= 1):
            raise SlimlmError(f"--alpha must be in [0, 1] (got {self.alpha}); 0 = pure KD, 1 = pure cross-entropy")
        if self.max_time is not None:
            parse_duration(self.max_time)
        if self.learning_rate is not None and not (finite(self.learning_rate) and self.learning_rate > 0):
            raise SlimlmError(f"--learning-rate must be > 0 and finite (got {self.learning_rate})")
        self._check_parallel()

    def _check_parallel(self) -> None:
        """--fsdp / --deepspeed: passed to transformers' TrainingArguments; only their shape is checked here."""
        unknown = [o for o in (self.fsdp or "").split() if o not in FSDP_OPTIONS]
        if unknown:
            raise SlimlmError(f"--fsdp option(s) {', '.join(unknown)} unknown; use {', '.join(sorted(FSDP_OPTIONS))}")
        if self.fsdp_config is not None and not self.fsdp:
            raise SlimlmError('--fsdp-config needs --fsdp (e.g. --fsdp "full_shard auto_wrap")')
        fsdp_config = self.fsdp_config
        if isinstance(fsdp_config, str):
            try:
                fsdp_config = json.loads(Path(fsdp_config).read_text())
            except (OSError, ValueError):
                raise SlimlmError(
                    f"--fsdp-config {self.fsdp_config} is not a readable JSON file; give one or a mapping in the recipe"
                ) from None
        if isinstance(fsdp_config, dict) and "SHARDED" in str(
            fsdp_config.get("state_dict_type", fsdp_config.get("fsdp_state_dict_type"))
        ):
            raise SlimlmError(SHARDED_STATE_DICT_REFUSED + " (leave state_dict_type out)")
        if self.deepspeed is not None:
            if self.fsdp:
                raise SlimlmError("give --fsdp or --deepspeed, not both")
            if not Path(self.deepspeed).is_file():
                raise SlimlmError(f"--deepspeed {self.deepspeed} does not exist; give a DeepSpeed JSON config file")


@dataclass
class DistillSettings(TrainingSettings):
    """`slimlm distill`: train a student to match the teacher (paper section 2)."""

    teacher: str = option("smollm2-135m", "built-in name, local dir, .gguf file or hub id", group=INPUTS)
    student: str | None = option(None, "student model directory (else --layers or --keep-layers)", group=INPUTS)
    layers: int | None = option(
        None, "build the student: keep N layers by measured importance", minimum=1, group=STUDENT
    )
    keep_layers: str | None = option(
        None, "build the student: keep these teacher layers, e.g. 0-4,20-29", layer_list=True, group=STUDENT
    )
    student_config: dict | None = option(None, "narrower widths: JSON or a .json/.yaml file", group=STUDENT)
    feature_layers: str = option(
        "", "hidden-state map teacher:student, e.g. 6:3,12:6 (paper section 2, eq. L_feature)", group=TEACHER
    )
    feature_weight: float = option(0.0, "beta, weight of the feature loss", non_negative=True, group=TEACHER)
    attention_layers: str = option("", "attention-map KD, decoder layers teacher:student, e.g. 20:10", group=TEACHER)
    attention_weight: float = option(0.0, "weight of the attention-map loss", non_negative=True, group=TEACHER)
    teacher_cache: bool = option(
        False, "run the teacher once over the training blocks and reuse its outputs in this and later runs", group=CACHE
    )
    cache_mode: str = option(
        "sample",
        "what the cache keeps: sample = teacher draws (unbiased), topk = top-k logits (biased)",
        choices=CACHE_MODES,
        group=CACHE,
    )
    cache_draws: int | None = option(
        None,
        "sample mode: draws per position (default: as many as fit 64 bytes, 31 for vocabularies <= 65,536)",
        minimum=1,
        group=CACHE,
    )
    top_k: int = option(64, "topk mode: teacher logits kept per token", minimum=1, group=CACHE)
    cache_layers: str = option(
        "",
        "extra teacher hidden-state indices to cache, e.g. 2,8,15: runs that distil "
        "from different layers over the same blocks then share one cache",
        cli=False,
        layer_list=True,
    )
    calibration_blocks: int = option(
        8, "blocks used for layer selection and feature-loss statistics", cli=False, minimum=1
    )
    cross_tokenizer: str = option(
        "auto",
        "a --student with another tokenizer: aligned (shared-token KL + ULD), uld, or auto (aligned if they differ)",
        choices=("auto", *CROSS_TOKENIZER_MODES),
        group=TEACHER,
    )
    on_policy: float = option(
        0.0,
        "share of the steps (GKD's lambda) on which the student writes its own continuations; 0 = off",
        non_negative=True,
        group=GENERATED,
    )
    continuation_tokens: int = option(
        128, "on-policy: tokens the student samples after each block's prompt", minimum=1, group=GENERATED
    )
    sample_temperature: float = option(
        1.0, "on-policy: temperature the student samples at (no top-k, no top-p)", group=GENERATED
    )
    policy_divergence: str | None = option(
        None, "on-policy: divergence on the sampled tokens (default --kl)", choices=POLICY_DIVERGENCES, group=GENERATED
    )
    jsd_beta: float = option(0.5, "beta of --kl jsd: 0 = forward KL, 1 = reverse KL", group=TEACHER)
    teacher_generated: bool = option(
        False, "sequence-level KD: train on blocks whose last --continuation-tokens the teacher wrote", group=GENERATED
    )
    rollout_reuse: int = option(
        1, "on-policy: steps each student rollout is trained on (1 = always fresh samples)", minimum=1, group=GENERATED
    )

    def check(self) -> None:
        super().check()
        self._check_on_policy()
        if self.kl != "forward" and self.teacher_cache:
            raise SlimlmError(
                f"--kl {self.kl} needs the full teacher distribution; drop --teacher-cache "
                "(the cache keeps samples or top-k logits, enough for the forward KL only) or use --kl forward"
            )
        if sum(x is not None for x in (self.student, self.layers, self.keep_layers)) != 1:
            raise SlimlmError("give exactly one of --student DIR, --layers N or --keep-layers LIST")

    def _check_continuations(self, flag: str) -> None:
        if not (finite(self.sample_temperature) and self.sample_temperature > 0):
            raise SlimlmError(f"--sample-temperature must be > 0 (got {self.sample_temperature}); 1 samples as is")
        if self.continuation_tokens >= self.block_size:
            raise SlimlmError(
                f"{flag}: --continuation-tokens {self.continuation_tokens} leaves no prompt in blocks of "
                f"{self.block_size} tokens; use fewer continuation tokens or a larger --block-size"
            )

    def _check_on_policy(self) -> None:
        if not (finite(self.jsd_beta) and 0 <= self.jsd_beta <= 1):
            raise SlimlmError(f"--jsd-beta must be in [0, 1] (got {self.jsd_beta}); 0.5 is the symmetric JSD")
        if self.teacher_generated:
            self._check_continuations("--teacher-generated")
        if not self.on_policy:
            if self.policy_divergence is not None:
                raise SlimlmError("--policy-divergence applies to on-policy steps: give --on-policy too")
            return
        if self.on_policy > 1:
            raise SlimlmError(f"--on-policy is a share of the steps, in [0, 1] (got {self.on_policy})")
        self._check_continuations("--on-policy")
        if self.alpha >= 1:
            raise SlimlmError("--on-policy needs the KD term: --alpha 1 would train on the data's CE alone")
        if self.teacher_cache:
            raise SlimlmError(
                "--on-policy needs the teacher online (it scores text the student writes during training); "
                "drop --teacher-cache"
            )
        if self.fsdp or self.deepspeed:
            raise SlimlmError("--on-policy samples with the whole student: run it without --fsdp/--deepspeed")


@dataclass
class FinetuneSettings(TrainingSettings):
    """`slimlm finetune`: LoRA or full fine-tuning (paper section 2, Figure 3), with the teacher in the loss
    when one is given."""

    model: str = option(
        "", "model to fine-tune: model dir, built-in name, .gguf file or hub id", positional=True, group=INPUTS
    )
    data: str = option(
        "sotu",
        "plain text (as for distill) or instruction .jsonl: prompt/response or messages",
        corpus=True,
        group=INPUTS,
    )
    method: str = option("lora", "LoRA adapters or every weight", choices=FINETUNE_METHODS, group=FINETUNING)
    teacher: str | None = option(
        None, "with a teacher the loss is the distillation loss, else cross-entropy", group=INPUTS
    )
    rank: int = option(8, "LoRA rank r", minimum=1, hint="; LoRA uses r << d, e.g. 8", group=FINETUNING)
    lora_alpha: float = option(16.0, "LoRA scaling numerator; the update is scaled by lora_alpha/r", group=FINETUNING)
    dropout: float = option(0.05, "LoRA dropout", group=FINETUNING)
    target_modules: str | None = option(
        None, "comma list of Linear names (default every attention and MLP projection)", group=FINETUNING
    )
    learning_rate: float | None = option(
        None,
        f"peak learning rate (default {number(FINETUNE_LEARNING_RATES['lora'])} for LoRA, "
        f"{number(FINETUNE_LEARNING_RATES['full'])} for full)",
        group=TRAINING,
    )
    max_tokens: int = option(
        100_000, "training budget in tokens (sets the number of optimizer steps)", minimum=1, group=TRAINING
    )
    fsdp: str = option(
        "",
        "under torchrun/accelerate, full fine-tuning only: shard with FSDP instead of DDP (docs/multi-gpu.md)",
        nargs="?",
        const="full_shard auto_wrap",
        metavar="OPTIONS",
        group=ADVANCED,
    )

    def check(self) -> None:
        if not self.model:
            raise SlimlmError("give the model to fine-tune: slimlm finetune MODEL ...")
        if not (finite(self.lora_alpha) and self.lora_alpha > 0):
            raise SlimlmError(
                f"--lora-alpha must be > 0 (got {self.lora_alpha}); the update is scaled by lora_alpha/rank"
            )
        if not (finite(self.dropout) and 0 <= self.dropout < 1):
            raise SlimlmError(f"--dropout must be in [0, 1) (got {self.dropout})")
        super().check()
        if self.method == "lora" and (self.fsdp or self.deepspeed):
            raise SlimlmError(
                "LoRA fine-tuning runs under plain DDP (torchrun without --fsdp/--deepspeed): its "
                "trainable weights are few; use --method full to shard a full fine-tune"
            )
        if self.target_modules is not None and not [m for m in self.target_modules.split(",") if m.strip()]:
            raise SlimlmError("--target-modules is empty; name Linear layers such as q_proj,v_proj or leave it out")
        if self.learning_rate is None:
            self.learning_rate = FINETUNE_LEARNING_RATES[self.method]


@dataclass
class TrainingRun(Settings):
    """How a training command runs, beside what it trains with (not recorded in slimlm.json)."""

    out: str | None = option(
        None, "output directory (refused if it exists, unless --force)", required=True, group=INPUTS
    )
    force: bool = option(False, "replace an existing output", group=INPUTS)
    recipe: str | None = option(None, "YAML file of settings; flags override it", group=INPUTS)
    resume: bool = option(False, "continue an interrupted run from its last checkpoint", group=INPUTS)
