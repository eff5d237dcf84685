"""`slimlm experiment data-mix`: the same student, budget and teacher, trained on different text: the in-domain
corpus alone, general text alone, or a mix (data/mix.py); every arm scored on the in-domain test split and on
general text (eval/general.py), so a reader sees what each choice keeps of the teacher where.

The paper distilled on general web text; slimlm's demo distils on one narrow corpus. This study is how the
demo's default data is chosen from numbers rather than habit. Arms are named by their data, a mix with `+`
(`sotu+wikipedia`, or `sotu:3+wikipedia:1` for weights), since commas separate the arms.
"""

from __future__ import annotations

import re

from slimlm.errors import SlimlmError
from slimlm.settings import general_off


def default_corpora(data: str, ev: dict) -> list[str]:
    """--data alone, the general text alone, and the two mixed in equal shares."""
    from slimlm.data.builtins import GENERAL_CORPUS

    general = ev.get("general_data")
    general = GENERAL_CORPUS if general_off(general) else general
    if data == general:
        raise SlimlmError(f"--data and the general text are both {data}: pass another --data, or --corpora")
    return [data, general, f"{data}+{general}"]


def data_arms(values) -> tuple[dict, list[dict]]:
    """(parameter, arms): one arm per corpus or `+`-joined mix, training on it (`--data`)."""
    names = [str(v).strip() for v in (values.split(",") if isinstance(values, str) else values)]
    if not names or any(not n for n in names):
        raise SlimlmError(f"--corpora {values!r}: give corpora or mixes, e.g. sotu,wikipedia,sotu+wikipedia")
    if len({_slug(n) for n in names}) != len(names):
        raise SlimlmError(f"--corpora {values!r} names an arm twice (or two that share a folder name); give each once")
    parameter = {"name": "data", "label": "training text", "numeric": False}
    arms = [
        {
            "name": _slug(n),
            "value": n,
            "label": n.replace("+", " + "),
            "settings": {"data": n.replace("+", ",")},
        }
        for n in names
    ]
    return parameter, arms


def data_notes(start: str, max_tokens: int) -> list[str]:
    return [
        f"every arm trains on {max_tokens:,} tokens per seed of its own text (a mix: each part's share of the "
        "training blocks); the arms differ only in that text",
        "metrics on the held-out test split of --data (in domain) and on general text; decode speed is batch-1 "
        "greedy generation, on the CPU that ran the study",
        f"arms start from {start}; the teacher runs online every step, as in the demo",
    ]


def _slug(name: str) -> str:
    """An arm name that is also a folder name: a path's separators and a weight's colon become dashes."""
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", name).strip("-.")[-60:].lstrip("-.") or "data"


def data_sentences(arms: list[dict], references: dict) -> list[str]:
    """Per arm: its perplexity and accuracy over the teacher's, in domain and on general text."""
    teacher = (references.get("teacher") or {}).get("metrics") or {}
    measured = [a for a in arms if a["metrics"]]
    if not measured:
        return ["No arm has finished results yet: nothing to compare."]
    if not teacher.get("perplexity"):
        return ["The teacher was not measured, so no arm can be put beside it."]
    out = []
    for arm in measured:
        m = arm["metrics"]
        parts = [
            f"{words} {m[key]['mean'] / teacher[key]:.2f}× the teacher's"
            for key, words in (
                ("perplexity", "in-domain perplexity"),
                ("general_perplexity", "general-text perplexity"),
                ("accuracy", "in-domain accuracy"),
                ("general_accuracy", "general-text accuracy"),
            )
            if key in m and teacher.get(key)
        ]
        out.append(f"Trained on {arm['label']} (n={len(arm['seeds'])}): " + ", ".join(parts) + ".")
    for key, words in (("perplexity", "in-domain"), ("general_perplexity", "general-text")):
        ranked = sorted((a for a in measured if key in a["metrics"]), key=lambda a: a["metrics"][key]["mean"])
        if len(ranked) > 1:
            out.append(f"Lowest {words} perplexity: {ranked[0]['label']}; highest: {ranked[-1]['label']}.")
    return out
