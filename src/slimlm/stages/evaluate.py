"""Stage `eval`: the same metrics for every model on the same test split, side by side."""

from __future__ import annotations

from pathlib import Path

import torch

from slimlm import precision as precisions
from slimlm.data.corpus import prepare_data
from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.output import write_json_atomic
from slimlm.settings import EvalSettings, comma_list, general_off
from slimlm.sources import check_same_tokenizer, gguf_tokenizer, load_model


def evaluate(
    models: list[str], *, out: str | None = None, force: bool = False, bf16: bool | None = None, **settings
) -> dict:
    """Stage `eval`: the same metrics for every model on the same test split, side by side; with `tasks`,
    the offline downstream checks too (slimlm.eval.tasks), and with `lm_eval`, lm-evaluation-harness tasks.

    `settings` are EvalSettings' fields (slimlm.settings: data, general_data, general_tokens, window, stride,
    new_tokens, repeats, precision, tasks, task_items, lm_eval), with their defaults there; general text
    (eval/general.py) is scored beside the in-domain split unless general_data is "none". `precision`
    defaults to fp32 here (EvalSettings says why); `bf16=True` is the old spelling of precision="bf16"."""
    if bf16 is not None:
        settings["precision"] = "bf16" if bf16 else "fp32"
    s = EvalSettings.from_dict({**settings, "models": models, "out": out, "force": force}).validate()
    from slimlm.eval.general import check_general, general_metrics
    from slimlm.eval.metrics import evaluate_model
    from slimlm.eval.table import format_table
    from slimlm.eval.tasks import lm_eval_tasks, parse_tasks, run_tasks

    tasks, harness = parse_tasks(s.tasks), comma_list(s.lm_eval)
    general = not general_off(s.general_data) and s.runtime == "transformers"
    if not general_off(s.general_data) and not general:
        log("general text is scored under transformers only; the .gguf files get the in-domain split alone")
    if general and s.general_data.strip() == s.data.strip():
        log(f"--general-data is --data ({s.data}): its split is scored once; pass another corpus to compare domains")
        general = False
    if harness:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:  # before hours of measuring, not after
            raise SlimlmError(
                "--lm-eval needs lm-evaluation-harness: pip install 'lm-eval[hf]' (and a network for the task data)"
            )
    if s.runtime == "llama.cpp":
        from slimlm.eval import llama_cpp

        llama_cpp.check_runtime([str(m) for m in s.models])
    if s.out and Path(s.out).exists() and not s.force:
        raise SlimlmError(f"{s.out} already exists; pass --force to replace it or choose another --out")
    if general:
        check_general(s.general_data)
    data, window, stride, new_tokens, repeats = s.data, s.window, s.stride, s.new_tokens, s.repeats
    decision = precisions.resolve(s.precision, announce=log)
    results, data_info, tokenizer0, splits = {}, None, None, None
    for spec in s.models:
        if s.runtime == "llama.cpp":
            tokenizer = gguf_tokenizer(spec)
            if tokenizer0 is None:
                tokenizer0, splits = tokenizer, prepare_data(data, tokenizer, window)
                data_info = splits.info
                log(splits.summary())
            else:
                check_same_tokenizer(tokenizer0, tokenizer)
            log(f"evaluating {spec} under llama.cpp")
            results[str(spec)] = llama_cpp.measure_gguf(
                spec,
                splits.test,
                window=window,
                stride=stride or window,
                text_bytes=data_info["test"]["bytes"],
                new_tokens=new_tokens,
                repeats=repeats,
            )
            continue
        model, tokenizer, model_dir = load_model(spec, trust_remote_code=s.trust_remote_code)
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
        results[str(spec)] = evaluate_model(
            model,
            tokenizer,
            splits.test,
            model_dir=model_dir,
            text_bytes=data_info["test"]["bytes"],
            window=window,
            stride=stride or window,
            new_tokens=new_tokens,
            repeats=repeats,
        )
        if general:
            log(f"scoring {spec} on general text ({s.general_data})")
            results[str(spec)].update(
                general_metrics(model, tokenizer, s.general_data, window=window, tokens=s.general_tokens)
            )
        if tasks:
            results[str(spec)].update(run_tasks(model, tokenizer, tasks, data=data, n=s.task_items))
        if harness:
            results[str(spec)]["lm_eval"] = lm_eval_tasks(model_dir, harness)
        del model
    table = format_table(results)
    report = {
        "data": data_info,
        "protocol": {
            "split": "test",
            "window": window,
            "stride": stride or window,
            "decode_new_tokens": new_tokens,
            "repeats": repeats,
            "runtime": s.runtime,
            "dtype": "GGUF types" if s.runtime == "llama.cpp" else "bfloat16" if decision.bf16 else "float32",
            "precision": decision.to_dict(),
            "cpu": precisions.cpu_kind(),
            "threads": torch.get_num_threads(),
            "tasks": tasks,
            "lm_eval": harness,
            "general": next((r["general_protocol"] for r in results.values() if "general_protocol" in r), None),
        },
        "results": results,
        "table": table,
    }
    print(table)
    for spec, result in results.items():  # lm-evaluation-harness metrics vary by task: one line per metric
        for metric, value in (result.get("lm_eval") or {}).items():
            if isinstance(value, (int, float)):
                print(f"lm-eval {spec}: {metric} = {value:.4f}")
    if s.out:
        write_json_atomic(Path(s.out), report, force=s.force)
        log(f"wrote {s.out}")
    return report
