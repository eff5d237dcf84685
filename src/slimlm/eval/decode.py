"""Fixed-length sampling from a causal LM, fast on CPU: the student's rollouts for on-policy distillation and
the continuations that eval/generation.py scores.

`model.generate` pays per step for a `torch.cat` of the ids, logits processors, stopping criteria and mask
updates. The loop below skips them: with the demo student's shape, 4 rows of 128 tokens on a 2-core Zen 4, it
wrote 1.14x generate's tokens per second, and the same loop with a dynamic cache 0.93x (bench/decode_bench.py,
docs/results/on-policy). The model's own forward passes are most of the cost either way. The loop: one prefill
of the prompt, then one token per step against a StaticCache (preallocated, fixed shapes, so the step
could be compiled), explicit position ids, one autocast region around the whole rollout (weights are cast once,
not per step), and exact Gumbel-max sampling (no sort, no top-k/top-p: the samples come from the model's softmax
at `temperature`). Continuations never stop at end-of-text: every row gets `new_tokens` tokens.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from slimlm.errors import SlimlmError
from slimlm.eval.metrics import model_device
from slimlm.precision import autocast


@dataclass
class Rollout:
    """The sampled tokens (B, C) long, each token's log-prob under the distribution it was drawn from (B, C)
    float32, and the wall seconds the rollout took (prefill included)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    seconds: float


@contextlib.contextmanager
def evaluating(model):
    """eval() for the duration (dropout off), then every submodule back in the mode it was in."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def decode_cache(model, length: int):
    """A cache for `length` positions: a StaticCache where the model type supports one (the models transformers
    marks `_can_compile_fullgraph`), else a DynamicCache (slower: it grows by concatenation every step)."""
    from transformers import DynamicCache, StaticCache

    config = model.config
    if getattr(model, "_can_compile_fullgraph", False):
        return StaticCache(config=config, max_cache_len=length)
    return DynamicCache(config=config)


def gumbel_sample(logits: torch.Tensor, temperature: float, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of `logits` (B, V) from softmax(logits / temperature), by Gumbel-max:
    argmax(z - log E), E ~ Exp(1) is an exact draw and needs no sort or cumulative sum. Returns (ids (B,) long,
    their log-probs (B,) float32). `generator` (a dedicated torch.Generator) keeps the global RNG untouched."""
    z = logits.float() / temperature
    noise = torch.empty_like(z).exponential_(generator=generator)
    noise.clamp_min_(torch.finfo(noise.dtype).tiny)  # log(0) would pick its column whatever the logits
    ids = (z - noise.log()).argmax(dim=-1)
    return ids, _logprob(z, ids)


def greedy_pick(logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely token per row and its log-prob under softmax(logits / temperature)."""
    z = logits.float() / temperature
    ids = z.argmax(dim=-1)
    return ids, _logprob(z, ids)


def _logprob(z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return z.gather(-1, ids[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)


def sample_continuations(
    model,
    prompts: torch.Tensor,
    new_tokens: int,
    *,
    temperature: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    precision=None,
    cache=None,
) -> Rollout:
    """`new_tokens` tokens after each row of `prompts` (B, P), all rows of equal length (no padding, no mask).

    Sampled from softmax(logits / temperature) with `generator` (None: torch's global generator), or the argmax
    when `greedy`. The model runs in eval mode and is put back in its previous mode after. Under torch.no_grad,
    not inference_mode, so the returned ids can be embedded by a training forward that saves them for backward.
    `precision` (slimlm.precision.Precision) opens one autocast region for the whole rollout. `cache`: a cache
    from `decode_cache(model, P + new_tokens)` to reuse across rollouts of the same batch size and precision (a
    StaticCache takes both from its first rollout; it is reset here); by default a fresh one."""
    prompts = torch.as_tensor(prompts)
    if prompts.dim() != 2 or prompts.shape[1] < 1:
        raise SlimlmError(f"prompts has shape {tuple(prompts.shape)}: pass a (batch, prompt tokens) tensor")
    if new_tokens < 1:
        raise SlimlmError(f"new_tokens={new_tokens}: ask for at least one token")
    if not greedy and not temperature > 0:
        raise SlimlmError(f"temperature={temperature}: sample at a temperature above 0 (or greedy)")
    start = time.perf_counter()
    device = model_device(model)
    prompts = prompts.to(device=device, dtype=torch.long)
    batch, length = prompts.shape
    positions = torch.arange(length + new_tokens, device=device).view(1, -1)
    tokens = torch.empty(batch, new_tokens, dtype=torch.long, device=device)
    logprobs = torch.empty(batch, new_tokens, dtype=torch.float32, device=device)
    if cache is None:
        cache = decode_cache(model, length + new_tokens)
    else:
        cache.reset()

    def pick(logits):
        if greedy:
            return greedy_pick(logits, temperature if temperature > 0 else 1.0)
        return gumbel_sample(logits, temperature, generator)

    with evaluating(model), torch.no_grad(), autocast(precision, device.type):
        out = model(
            input_ids=prompts, position_ids=positions[:, :length], cache=cache, use_cache=True, logits_to_keep=1
        )
        for i in range(new_tokens):
            ids, lp = pick(out.logits[:, -1])
            tokens[:, i], logprobs[:, i] = ids, lp
            if i + 1 < new_tokens:
                step = positions[:, length + i : length + i + 1]
                out = model(input_ids=ids[:, None], position_ids=step, cache=cache, use_cache=True)
    return Rollout(tokens, logprobs, time.perf_counter() - start)
