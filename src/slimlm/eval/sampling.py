"""The one sampling rule of the offline downstream tasks (docs/downstream.md): a seed names one fixed
set of items on every machine, kept in source order so a subset reads like the source."""

from __future__ import annotations

import random


def seeded_sample(items: list, n: int, seed: int) -> list:
    """`n` of `items` chosen with random.Random(seed), in their original order; all of them when n >= len."""
    if n >= len(items):
        return list(items)
    chosen = random.Random(seed).sample(range(len(items)), n)
    return [items[i] for i in sorted(chosen)]
