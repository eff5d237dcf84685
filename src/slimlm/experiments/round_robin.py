"""Decode speeds measured round-robin, carried into a report and its speed panel.

A study measures each model's decode speed when that model is evaluated, minutes or hours apart; on a shared
2-core machine one busy minute moves one model's number by 25% and not the others'. `bench/decode_speed.py`
measures the models in turn, so the ratios it gives are the ones to read. Saved as `decode-speed.json` in a run
folder (or beside a committed report.json), it replaces the single-pass speeds in the report's speed panel.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimlm.errors import SlimlmError

FILE = "decode-speed.json"
KEYS = ("decode_tokens_per_s", "decode_min", "decode_max", "decode_ratio")


def read_round_robin(folder) -> dict | None:
    """The round-robin speeds in FOLDER/decode-speed.json as {cpu, rounds, baseline, models: {name: KEYS}},
    or None when the folder has none."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        models = {name: {k: float(m[k]) for k in KEYS} for name, m in data["models"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SlimlmError(
            f"{path} is not the JSON bench/decode_speed.py writes: rerun it with --out, or remove the file"
        ) from None
    return {"cpu": data.get("cpu"), "rounds": data.get("rounds"), "baseline": data.get("baseline"), "models": models}


def with_round_robin_speeds(report: dict) -> dict:
    """A copy of `report` whose arms and references carry the round-robin decode speed (seed 0's model, the one
    measured) in place of the single-pass one; models the round-robin pass did not measure lose the metric, so
    a speed panel never mixes the two kinds of measurement."""
    models = report["round_robin"]["models"]

    def swap(metrics: dict, name: str, summary) -> dict:
        rest = {k: v for k, v in metrics.items() if k != "decode_tokens_per_s"}
        return {**rest, "decode_tokens_per_s": summary(models[name])} if name in models else rest

    def arm_summary(m: dict) -> dict:
        value = m["decode_tokens_per_s"]
        return {"mean": value, "std": None, "values": [value], "seeds": [0], "n": 1}

    arms = [{**a, "metrics": swap(a["metrics"], a["name"], arm_summary)} for a in report["arms"]]
    references = {
        name: {**ref, "metrics": swap(ref.get("metrics", {}), name, lambda m: m["decode_tokens_per_s"])}
        for name, ref in report["references"].items()
    }
    return {**report, "arms": arms, "references": references}


def round_robin_lines(speeds: dict | None) -> list[str]:
    """The report's table of round-robin decode speeds (median over rounds, min–max, ratio to the baseline)."""
    if not speeds:
        return []
    lines = [
        "### Decode speed, round-robin",
        "",
        f"`bench/decode_speed.py`: every model measured in turn, {speeds['rounds']} rounds, on {speeds['cpu']}; "
        f"the ratio to {speeds['baseline']} is taken within each round. Read speed from this table, not from the "
        "single-pass column above.",
        "",
        "| model | decode tok/s (median) | min–max | × " + str(speeds["baseline"]) + " |",
        "|---|---|---|---|",
    ]
    for name, m in speeds["models"].items():
        lines.append(
            f"| {name} | {m['decode_tokens_per_s']:.1f} | {m['decode_min']:.1f}–{m['decode_max']:.1f} | "
            f"{m['decode_ratio']:.2f} |"
        )
    return lines + [""]
