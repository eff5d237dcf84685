"""Typed, validated settings for the distillation and fine-tuning stages, from CLI flags, a YAML recipe or Python.

Validation lives here, once, so the CLI and the Python API refuse the same bad values with the
same one-line messages before any model is loaded.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from slimlm.errors import SlimlmError
from slimlm.losses import KL_KINDS

# refused for slimlm's own fsdp_config here, and for accelerate's FSDP plugin in training/trainer.py
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
        if not (_finite(self.temperature) and self.temperature > 0):
            raise SlimlmError(f"--temperature must be > 0 and finite (got {self.temperature}); "
                              "the paper uses 0.5 to 10")
        if not (_finite(self.alpha) and 0 <= self.alpha <= 1):
            raise SlimlmError(f"--alpha must be in [0, 1] (got {self.alpha}); 0 = pure KD, 1 = pure cross-entropy")
        if self.kl not in KL_KINDS:
            raise SlimlmError(f"--kl must be one of {', '.join(KL_KINDS)} (got {self.kl!r})")

    def _check_common(self) -> None:
        """Precision and the time budget, the same for every training stage."""
        from slimlm.precision import check

        check(self.precision)
        if self.max_time is not None:
            parse_duration(self.max_time)

    def time_budget_s(self) -> float | None:
        return None if self.max_time is None else parse_duration(self.max_time)

    @classmethod
    def from_dict(cls, values: dict):
        from slimlm.precision import from_legacy

        if not isinstance(values, dict):
            raise SlimlmError(f"settings must be a mapping of setting: value (got {_show(values)})")
        bad_keys = [k for k in values if not isinstance(k, str)]
        if bad_keys:
            raise SlimlmError(f"setting name {_show(bad_keys[0])} is not a name; write settings as name: value")
        values = from_legacy(values)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SlimlmError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}  # Path -> str
        values = {**values, **{k: _as_layer_list(values[k]) for k in _LAYER_LISTS if k in values}}
        cls.check_types(values)
        return cls(**values)

    @classmethod
    def check_types(cls, values: dict) -> None:
        """Each value against its field's annotation, so a recipe's `temperature: hot` is one line, not a
        TypeError deep in training. Ints pass for floats; bools pass only for bools; floats must be finite."""
        annotations = {f.name: f.type for f in fields(cls)}
        for name, value in values.items():
            if name in annotations and not _matches(value, annotations[name]):
                raise SlimlmError(f"setting {name} must be {_describe(annotations[name])} (got {_show(value)}); "
                                  "fix it in the recipe or on the command line")

    def _check_types(self) -> None:
        self.check_types(asdict(self))


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
    precision: str = "auto"  # auto|fp32|bf16: bf16 autocast only where the hardware runs it natively (precision.py)
    max_time: str | float | None = None  # training time budget, e.g. "15m" (seconds if a number); stops cleanly
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
        self._check_types()
        self._check_kd()
        self._check_common()
        self._check_parallel()
        if self.kl != "forward" and self.teacher_cache:
            raise SlimlmError(f"--kl {self.kl} needs the full teacher distribution; drop --teacher-cache "
                              "(the cache keeps only top-k logits) or use --kl forward")
        for name in ("feature_weight", "attention_weight", "weight_decay", "warmup_ratio", "max_grad_norm"):
            _check_non_negative(name, getattr(self, name))
        for name in ("block_size", "chunk_size", "batch_size", "grad_accum", "max_tokens", "save_steps",
                     "logging_steps", "top_k", "calibration_blocks", "eval_window", "eval_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SlimlmError(f"--{name.replace('_', '-')} must be a positive integer (got {value!r})")
        if self.max_steps is not None and self.max_steps < 1:
            raise SlimlmError(f"--max-steps must be a positive integer (got {self.max_steps})")
        if not (_finite(self.learning_rate) and self.learning_rate > 0):
            raise SlimlmError(f"--learning-rate must be > 0 and finite (got {self.learning_rate})")
        chosen = [x is not None for x in (self.student, self.layers, self.keep_layers)]
        if sum(chosen) != 1:
            raise SlimlmError("give exactly one of --student DIR, --layers N or --keep-layers LIST")
        if self.layers is not None and self.layers < 1:
            raise SlimlmError(f"--layers must be a positive integer (got {self.layers})")
        return self



FINETUNE_METHODS = ("lora", "full")

# layer lists a recipe may also write as a YAML list or a single number; stored as "0,1,2"
_LAYER_LISTS = ("keep_layers", "cache_layers")
_TYPE_WORDS = {"float": "a finite number", "int": "an integer", "str": "a string (quote it in YAML)",
               "bool": "true or false", "dict": "a mapping", "None": "null"}


def _finite(value) -> bool:
    """NaN compares False with everything, so `nan < 0` lets it through a plain range check."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_non_negative(name: str, value) -> None:
    if not (_finite(value) and value >= 0):
        raise SlimlmError(f"--{name.replace('_', '-')} must be >= 0 and finite (got {value})")


