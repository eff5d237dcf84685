"""The report's first lines, so a reader gets the answer before the tables: which arm is best on the study's main
metric, by how much against the study's control paired by seed and whether every seed agrees, and the paper
comparison's conclusion in one sentence.

Computed from the report's own numbers (the dict report.json holds: its arms, paired block and kind), never
written in advance, so a report.json alone can be rendered again with it (rerender.py).
"""

from __future__ import annotations

from slimlm.experiments import compare, pipeline_text, stats
from slimlm.experiments import paper as paper_data
from slimlm.experiments.axis import method_of
from slimlm.experiments.columns import said
from slimlm.experiments.control import ONLINE, controls, swept
from slimlm.experiments.paired import paired_cell, paired_differences

# (our key, the paper's key, higher is better, words): the main metric first, the fallback where it is missing.
MAIN = (
    ("perplexity", "perplexity", False, "test perplexity"),
    ("accuracy", "accuracy_pct", True, "next-token accuracy"),
)
# Studies whose question has a second metric of the same weight: data-mix asks about general text too.
SECOND = {"data-mix": ("general_perplexity", None, False, "general-text perplexity")}


def verdict(report: dict) -> list[str]:
    """One or two sentences on the arms, then the paper's one-line conclusion where the study has one."""
    arms = [a for a in swept(report["arms"]) if a["metrics"]]
    if not arms:
        return ["No arm has finished results yet: no verdict."]
    if report["kind"] == "pipeline":
        return pipeline_verdict(arms, report["references"])
    main = next((m for m in MAIN if any(m[0] in a["metrics"] for a in arms)), None)
    if main is None:
        return ["No arm measured perplexity or accuracy: no verdict."]
    out = [best_sentence(arms, report, main), *cache_sentence(arms, report, main)]
    second = SECOND.get(report["kind"])
    if second and any(second[0] in a["metrics"] for a in arms):
        out.append(best_sentence(arms, report, second))
    return out + paper_line(arms, report, main)


def best_sentence(arms: list[dict], report: dict, metric: tuple) -> str:
    """The best arm on one metric, then how far it is from the control (or, with none, the runner-up)."""
    key, _, higher, words = metric
    ranked = stats.ranked(arms, key, higher)
    best = ranked[0]
    label = best["label"]
    named = f"**{best['name']}**" + (f" ({label})" if label != best["name"] else "")
    scope = "Best point of the sweep" if controls(report["arms"]) else "Best"  # control arms are not points
    text = f"{scope} on {words}{stats.ranked_on(arms, key)}: {named}, {said(best['metrics'][key], key)}"
    return text + _versus(best, ranked[1:], report, key) + "."


def cache_sentence(arms: list[dict], report: dict, metric: tuple) -> list[str]:
    """With an online-teacher control (a sweep on the teacher cache), the cache's own effect at the control's τ
    is the yardstick: a best arm that beats the cached control by no more than that may owe its lead to the
    cache's noise, which changes with τ, rather than to the swept setting."""
    key, _, higher, _ = metric
    block = report["paired"] if "paired" in report else paired_differences(report["arms"], report)
    online = next((a for a in controls(report["arms"]) if a.get("control") == ONLINE), None)
    ranked = stats.ranked(arms, key, higher)
    if not (block and online and ranked) or ranked[0]["name"] == block["against"]:
        return []
    cache = (block["arms"].get(online["name"]) or {}).get(key)
    lead = (block["arms"].get(ranked[0]["name"]) or {}).get(key)
    if not (cache and lead):
        return []
    if abs(lead["mean"]) > abs(cache["mean"]):
        reading = "the lead is larger than the cache's own effect"
    else:
        reading = "the lead is no larger than the cache's own effect, so it may be the cache's noise: inconclusive"
    return [
        f"The teacher cache's own effect at {block['label']}: the online control {online['name']} against the "
        f"cached {block['against']}, paired by seed: {paired_cell(cache)}; {reading}."
    ]


def _versus(best: dict, rest: list[dict], report: dict, key: str) -> str:
    block = report["paired"] if "paired" in report else paired_differences(report["arms"], report)
    if block and best["name"] == block["against"]:
        return _control_is_best(block, rest, key)
    d = ((block or {}).get("arms", {}).get(best["name"]) or {}).get(key)
    if d:
        return (
            f"; against the control {block['against']} ({block['label']}), paired by seed: {paired_cell(d)}, "
            + carried(d)
        )
    if not rest:
        return ""
    second = rest[0]
    state = {
        None: "one seed per arm, so the seed spread is unknown",
        True: "within the seed spread",
        False: "beyond the seed spread",
    }[stats.within_spread(best["metrics"][key], second["metrics"][key])]
    return f"; the runner-up {second['name']} has {said(second['metrics'][key], key)}: {state}"


def _control_is_best(block: dict, rest: list[dict], key: str) -> str:
    """The control itself wins: how far the nearest arm is behind it, paired by seed."""
    for arm in rest:
        d = (block["arms"].get(arm["name"]) or {}).get(key)
        if d:
            return (
                f", and it is the study's control: the runner-up {arm['name']} against it, paired by seed: "
                f"{paired_cell(d)}, {carried(d)}"
            )
    return ", and it is the study's control"


def carried(d: dict) -> str:
    """Whether a paired difference is one the seeds carry: every seed on the same side (paired.py's rule)."""
    if d["n"] < 2:
        return "one seed, so the seed spread is unknown"
    if len(set(d["signs"])) == 1 and d["signs"][0] != "0":
        return f"every seed {'higher' if d['signs'][0] == '+' else 'lower'}: beyond the seed spread"
    return "the seeds disagree in sign: within the seed spread"


def paper_line(arms: list[dict], report: dict, main: tuple) -> list[str]:
    """The paper comparison's conclusion on the main metric, for the studies the paper has numbers for."""
    kind = report["kind"]
    source = paper_data.BY_KIND.get(kind)
    if not source or not source["points"] or kind in paper_data.NO_COUNTERPART:
        return []
    key, pkey, higher, _ = main
    words = key.replace("_", " ") if key == "perplexity" else "next-token accuracy"
    if kind == "finetune":
        by_method = {method_of(a): a for a in arms}
        if not {"lora", "full"} <= by_method.keys():
            return []
        text = compare.method_sentence(by_method["lora"], by_method["full"], key, pkey, higher, words)
    else:
        text = compare.paper_best(arms, report, key, pkey, higher, words)
    return [f"Against the paper: {text}"] if text else []


def pipeline_verdict(arms: list[dict], references: dict) -> list[str]:
    """A pipeline has no best arm: what its last stage's model bought against the teacher, and the frontier."""
    staged = [a for a in arms if pipeline_text.FRONTIER_KEYS <= a["metrics"].keys()]
    if not staged:
        return ["No stage measured both size and perplexity: no verdict."]
    teacher = (references.get("teacher") or {}).get("metrics") or {}
    last = staged[-1]
    return [f"The compressed model (last stage, {last['label']}): {pipeline_text.stage_numbers(last, teacher)}."] + (
        pipeline_text.pipeline_frontier(staged, references)
    )
