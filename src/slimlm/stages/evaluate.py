"""Stage `eval`: the same metrics for every model on the same test split, side by side.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slimlm import precision as precisions
from slimlm.data.corpus import prepare_data
from slimlm.errors import SlimlmError
from slimlm.output import write_json_atomic
from slimlm.sources import check_same_tokenizer, load_model
from slimlm.training.distributed import log


def evaluate(models: list[str], *, data: str = "sotu", out: str | None = None, force: bool = False,
             window: int = 256, stride: int | None = None, new_tokens: int = 64, repeats: int = 3,
             precision: str = "fp32", bf16: bool | None = None, tasks: str | list[str] = (),
             task_items: int | None = None, lm_eval: str = "", trust_remote_code: bool = False) -> dict:
    """Stage `eval`: the same metrics for every model on the same test split, side by side; with `tasks`,
    the offline downstream checks too (slimlm.eval.tasks), and with `lm_eval`, lm-evaluation-harness tasks.

    `precision` defaults to fp32 here, unlike the training stages: a measurement protocol that does not
    change with the machine keeps numbers comparable across machines. `bf16` (or `auto` where the CPU runs
    bf16 natively) evaluates the weights cast to bf16, the way such a model would be deployed;
    `bf16=True` is the old spelling of precision="bf16"."""
    if bf16 is not None:
        precision = "bf16" if bf16 else "fp32"
    precisions.check(precision)
    from slimlm.eval.tasks import TASKS, lm_eval_tasks, run_tasks
    from slimlm.eval.metrics import evaluate_model, format_table

    tasks = [t.strip() for t in tasks.split(",") if t.strip()] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SlimlmError(f"unknown task(s) {', '.join(unknown)}; offline tasks are {', '.join(TASKS)}")
    harness = [t.strip() for t in lm_eval.split(",") if t.strip()]
    if harness:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:  # before hours of measuring, not after
            raise SlimlmError("--lm-eval needs lm-evaluation-harness: pip install 'lm-eval[hf]' (and a network "
                              "for the task data)")
    if not models:
        raise SlimlmError("give at least one model to evaluate")
    if window < 2 or (stride is not None and not 1 <= stride <= window):
        raise SlimlmError(f"--window must be >= 2 and --stride in [1, window] (got window {window}, stride {stride})")
    for name, value in (("--repeats", repeats), ("--new-tokens", new_tokens), ("--task-items", task_items)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SlimlmError(f"{name} must be a positive integer (got {value!r})")
    if out and Path(out).exists() and not force:
        raise SlimlmError(f"{out} already exists; pass --force to replace it or choose another --out")
    decision = precisions.resolve(precision, announce=log)
    results, data_info, tokenizer0 = {}, None, None
    for spec in models:
        model, tokenizer, model_dir = load_model(spec, trust_remote_code=trust_remote_code)
        if tokenizer0 is None:
            tokenizer0 = tokenizer
            splits = prepare_data(data, tokenizer, window)
            data_info = splits.info
            log(splits.summary())
        else:
            check_same_tokenizer(tokenizer0, tokenizer)
        if decision.bf16:
            model = model.to(torch.bfloat16)
        log(f"evaluating {spec}")
        results[str(spec)] = evaluate_model(model, tokenizer, splits.test, model_dir=model_dir,
                                            text_bytes=data_info["test"]["bytes"], window=window,
                                            stride=stride or window, new_tokens=new_tokens, repeats=repeats)
        if tasks:
            results[str(spec)].update(run_tasks(model, tokenizer, tasks, data=data, n=task_items))
        if harness:
            results[str(spec)]["lm_eval"] = lm_eval_tasks(model_dir, harness)
        del model
    table = format_table(results)
    report = {"data": data_info, "protocol": {"split": "test", "window": window, "stride": stride or window,
                                              "decode_new_tokens": new_tokens, "repeats": repeats,
                                              "dtype": "bfloat16" if decision.bf16 else "float32",
                                              "precision": decision.to_dict(), "cpu": precisions.cpu_kind(),
                                              "threads": torch.get_num_threads(), "tasks": tasks,
                                              "lm_eval": harness},
              "results": results, "table": table}
    print(table)
    for spec, result in results.items():  # lm-evaluation-harness metrics vary by task: one line per metric
        for metric, value in (result.get("lm_eval") or {}).items():
            if isinstance(value, (int, float)):
                print(f"lm-eval {spec}: {metric} = {value:.4f}")
    if out:
        write_json_atomic(Path(out), report, force=force)
        log(f"wrote {out}")
    return report
