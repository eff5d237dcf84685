"""Several corpora as one: `--data sotu,wikipedia` (equal shares) or `--data sotu:3,wikipedia:1`.

A student trained on one narrow corpus specialises to it; mixing in general text is how a user keeps
what the teacher knew elsewhere. Each part is split and cached on its own (corpus.py), so its test text
stays its own; the mix's training blocks hold each part in proportion to its weight, as many as fit
without repeating a block of any part, chosen by a fixed draw, so every run of the same mix trains on the
same blocks. The mix's validation and test streams are the parts' own, interleaved piece by piece.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from slimlm.data.builtins import BUILTIN_CORPORA
from slimlm.errors import SlimlmError


def is_mix(spec) -> bool:
    """A comma-separated list of corpora, or one corpus with a weight (`sotu:3`, read as `sotu`, since a
    weight alone shares nothing); a path that exists is never read as either."""
    text = str(spec)
    if Path(text).expanduser().exists():
        return False
    return "," in text or _split_weight(text)[1] is not None


def check_data_spec(spec, flag: str = "--data") -> None:
    """Every error in a --data value that needs no file read, found when the settings are validated (before
    any model loads): a built-in corpus with a weight that is not a number, and a mix's weights."""
    text = str(spec)
    if Path(text).expanduser().exists():
        return
    for item in text.split(","):
        name, colon, weight = item.strip().rpartition(":")
        if colon and name in BUILTIN_CORPORA and not _is_number(weight):
            raise SlimlmError(
                f"{flag} {spec}: the weight after {name}: must be a number (e.g. {name}:3), got {weight!r}"
            )
    if is_mix(text):
        parse_mix(text, flag)


def corpus_names(spec) -> list[str]:
    """The corpora `spec` names: its parts for a mix, else itself."""
    return [n for n, _ in parse_mix(spec)] if is_mix(spec) else [str(spec)]


def parse_mix(spec: str, flag: str = "--data") -> list[tuple[str, float]]:
    """[(corpus, share)] with shares summing to 1; `name:weight` sets a part's weight (default 1)."""
    parts = []
    for item in (p.strip() for p in str(spec).split(",")):
        if not item:
            raise SlimlmError(f"{flag} {spec}: an empty corpus name between commas; write e.g. sotu,wikipedia")
        name, weight = _split_weight(item)
        weight = "1" if weight is None else weight
        value = float(weight)
        if not math.isfinite(value) or value <= 0:
            raise SlimlmError(f"{flag} {spec}: weight of {name} must be a positive number (got {weight!r})")
        parts.append((name.strip(), value))
    names = [n for n, _ in parts]
    if len(set(names)) != len(names):
        raise SlimlmError(f"{flag} {spec} names a corpus twice; give each corpus once, with its weight")
    total = sum(w for _, w in parts)
    shares = [(n, w / total) for n, w in parts]
    if not math.isfinite(total) or any(share <= 0 for _, share in shares):  # 1e308 + 1e308 overflows
        raise SlimlmError(
            f"{flag} {spec}: the weights are too far apart or too large to share the blocks; use small "
            "relative numbers (e.g. sotu:3,wikipedia:1)"
        )
    return shares


def _interleave(streams: list[torch.Tensor], piece: int) -> torch.Tensor:
    """The streams in turn, `piece` tokens at a time, so any prefix (in-training validation reads the first
    few thousand tokens) holds every part, not only the first."""
    chunks = [list(s.split(piece)) for s in streams]
    out = [c[i] for i in range(max(map(len, chunks))) for c in chunks if i < len(c)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _split_weight(item: str) -> tuple[str, str | None]:
    """`sotu:3` -> ("sotu", "3"); `sotu`, or a path that exists or ends in a non-number -> (item, None).
    A path may hold a colon: only a number after the last one is a weight."""
    name, _, weight = item.rpartition(":")
    if not name or not _is_number(weight) or Path(item).expanduser().exists():
        return item, None
    return name, weight


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def mix_splits(spec: str, tokenizer, block_size: int, prepare):
    """The mixed Splits of `spec`; `prepare(name, tokenizer, block_size)` gives one part's Splits."""
    parts = parse_mix(spec)
    if len(parts) == 1:  # `sotu:3`: one corpus, all of the blocks
        return prepare(parts[0][0], tokenizer, block_size)
    splits = {name: prepare(name, tokenizer, block_size) for name, _ in parts}
    # as many blocks as fit with no part's block used twice: part i holds share_i of them
    total = min(len(splits[name].train) / share for name, share in parts)
    chosen, counts = [], {}
    for index, (name, share) in enumerate(parts):
        train = splits[name].train
        k = min(len(train), max(1, round(total * share)))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(index))
        chosen.append(train[order[:k]])
        counts[name] = k
    train = torch.cat(chosen)
    val = _interleave([splits[n].val for n, _ in parts], block_size)
    test = _interleave([splits[n].test for n, _ in parts], block_size)
    taken = sum(counts.values())
    label = "+".join(f"{n}:{share:.2g}" for n, share in parts)
    info = {
        "corpus": label,
        "rule": "mix of "
        + ", ".join(
            f"{n} ({counts[n] / taken:.0%} of the training blocks; split {splits[n].info['rule']})" for n, _ in parts
        )
        + f"; validation and test: the parts' own, interleaved in pieces of {block_size} tokens",
        "block_size": block_size,
        "train": {
            "tokens": int(train.numel()),
            "blocks": len(train),
            "documents": sum(splits[n].info["train"]["documents"] for n, _ in parts),
            "bytes": sum(round(splits[n].info["train"]["bytes"] * counts[n] / len(splits[n].train)) for n, _ in parts),
            "blocks_per_part": counts,
        },
        **{
            name: {
                "tokens": sum(len(getattr(splits[n], name)) for n, _ in parts),
                "documents": sum(splits[n].info[name]["documents"] for n, _ in parts),
                "bytes": sum(splits[n].info[name]["bytes"] for n, _ in parts),
            }
            for name in ("val", "test")
        },
        "parts": {n: {"share": share, **splits[n].info} for n, share in parts},
    }
    return type(splits[parts[0][0]])(train, val, test, info)  # the Splits type of data/corpus.py
