"""Stage `eval`: the same metrics for every model on the same test split, side by side."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from slimlm import precision as precisions
from slimlm.data.corpus import prepare_data
from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.eval import llama_cpp
from slimlm.eval.general import check_general, general_metrics, general_splits
from slimlm.eval.metrics import evaluate_model
from slimlm.eval.table import format_table
from slimlm.output import write_json_atomic
from slimlm.settings import EvalSettings, comma_list, general_off
from slimlm.sources import check_same_tokenizer, gguf_tokenizer, load_model


def evaluate(
    models: list[str], *, out: str | None = None, force: bool = False, bf16: bool | None = None, **settings
) -> dict:
    """Stage `eval`: the same metrics for every model on the same test split, side by side; with `tasks`,
    the offline downstream checks too (slimlm.eval.tasks), and with `lm_eval`, lm-evaluation-harness tasks.

    `settings` are EvalSettings' fields (slimlm.settings: data, general_data, general_tokens, window, stride,
    new_tokens, repeats, dtype, tasks, task_items, lm_eval), with their defaults there; general text
    (eval/general.py) is scored beside the in-domain split unless general_data is "none". `dtype` (the weights'
    dtype) defaults to fp32 here (EvalSettings says why); `bf16=True` is the old spelling of dtype="bf16"."""
    if "precision" in settings:
        raise SlimlmError(
            "evaluate casts the weights themselves: give dtype= (--dtype fp32|bf16|auto); precision is the "
            "training stages' autocast"
        )
    if bf16 is not None:
        settings["dtype"] = "bf16" if bf16 else "fp32"
    s = EvalSettings.from_dict({**settings, "models": models, "out": out, "force": force}).validate()
    from slimlm.eval.tasks import parse_tasks  # transformers: not at `import slimlm`

    tasks, harness = parse_tasks(s.tasks), comma_list(s.lm_eval)
    general = _scores_general_text(s)
    _check_before_measuring(s, harness, general)
    decision = precisions.resolve(s.dtype, announce=_announce_dtype)
    results, data_info = _measure_models(s, decision, tasks, harness, general)
    report = _report(s, decision, tasks, harness, results, data_info)
    _print_results(report)
    if s.out:
        write_json_atomic(Path(s.out), report, force=s.force)
        log(f"wrote {s.out}")
    return report


def _scores_general_text(s: EvalSettings) -> bool:
    """Whether general text is scored beside the in-domain split: asked for, under transformers, and not the
    in-domain corpus itself (each case said)."""
    general = not general_off(s.general_data) and s.runtime == "transformers"
    if not general_off(s.general_data) and not general:
        log("general text is scored under transformers only; the .gguf files get the in-domain split alone")
    if general and s.general_data.strip() == s.data.strip():
        log(f"--general-data is --data ({s.data}): its split is scored once; pass another corpus to compare domains")
        general = False
    return general


def _check_before_measuring(s: EvalSettings, harness: list[str], general: bool) -> None:
    """What would fail after hours of measuring, refused now: a missing lm-evaluation-harness or llama.cpp, an
    existing --out, an unusable general corpus."""
    if harness and importlib.util.find_spec("lm_eval") is None:
        raise SlimlmError(
            "--lm-eval needs lm-evaluation-harness: pip install 'lm-eval[hf]' (and a network for the task data)"
        )
    if s.runtime == "llama.cpp":
        llama_cpp.check_runtime([str(m) for m in s.models])
    if s.out and Path(s.out).exists() and not s.force:
        raise SlimlmError(f"{s.out} already exists; pass --force to replace it or choose another --out")
    if general:
        check_general(s.general_data)


def _measure_models(s: EvalSettings, decision, tasks, harness: list[str], general: bool) -> tuple[dict, dict | None]:
    """(each model's metrics by its name, the test split's record), every model on the first one's split."""
    results, first = {}, {}
    if s.generation and s.generation_scorer and s.runtime == "transformers":
        first["reference"] = _scorer(s, first, decision)  # loaded first: a bad name fails before hours of measuring
    for spec in s.models:
        if s.runtime == "llama.cpp":
            results[str(spec)] = _measure_gguf(s, spec, first)
        else:
            results[str(spec)] = _measure_transformers(s, spec, first, decision, tasks, harness, general)
    return results, first["splits"].info if first else None


