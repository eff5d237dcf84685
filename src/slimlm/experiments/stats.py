"""The report's statistics over seeds: summaries (mean, sample std), whether two arms are within each
other's seed spread, trend shapes, rank correlation and the size/perplexity frontier.

Kept apart from the prose (compare.py) so every sentence and table rests on the same few functions,
each small enough to check by hand (tests/test_report.py does).
"""

from __future__ import annotations

import math

import numpy as np

STD_NOTE = "std is the sample standard deviation over seeds (ddof=1); it is null (shown without ±) when n=1"
SPREAD_NOTE = (
    "'within our seed spread' means the two arms' mean ± 1 std intervals overlap; "
    "with one seed per arm the spread is unknown"
)


def finite(v) -> bool:
    """A real, finite number (not a bool): the only values that are averaged, shown or plotted."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summarize(pairs: list[tuple[int, float]]) -> dict | None:
    """mean, sample std (ddof=1; None for n=1), min, max, n and the per-seed values of (seed, value) pairs.
    Non-finite values cannot be averaged honestly: they are left out and counted."""
    kept = [(s, float(v)) for s, v in pairs if finite(v)]
    dropped = len([v for _, v in pairs if v is not None]) - len(kept)
    if not kept:
        return None
    values = np.array([v for _, v in kept])
    out = {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else None,
        "min": float(values.min()),
        "max": float(values.max()),
        "n": len(values),
        "seeds": [s for s, _ in kept],
        "values": [v for _, v in kept],
    }
    if dropped:
        out["non_finite_dropped"] = dropped
    return out


def summarize_block(results: list[dict], block: str) -> dict:
    """Per-metric summaries over seeds for one block ("metrics" or "training") of an arm's results."""
    blocks = [r.get(block) or {} for r in results]
    keys = []
    for b in blocks:
        keys += [k for k, v in b.items() if finite(v) and k not in keys]
    return {k: s for k in keys if (s := summarize([(r.get("seed"), b.get(k)) for r, b in zip(results, blocks)]))}


def common_seeds(arms: list[dict], key: str) -> list[int]:
    """The seeds every arm measured `key` on: a partial run's arms have different seed sets."""
    summaries = [a["metrics"][key] for a in arms if key in a["metrics"]]
    if not summaries or not all("seeds" in m and "values" in m for m in summaries):
        return []  # an older report.json keeps means only
    return sorted(set.intersection(*(set(m["seeds"]) for m in summaries)))


def ranked(arms: list[dict], key: str, higher: bool) -> list[dict]:
    """The arms that measured `key`, best first. Means over different seed sets are not comparable (one seed
    can move a mean more than the arms differ), so arms are ranked on their mean over the seeds they all have;
    with no seed in common, on their own means."""
    measured = [a for a in arms if key in a["metrics"]]
    common = common_seeds(measured, key)

    def score(arm: dict) -> float:
        m = arm["metrics"][key]
        if not common or m["seeds"] == common:
            return m["mean"]
        values = [v for s, v in zip(m["seeds"], m["values"]) if s in common]
        return sum(values) / len(values)

    return sorted(measured, key=score, reverse=higher)


def ranked_on(arms: list[dict], key: str) -> str:
    """'' when every arm has the same seeds; otherwise the words saying which seeds the ranking used."""
    common = common_seeds(arms, key)
    if not common or all(a["metrics"][key]["seeds"] == common for a in arms if key in a["metrics"]):
        return ""
    seeds = ", ".join(map(str, common))
    return (
        f" (ranked on seeds {seeds}, the ones every arm has)"
        if len(common) > 1
        else f" (ranked on seed {seeds}, the one every arm has)"
    )


def within_spread(a: dict, b: dict) -> bool | None:
    """Whether mean ± 1 std of two summaries overlap; None when either has one seed (spread unknown)."""
    if a["std"] is None or b["std"] is None:
        return None
    return abs(a["mean"] - b["mean"]) <= a["std"] + b["std"]


def paired(arm: dict, control: dict) -> dict | None:
    """The paired difference by seed: arm / control − 1 on every seed both have, its mean and sample std, and
    each seed's sign. Seeds share the blocks and the starting student, so pairing removes what they share;
    None when no seed is in both."""
    by_seed = dict(zip(control.get("seeds") or [], control.get("values") or []))
    pairs = [(s, v / by_seed[s] - 1) for s, v in zip(arm.get("seeds") or [], arm.get("values") or []) if by_seed.get(s)]
    if not pairs:
        return None
    values = np.array([d for _, d in pairs])
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else None,
        "n": len(values),
        "seeds": [s for s, _ in pairs],
        "values": [float(d) for d in values],
        "signs": "".join("+" if d > 0 else "−" if d < 0 else "0" for d in values),
    }


def shape(values: list[float]) -> str:
    """The trend of a sequence ordered by the swept parameter: increasing, decreasing, peak, valley, mixed."""
    signs = [s for s in np.sign(np.diff(values)) if s != 0]
    if not signs:
        return "flat"
    changes = sum(1 for a, b in zip(signs, signs[1:]) if a != b)
    if changes == 0:
        return "increasing" if signs[0] > 0 else "decreasing"
    if changes == 1:
        return "peak" if signs[0] > 0 else "valley"
    return "mixed"


def _ranks(values: list[float]) -> np.ndarray:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = np.empty(len(values))
    i = 0
    while i < len(order):  # ties share their average rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation: compares orderings only, which is all that different setups let us compare."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def dominated(point, others) -> bool:
    """True when another point is no larger and no worse in perplexity, and better in one of them."""
    return any(o[0] <= point[0] and o[1] <= point[1] and (o[0] < point[0] or o[1] < point[1]) for o in others)
