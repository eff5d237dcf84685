"""The teacher's side of the loss for one micro-batch: its signal is online (a forward pass of the frozen
teacher), cached (sampled ids or top-k logits, and hidden states, read from training/teacher_cache.py with
the batch) or none (plain fine-tuning). The loss terms (training/terms.py) read a `Signal` and never ask
where it came from.

The online teacher is placed on each rank here: whole on its device (DDP), or sharded like the student under
FSDP (fully_shard) or DeepSpeed ZeRO-3 (an inference engine), for a teacher larger than one device.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch

from slimlm.data.aligned_blocks import flat_positions
from slimlm.losses.teachers import OnlineTeacher, SampledTeacher, TopkTeacher
from slimlm.precision import Precision, autocast


@dataclass
class Signal:
    """What the teacher says about one micro-batch.

    teacher: the typed signal the KD kernel reads (losses/teachers.py: OnlineTeacher, SampledTeacher or
        TopkTeacher), or None without one (or with a teacher of another tokenizer: `cross` below).
    hidden: teacher hidden states by index (0 = embeddings), for the feature term's layers.
    attentions: the teacher's attention maps by decoder layer (online teacher only), or None.
    cross: with a teacher of another tokenizer (data/aligned_blocks.py): its final hidden states at the
        aligned positions ("teacher_hidden", (N, d_t)), its head ("teacher_head"; None when cached: the term
        holds it) and the flat indices of the student's aligned positions ("student_rows", (N,)); else empty.
    """

    kind: str  # "online", "cached" or "none"
    teacher: OnlineTeacher | SampledTeacher | TopkTeacher | None = None
    hidden: dict = field(default_factory=dict)
    attentions: tuple | None = None
    cross: dict = field(default_factory=dict)


def teacher_signal(
    teacher, inputs: dict, layers, attentions: bool, precision: Precision | None, stack: contextlib.ExitStack
) -> Signal:
    """The signal for `inputs`: cached when the batch carries sampled ids or top-k logits, else online when there
    is a teacher, else none. `layers`: the teacher hidden states the terms read; `attentions`: whether they read
    its attention maps; `precision`: the run's decision (precision.Precision, None: fp32); `stack` holds the
    gathered teacher head (ZeRO-3) until the caller has computed the loss."""
    if "sample_ids" in inputs:  # random-sampling KD: draws from p_T^tau and its entropy (teacher_cache.py)
        ids, entropy = inputs["sample_ids"].flatten(0, 1).long(), inputs["teacher_entropy"].flatten(0, 1).float()
        sampled = SampledTeacher(ids, entropy)
        return Signal("cached", sampled, {t: inputs[f"teacher_hidden_{t}"] for t in layers})
    if "topk_values" in inputs:
        topk = TopkTeacher(inputs["topk_values"].flatten(0, 1), inputs["topk_indices"].flatten(0, 1).long())
        return Signal("cached", topk, {t: inputs[f"teacher_hidden_{t}"] for t in layers})
    if "teacher_hidden_aligned" in inputs:  # another tokenizer's teacher, cached (training/cross_cache.py)
        positions = inputs["student_positions"]
        return Signal(
            "cached",
            cross={
                "teacher_hidden": inputs["teacher_hidden_aligned"][positions.ge(0)],
                "teacher_head": None,  # the term holds the teacher's head
                "student_rows": flat_positions(positions, inputs["input_ids"].shape[1]),
            },
        )
    if teacher is None:
        return Signal("none")
    if "teacher_input_ids" in inputs:  # a teacher with its own tokenizer: its ids, and where they align
        return _cross_tokenizer_signal(teacher, inputs, precision, stack)
    with torch.no_grad(), autocast(precision, inputs["input_ids"].device.type):
        out = teacher(
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            output_hidden_states=True,
            output_attentions=attentions,
            logits_to_keep=1,
            use_cache=False,
        )
    head = stack.enter_context(teacher_head(teacher))
    return Signal(
        "online",
        OnlineTeacher(out.hidden_states[-1].flatten(0, 1), head),
        {t: out.hidden_states[t] for t in layers},
        out.attentions if attentions else None,
    )


def _cross_tokenizer_signal(teacher, inputs: dict, precision: Precision | None, stack: contextlib.ExitStack) -> Signal:
    """The online teacher on its own tokenization of the batch's text; only its final hidden states at the
    aligned positions are kept (the loss makes their logits a chunk at a time)."""
    ids = inputs["teacher_input_ids"]
    with torch.no_grad(), autocast(precision, inputs["input_ids"].device.type):
        out = teacher(
            input_ids=ids,
            attention_mask=inputs["teacher_attention_mask"],
            output_hidden_states=True,
            logits_to_keep=1,
            use_cache=False,
        )
    rows = flat_positions(inputs["teacher_positions"], ids.shape[1])
    hidden = out.hidden_states[-1].flatten(0, 1).index_select(0, rows)
    student_rows = flat_positions(inputs["student_positions"], inputs["input_ids"].shape[1])
    head = stack.enter_context(teacher_head(teacher))
    return Signal("online", cross={"teacher_hidden": hidden, "teacher_head": head, "student_rows": student_rows})


@contextlib.contextmanager
def teacher_head(teacher):
    """The teacher's output head, whole, for the chunked KD loss (read only: it has no gradient)."""
    weight = getattr(teacher, "module", teacher).get_output_embeddings().weight
    if hasattr(weight, "ds_id"):  # partitioned by ZeRO-3: gather it for the duration of the loss
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            yield weight
    else:
        yield weight.full_tensor() if hasattr(weight, "full_tensor") else weight  # FSDP2 shards it as a DTensor


def place_teacher(teacher, trainer, zero3: dict | None):
    """The frozen teacher on this rank: whole on its device (DDP), or sharded (FSDP, DeepSpeed ZeRO-3).
    `zero3`: the user's ZeRO-3 section when DeepSpeed should partition the teacher."""
    teacher.eval().requires_grad_(False)
    if trainer.is_deepspeed_enabled and zero3:
        return deepspeed_teacher(teacher, trainer.accelerator, zero3)
    if trainer.is_fsdp_enabled:
        return fsdp_teacher(teacher)
    return teacher.to(trainer.args.device)


def fsdp_teacher(teacher):
    """Shard the frozen teacher over the ranks with FSDP2 (`fully_shard` per decoder layer, then the root),
    so a teacher larger than one device still fits; its forward all-gathers one layer at a time. The teacher
    stays on the host until each `fully_shard` moves its module to the device and keeps this rank's shard,
    so no device ever holds more than one whole layer of it."""
    from torch.distributed.fsdp import fully_shard

    layer_types = tuple(
        {
            type(m)
            for m in teacher.modules()
            if type(m).__name__ in set(getattr(teacher, "_no_split_modules", None) or ())
        }
    )
    for module in list(teacher.modules()):
        if layer_types and isinstance(module, layer_types):
            fully_shard(module)
    fully_shard(teacher)
    return teacher.eval()


def deepspeed_teacher(teacher, accelerator, zero3: dict):
    """Partition the frozen teacher over the ranks with a ZeRO-3 inference engine (no optimizer), the way TRL
    prepares its teachers; the student's engine comes from the Trainer. `zero3`: the user's ZeRO section."""
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)  # batch sizes filled in
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    hidden = teacher.config.hidden_size
    sizes = {
        "reduce_bucket_size": hidden * hidden,
        "stage3_param_persistence_threshold": 10 * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
    }
    zero = {k: v for k, v in zero3.items() if v != "auto" and k != "offload_optimizer"}
    config["zero_optimization"] = {**sizes, **zero, "stage": 3}
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine
