"""Validation perplexity during training, shared out over the ranks of a multi-process run."""

from __future__ import annotations

import math

import torch

from slimlm import distributed
from slimlm import precision as precisions


def validation_perplexity(model, tokens: torch.Tensor, window: int, precision, *, shared: bool = True) -> dict:
    """Validation perplexity, windows of `window` tokens at stride `window`. Under torchrun/accelerate
    (`shared`) each rank scores a contiguous share of the windows and the sums are gathered: the same
    windows, so the same numbers as one process (to float rounding), in 1/N of the time."""
    from slimlm.eval.metrics import perplexity

    def score(ids):
        with precisions.autocast(precision, next(model.parameters()).device.type):
            return perplexity(model, ids, window=window, stride=window, progress=False)

    world = distributed.world_size()
    if not shared or world == 1:
        return score(tokens)
    n_windows = math.ceil(len(tokens) / window)
    rank = distributed.rank()
    lo, hi = n_windows * rank // world * window, min(n_windows * (rank + 1) // world * window, len(tokens))
    mine = score(tokens[lo:hi]) if hi - lo >= 2 else {"nll": 0.0, "accuracy": 0.0, "tokens_scored": 0}
    nll, correct, scored = distributed.all_sum(
        [mine["nll"] * mine["tokens_scored"], mine["accuracy"] * mine["tokens_scored"], mine["tokens_scored"]]
    )
    return {
        "perplexity": math.exp(nll / scored),
        "nll": nll / scored,
        "tokens_scored": int(scored),
        "accuracy": correct / scored,
        "bits_per_byte": None,
        "window": window,
        "stride": window,
    }
