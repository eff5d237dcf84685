"""Sequence-level KD (Kim & Rush 2016; GKD's seq_kd): the student distils on text the teacher wrote.

The teacher writes the last C tokens of every training block once, after the block's own first tokens (sampled
at a temperature with a KV cache, eval/decode.py), and the blocks the student trains on end with those
continuations instead of the data's. Writing them costs about one teacher decode per block, so they are stored
as an entry of the teacher cache (token ids only: 2 bytes a token for a vocabulary of up to 65,536), keyed by
the teacher's weights, the blocks, C, the temperature, the seed and the precision: `slimlm cache list` shows
them, `slimlm cache remove` frees them, and a later run with the same settings reads them back.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from slimlm.cache import fingerprint
from slimlm.distributed import log
from slimlm.eval.decode import sample_continuations
from slimlm.training.teacher_cache import (
    check_room,
    id_dtype,
    save_atomic,
    teacher_root,
    weights_identity,
    write_meta,
)

FILE = "continuations.safetensors"


def teacher_continuations(
    teacher,
    teacher_dir,
    blocks: torch.Tensor,
    *,
    continuation_tokens: int,
    temperature: float,
    seed: int,
    precision,
    batch_size: int = 8,
) -> torch.Tensor:
    """(n, C) token ids the teacher wrote after the first L - C tokens of each of the n blocks (n, L): read from
    the cache when an earlier run wrote them, else generated once and stored."""
    c = continuation_tokens
    prompt = blocks.shape[1] - c
    if prompt < 1:
        raise ValueError(f"continuations of {c} tokens leave no prompt in blocks of {blocks.shape[1]} tokens")
    signal = {"mode": "generated", "continuation_tokens": c, "temperature": temperature, "seed": seed}
    key = fingerprint(
        "teacher-generated-v1",
        weights_identity(teacher_dir),
        fingerprint(blocks.tolist()),
        signal,
        bool(precision and precision.bf16),
    )
    entry = teacher_root() / key
    if (entry / FILE).is_file():
        log(f"reusing the teacher's continuations {entry}")
        return load_file(str(entry / FILE))["tokens"].long()
    vocab = teacher.get_output_embeddings().weight.shape[0]
    dtype = id_dtype(vocab)
    check_room(entry, blocks.shape[0] * c * torch.empty((), dtype=dtype).element_size())
    generator = torch.Generator().manual_seed(seed)
    written = []
    for start in tqdm(range(0, blocks.shape[0], batch_size), desc="teacher writes continuations", unit="batch"):
        prompts = blocks[start : start + batch_size, :prompt]
        rollout = sample_continuations(
            teacher, prompts, c, temperature=temperature, generator=generator, precision=precision
        )
        written.append(rollout.tokens.to(dtype))
    tokens = torch.cat(written)
    entry.mkdir(parents=True, exist_ok=True)
    save_atomic({"tokens": tokens}, entry / FILE)
    write_meta(entry, teacher_dir, signal, tokens.element_size(), positions=int(tokens.numel()))
    return tokens.long()


def with_continuations(blocks: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The blocks with their last C tokens replaced by the (n, C) continuations."""
    return torch.cat([blocks[:, : blocks.shape[1] - tokens.shape[1]], tokens.to(blocks.dtype)], dim=1)