def _as_layer_list(value):
    """`keep_layers: [0, 1, 2]` or `cache_layers: 8` in a recipe -> "0,1,2" / "8", the flags' form."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    return value


def _matches(value, annotation: str) -> bool:
    """Does `value` fit a field annotation such as "float", "int | None" or "dict | str | None"?"""
    for kind in (k.strip() for k in str(annotation).split("|")):
        if kind == "None" and value is None:
            return True
        if kind == "bool" and isinstance(value, bool):
            return True
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind == "float" and _finite(value):
            return True
        if kind == "str" and isinstance(value, (str, os.PathLike)):
            return True
        if kind == "dict" and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return True
    return False


def _describe(annotation: str) -> str:
    return " or ".join(_TYPE_WORDS.get(k.strip(), k.strip()) for k in str(annotation).split("|"))


def _show(value) -> str:
    """A value for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    precision: str = "auto"  # as for distill
    max_time: str | float | None = None  # as for distill
    save_steps: int = 50
    logging_steps: int = 10
    eval_window: int = 256
    eval_tokens: int = 16384
    fsdp: str = ""  # as for distill; full fine-tuning only (LoRA trains few weights: plain DDP suits it)
    fsdp_config: dict | str | None = None
    deepspeed: str | None = None
    trust_remote_code: bool = False

    def validate(self) -> "FinetuneSettings":
        self._check_types()
        if not self.model:
            raise SlimlmError("give the model to fine-tune: slimlm finetune MODEL ...")
        if self.method not in FINETUNE_METHODS:
            raise SlimlmError(f"--method must be one of {', '.join(FINETUNE_METHODS)} (got {self.method!r})")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise SlimlmError(f"--rank must be a positive integer (got {self.rank!r}); LoRA uses r << d, e.g. 8")
        if not (_finite(self.lora_alpha) and self.lora_alpha > 0):
            raise SlimlmError(f"--lora-alpha must be > 0 (got {self.lora_alpha}); the update is scaled by lora_alpha/rank")
        if not (_finite(self.dropout) and 0 <= self.dropout < 1):
            raise SlimlmError(f"--dropout must be in [0, 1) (got {self.dropout})")
        self._check_kd()
        self._check_common()
        self._check_parallel()
        if self.method == "lora" and (self.fsdp or self.deepspeed):
            raise SlimlmError("LoRA fine-tuning runs under plain DDP (torchrun without --fsdp/--deepspeed): its "
                              "trainable weights are few; use --method full to shard a full fine-tune")
        if self.target_modules is not None and not [m for m in self.target_modules.split(",") if m.strip()]:
            raise SlimlmError("--target-modules is empty; name Linear layers such as q_proj,v_proj or leave it out")
        for name in ("weight_decay", "warmup_ratio", "max_grad_norm"):
            _check_non_negative(name, getattr(self, name))
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
        if not (_finite(self.learning_rate) and self.learning_rate > 0):
            raise SlimlmError(f"--learning-rate must be > 0 and finite (got {self.learning_rate})")
        return self



def parse_layer_map(spec, n_teacher, n_student):
    """'6:3,12:6' -> [(6, 3), (12, 6)]: teacher hidden-state index : student hidden-state index.

    Index i is HF `output_hidden_states[i]`: 0 = embeddings, i = output of decoder layer i-1, n = last layer.
    Empty or None -> [] (no feature distillation).
    """
    if spec is None or not str(spec).strip():
        return []
    pairs = []
    for item in str(spec).split(","):
        item = item.strip()
        parts = item.split(":")
        try:
            t, s = (int(p) for p in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            t = s = None
        if t is None:
            raise SlimlmError(f"bad layer-map entry {item!r} in {spec!r}: write teacher:student pairs of "
                              "hidden-state indices, e.g. '6:3,12:6'")
        if not 0 <= t <= n_teacher:
            raise SlimlmError(f"teacher index {t} in {spec!r} is out of range: use 0..{n_teacher} "
                              f"(0 = embeddings, {n_teacher} = last layer)")
        if not 0 <= s <= n_student:
            raise SlimlmError(f"student index {s} in {spec!r} is out of range: use 0..{n_student} "
                              f"(0 = embeddings, {n_student} = last layer)")
        pairs.append((t, s))
    return pairs


def check_positive_int(name: str, value, *, minimum: int = 1, hint: str = "") -> None:
    """The one check behind every count a user gives (`--block-size`, `--repeats`, ...): an int, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SlimlmError(f"--{name.replace('_', '-')} must be {what} (got {value!r}){hint}")


def comma_list(value) -> list[str]:
    """"a, b,,c" or ["a", "b"] -> ["a", "b", "c"]: the one parser of comma lists (tasks, methods, modules)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [item.strip() for item in items if item.strip()]


def parse_duration(value) -> float:
    """--max-time: "90s", "15m", "1.5h", "1h30m" or a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
        if not text or parts is None or not any(parts.groups()):
            raise SlimlmError(f"--max-time {value!r} is not a duration; write e.g. 90s, 15m, 1.5h or 1h30m")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise SlimlmError(f"--max-time must be a positive duration (got {value!r}); write e.g. 15m")
    return seconds


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
    except RecursionError:  # a hostile or broken file nested thousands deep
        raise SlimlmError(f"recipe {path} is nested too deeply to read; a recipe is a flat mapping of "
                          "setting: value") from None
    except OSError as exc:
        raise SlimlmError(f"recipe {path} cannot be read ({exc.strerror}); check its permissions") from None
    if not isinstance(values, dict):
        raise SlimlmError(f"recipe {path} must be a mapping of setting: value")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise SlimlmError(f"recipe {path}: key {_show(bad[0])} is not a setting name; write name: value "
                          "(quote the name if YAML reads it as a number or true/false)")
    return {k.replace("-", "_"): v for k, v in values.items()}