def _test_split(s: EvalSettings, tokenizer, first: dict, spec):
    """The data split with the first model's tokenizer (kept in `first`); every later model must share it."""
    if "reference" in first and s.generation_scorer:
        _same_tokenizer(first["scorer_tokenizer"], tokenizer, f"--generation-scorer {s.generation_scorer}", spec)
    if "splits" not in first:
        first["tokenizer"], first["splits"] = tokenizer, prepare_data(s.data, tokenizer, s.window)
        log(first["splits"].summary())
    else:
        _same_tokenizer(first["tokenizer"], tokenizer, f"the first model {s.models[0]}", spec)
    return first["splits"]


def _same_tokenizer(reference, tokenizer, whose: str, spec) -> None:
    """Every model is scored on the same token ids, so all must share one tokenizer: said for eval."""
    try:
        check_same_tokenizer(reference, tokenizer)
    except SlimlmError:
        raise SlimlmError(
            f"{spec} uses another tokenizer than {whose}: eval scores every model on the same token ids; "
            "evaluate it in a separate `slimlm eval` run"
        ) from None


def _measure_gguf(s: EvalSettings, spec, first: dict) -> dict:
    """A .gguf file's metrics under llama.cpp."""
    splits = _test_split(s, gguf_tokenizer(spec), first, spec)
    log(f"evaluating {spec} under llama.cpp")
    return llama_cpp.measure_gguf(
        spec,
        splits.test,
        window=s.window,
        stride=s.stride or s.window,
        text_bytes=splits.info["test"]["bytes"],
        new_tokens=s.new_tokens,
        repeats=s.repeats,
    )


def _measure_transformers(s: EvalSettings, spec, first: dict, decision, tasks, harness, general: bool) -> dict:
    """A model's metrics under transformers, with general text, the offline tasks and lm-eval when asked."""
    from slimlm.eval.tasks import lm_eval_tasks, run_tasks  # transformers: not at `import slimlm`

    if s.generation_scorer == str(spec) and "reference" in first:  # the scorer is measured too: loaded once
        model, tokenizer, model_dir = first["reference"][1], first["scorer_tokenizer"], first["scorer_dir"]
    else:
        model, tokenizer, model_dir = load_model(spec, trust_remote_code=s.trust_remote_code)
    splits = _test_split(s, tokenizer, first, spec)
    if decision.bf16:
        model = model.to(torch.bfloat16)
    log(f"evaluating {spec}")
    result = evaluate_model(
        model,
        tokenizer,
        splits.test,
        model_dir=model_dir,
        text_bytes=splits.info["test"]["bytes"],
        window=s.window,
        stride=s.stride or s.window,
        new_tokens=s.new_tokens,
        repeats=s.repeats,
    )
    general_split = general_splits(s.general_data, tokenizer, s.window) if general else None  # tokenized once
    if general:
        log(f"scoring {spec} on general text ({s.general_data})")
        metrics = general_metrics(
            model, tokenizer, s.general_data, window=s.window, tokens=s.general_tokens, splits=general_split
        )
        result.update(metrics)
    if tasks:
        result.update(run_tasks(model, tokenizer, tasks, data=s.data, n=s.task_items))
    if s.generation:
        first.setdefault("reference", (spec, model))
        result["generation"] = _generation(s, model, first["reference"], splits.test, "test split")
        if general:
            where = f"{s.general_data} test split"
            result["general_generation"] = _generation(s, model, first["reference"], general_split.test, where)
    if harness:
        result["lm_eval"] = lm_eval_tasks(model_dir, harness)
    return result


PROMPT_TOKENS = 64


