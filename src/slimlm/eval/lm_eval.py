"""lm-evaluation-harness tasks (lambada_openai, hellaswag, arc_easy, ...) on a slimlm model directory: the
standard benchmarks, where a network can fetch their data (docs/downstream.md, last section).

slimlm does not depend on lm-eval: it is imported when asked for, and its absence or failure is one line.
"""

from __future__ import annotations

import torch

from slimlm.errors import SlimlmError, first_line
from slimlm.settings import comma_list


def lm_eval_tasks(
    model_dir,
    tasks: list[str],
    *,
    batch_size: int | str = 8,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    device: str | None = None,
) -> dict:
    """lm-evaluation-harness tasks (e.g. lambada_openai, hellaswag, arc_easy) on a slimlm model. A plain
    model directory runs through lm-eval's `hf` model type; a slimlm-quantized one is loaded by slimlm and
    handed to lm-eval's HFLM. Returns {"task/metric": value} plus "lm_eval_protocol"."""
    if isinstance(tasks, str):
        tasks = comma_list(tasks)
    if not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
        raise SlimlmError("give at least one lm-evaluation-harness task name, e.g. lambada_openai,hellaswag")
    if limit is not None and not limit > 0:
        raise SlimlmError(f"limit={limit}: give a positive number of examples per task (or a fraction < 1)")
    if not (batch_size == "auto" or isinstance(batch_size, int) and batch_size >= 1):
        raise SlimlmError(f"batch_size={batch_size!r}: use a positive integer or 'auto'")
    try:
        import lm_eval
    except ImportError:
        raise SlimlmError(
            "lm-evaluation-harness is not installed: pip install 'lm-eval[hf]' (its tasks download "
            "their data from the Hugging Face hub, so it also needs the network)"
        ) from None
    from slimlm.methods.quantization import QUANTIZED_WEIGHTS
    from slimlm.sources import load_model, resolve_model

    path = resolve_model(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if (path / QUANTIZED_WEIGHTS).exists():
        from lm_eval.models.huggingface import HFLM

        model, tokenizer, _ = load_model(path)
        lm = HFLM(pretrained=model.to(device), tokenizer=tokenizer, batch_size=batch_size)
        kwargs = {"model": lm}
    else:
        kwargs = {
            "model": "hf",
            "model_args": {"pretrained": str(path), "dtype": "float32"},
            "batch_size": batch_size,
            "device": device,
        }
    try:
        out = lm_eval.simple_evaluate(tasks=list(tasks), limit=limit, num_fewshot=num_fewshot, **kwargs)
    except Exception as exc:
        raise SlimlmError(
            f"lm-evaluation-harness failed ({type(exc).__name__}: {first_line(exc)}); its tasks fetch "
            "data from the Hugging Face hub: check the network and the task names (lm-eval ls tasks)"
        ) from None
    flat = {
        f"{task}/{metric}": value
        for task, metrics in out["results"].items()
        for metric, value in metrics.items()
        if isinstance(value, (int, float)) and metric != "alias"
    }
    flat["lm_eval_protocol"] = {
        "tasks": list(tasks),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "model": str(path),
        "versions": out.get("versions", {}),
        "n_samples": out.get("n-samples", {}),
    }
    return flat
