"""Healing a depth cut before global distillation: blockwise local distillation (Puzzle, arXiv 2411.19146).

Dropping a run of layers leaves the student's first layer after the cut reading a hidden state it was never
trained on. Global KD repairs that through the whole network and the LM head, at the price of a full teacher
and student pass per step. Healing trains only the student layers on either side of each cut, so that their
output matches the teacher's output at the matching teacher layer for the same text: no LM head, neither
forward goes past the layer compared (it stops there), and the backward runs through 2 x window layers.
The loss is the paper's L_feature (losses/feature.py: squared distance on dimensions standardised by the
teacher's std). Whether the cheaper steps buy a better student per CPU-minute than spending the same time
on global KD is measured (bench/learning_curve.py), not assumed.
"""

from __future__ import annotations

import math
import time

import torch

from slimlm import precision as precisions
from slimlm.losses.feature import feature_loss
from slimlm.methods.layers import decoder_layers


class _Reached(Exception):
    """Raised by the hook on the layer compared: the forward has produced what is needed and stops."""


def cuts(kept: list[int]) -> list[int]:
    """Student layer indices after which teacher layers were dropped (kept [0..4, 21..29] -> [4])."""
    return [i for i in range(len(kept) - 1) if kept[i + 1] != kept[i] + 1]


def layer_output(model, index: int, ids: torch.Tensor) -> torch.Tensor:
    """The hidden state decoder layer `index` of `model` outputs for `ids`; the layers after it never run."""
    captured = {}

    def hook(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Reached

    handle = decoder_layers(model)[index].register_forward_hook(hook)
    try:
        model.get_decoder()(input_ids=ids, use_cache=False)
    except _Reached:
        pass
    finally:
        handle.remove()
    return captured["h"]


def heal_cuts(
    teacher,
    student,
    blocks: torch.Tensor,
    *,
    tokens: int,
    batch_size: int = 4,
    learning_rate: float = 3e-4,
    window: int = 1,
    precision=None,
    seed: int = 0,
    progress=None,
) -> dict:
    """Train the student layers within `window` of each cut so their output matches the teacher's at the
    matching layer, on about `tokens` tokens of `blocks` (n, T); returns what slimlm.json records."""
    kept = list(student.config.slimlm_kept_layers)
    spans = [(max(0, i - window + 1), min(len(kept) - 1, i + window)) for i in cuts(kept)]
    record = {
        "method": "blockwise local distillation of the layers around each cut (Puzzle, arXiv 2411.19146)",
        "cuts": [[kept[lo], kept[hi]] for lo, hi in spans],
        "window": window,
    }
    if not spans:
        return {**record, "steps": 0, "tokens": 0}
    trained = sorted({i for lo, hi in spans for i in range(lo, hi + 1)})
    layers = decoder_layers(student)
    was_trainable = {name: p.requires_grad for name, p in student.named_parameters()}
    for p in student.parameters():
        p.requires_grad_(False)
    params = [p for i in trained for p in layers[i].parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    steps = max(1, math.ceil(tokens / (batch_size * blocks.shape[1])))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    device = next(student.parameters()).device.type
    stds, losses, start = {}, [], time.time()
    student.train()
    teacher.eval()
    try:
        for step in (progress or (lambda x, **k: x))(range(steps), desc="healing the cut", unit="step"):
            pick = order[(torch.arange(batch_size) + step * batch_size) % len(order)]
            ids = blocks[pick]
            loss = 0.0
            for _, hi in spans:
                with torch.no_grad(), precisions.autocast(precision, device):
                    target = layer_output(teacher, kept[hi], ids).float()
                if hi not in stds:  # the teacher's per-dimension std, from the first batch (fixed after)
                    stds[hi] = target.reshape(-1, target.shape[-1]).std(0).clamp_min(1e-6)
                with precisions.autocast(precision, device):
                    out = layer_output(student, hi, ids)
                loss = loss + feature_loss([target], [out], teacher_std=[stds[hi]])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        for name, p in student.named_parameters():
            p.requires_grad_(was_trainable[name])
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        **record,
        "trained_layers": [kept[i] for i in trained],
        "steps": steps,
        "tokens": steps * batch_size * blocks.shape[1],
        "learning_rate": learning_rate,
        "loss_first": sum(head) / len(head),
        "loss_last": sum(tail) / len(tail),
        "seconds": round(time.time() - start, 1),
    }