def generation_prompts(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """(n, PROMPT_TOKENS) prompts spread evenly over `tokens`: the ones --generation continues."""
    starts = torch.linspace(0, len(tokens) - PROMPT_TOKENS, n).long().tolist()
    return torch.stack([tokens[i : i + PROMPT_TOKENS] for i in starts])


def _scorer(s: EvalSettings, first: dict, decision) -> tuple:
    """(name, model) of --generation-scorer, in the measured models' dtype; its tokenizer kept in `first` so every
    measured model is checked against it before it is measured."""
    model, tokenizer, model_dir = load_model(s.generation_scorer, trust_remote_code=s.trust_remote_code)
    first["scorer_tokenizer"], first["scorer_dir"] = tokenizer, model_dir
    log(f"generation scored by {s.generation_scorer} (loaded for that; measured only if listed)")
    return s.generation_scorer, model.to(torch.bfloat16) if decision.bf16 else model


def _generation(s: EvalSettings, model, reference: tuple, test: torch.Tensor, where: str) -> dict:
    """What `model` writes after --generation prompts spread evenly over `test` (the in-domain test split, or the
    general text's), scored by --generation-scorer or else the first model (eval/generation.py); the reference
    scored against itself gives the floor of its NLL."""
    from slimlm.eval.generation import generation_metrics

    if len(test) < PROMPT_TOKENS * s.generation:
        raise SlimlmError(
            f"--generation {s.generation} needs {PROMPT_TOKENS * s.generation:,} tokens of prompts; the {where} "
            f"has {len(test):,}: ask for fewer prompts"
            + ("" if where == "test split" else " or pass --general-data none")
        )
    prompts = generation_prompts(test, s.generation)
    name, scorer = reference
    log(f"generation on the {where}: {s.generation} prompts, {s.generation_tokens} tokens each, scored by {name}")
    metrics = generation_metrics(model, scorer, prompts, new_tokens=s.generation_tokens)
    return {"scored_by": str(name), "prompts_from": where, **metrics}


def _report(s: EvalSettings, decision, tasks, harness: list[str], results: dict, data_info: dict | None) -> dict:
    """The eval report: the data, the measurement protocol, each model's results and the table of them."""
    stride = s.stride or s.window
    return {
        "data": data_info,
        "protocol": {
            "split": "test",
            "window": s.window,
            "stride": stride,
            "decode_new_tokens": s.new_tokens,
            "repeats": s.repeats,
            "runtime": s.runtime,
            "dtype": "GGUF types" if s.runtime == "llama.cpp" else "bfloat16" if decision.bf16 else "float32",
            "weights_dtype": decision.to_dict(),
            "cpu": precisions.cpu_kind(),
            "threads": torch.get_num_threads(),
            "tasks": tasks,
            "lm_eval": harness,
            "general": next((r["general_protocol"] for r in results.values() if "general_protocol" in r), None),
        },
        "results": results,
        "table": format_table(results),
    }


def _print_results(report: dict) -> None:
    """The table, then what each model wrote (with --generation) and lm-evaluation-harness metrics, one line each."""
    print(report["table"])
    for spec, result in report["results"].items():
        for key, label in (("generation", "generation"), ("general_generation", "generation, general text")):
            if written := result.get(key):
                print(
                    f"{label} {spec}: {written['scored_by']}'s NLL of its samples "
                    f"{written['teacher_nll_sampled']:.3f} (greedy {written['teacher_nll_greedy']:.3f}), distinct-2 "
                    f"{written['distinct_2']:.3f}, rep-4 {written['rep_4']:.3f}, ROUGE-L vs {written['scored_by']} "
                    f"{written['rougeL_vs_teacher']:.3f}"
                )
        for metric, value in (result.get("lm_eval") or {}).items():
            if isinstance(value, (int, float)):
                print(f"lm-eval {spec}: {metric} = {value:.4f}")


def _announce_dtype(message: str) -> None:
    log(f"weights cast for measuring: {message}")
