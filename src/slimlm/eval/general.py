"""Perplexity and accuracy on general-domain text, beside the in-domain test split.

A student distilled on one narrow corpus keeps the teacher's quality there and loses it elsewhere; only a
second, general text set shows that (the demo student on State of the Union speeches: 2.0x the teacher's
perplexity in domain, 4.3x on Wikipedia prose). Every evaluation scores the test split of the built-in
general corpus (data/builtins.GENERAL_CORPUS) the same way and reports it under `general_*` keys.

The general test split holds whole articles, sorted by title; so that a token budget covers many topics
rather than the first article, the scored windows are spread evenly over the whole split.
"""

from __future__ import annotations

import torch

from slimlm.eval.metrics import perplexity

GENERAL_KEYS = ("perplexity", "accuracy", "bits_per_byte", "tokens_scored", "nll")


def spread_windows(ids: torch.Tensor, tokens: int | None, window: int) -> torch.Tensor:
    """Up to `tokens` tokens of `ids` as whole windows spread evenly over it (all of it when it fits),
    concatenated: scored with stride == window, each window is its own context."""
    ids = torch.as_tensor(ids).reshape(-1)
    if tokens is None or len(ids) <= tokens:
        return ids
    n = max(1, tokens // window)
    starts = torch.linspace(0, len(ids) - window, n).round().long().tolist()
    return torch.cat([ids[s : s + window] for s in starts])


def check_general(data: str) -> None:
    """Load (and fetch, once) the general text before any model is measured, so a missing package or a
    wrong name fails now, in one line, rather than after the first model's evaluation."""
    from slimlm.data.corpus import load_corpus
    from slimlm.data.mix import corpus_names
    from slimlm.errors import SlimlmError
    from slimlm.settings import general_off

    if general_off(data):
        return
    try:
        for name in corpus_names(data):
            load_corpus(name)
    except SlimlmError as exc:
        raise SlimlmError(f"general text {data!r} (--general-data): {exc}; or pass --general-data none") from None


def general_splits(data: str, tokenizer, window: int):
    """The splits of general corpus `data` under `tokenizer`; a failure names --general-data and its way out."""
    from slimlm.data.corpus import prepare_data
    from slimlm.errors import SlimlmError

    try:
        return prepare_data(data, tokenizer, window)
    except SlimlmError as exc:
        raise SlimlmError(f"general text {data!r} (--general-data): {exc}; or pass --general-data none") from None


def general_metrics(
    model, tokenizer, data: str, *, window: int, tokens: int | None, progress: bool = True, splits=None
) -> dict:
    """`general_perplexity`, `general_accuracy`, ... of `model` on the test split of corpus `data`, scored in
    non-overlapping windows (spread_windows); `general_data` names the text and `general_protocol` how."""
    splits = splits or general_splits(data, tokenizer, window)  # callers that also prompt from it pass theirs
    ids = spread_windows(splits.test, tokens, window)
    text_bytes = len(tokenizer.decode(ids.tolist()).encode("utf-8")) if tokenizer is not None else None
    result = perplexity(model, ids, window=window, stride=window, text_bytes=text_bytes, progress=progress)
    return {
        **{f"general_{k}": result[k] for k in GENERAL_KEYS},
        "general_data": data,
        "general_protocol": (
            f"{data} test split ({splits.info['test']['documents']} documents, {len(splits.test):,} tokens; "
            f"{splits.info['rule']}): {result['tokens_scored']:,} tokens scored in {len(ids) // window or 1} "
            f"windows of {window} spread evenly over it"
        ),
    }
