"""The `slimlm` command: parse flags, call the stage functions (slimlm.stages), print. No logic of its own.

A `SlimlmError` is printed as one line and exits with status 2; pass --debug for a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from slimlm.errors import SlimlmError


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    return value  # the range is checked by the stage, with a one-line message


def _json_or_file(text):
    """--student-config: inline JSON or a path to a .json/.yaml file."""
    import yaml

    path = Path(text)
    try:
        raw = path.read_text(encoding="utf-8") if path.is_file() else text
        value = yaml.safe_load(raw)
    except Exception:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a readable file nor JSON") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a mapping such as '{{\"intermediate_size\": 768}}'")
    return value


def _add_precision(p, what="forward passes"):
    """--precision, on every command that trains or calibrates a model (precision.py decides what auto means)."""
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                   help=f"precision of the {what}: auto (the default) uses bf16 autocast only where the hardware "
                        "runs it natively (CUDA with bf16, a CPU with AVX-512 BF16/AMX), fp32 otherwise")


def _add_common(p, out_required=True):
    p.add_argument("--out", required=out_required, help="output directory (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")


def _add_training(p, learning_rate: str, max_tokens: str):
    """Flags shared by the training stages (distill, finetune); None means 'the recipe or the default'."""
    p.add_argument("--block-size", type=_positive_int, help="tokens per training block (default 256)")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--grad-accum", type=_positive_int)
    p.add_argument("--learning-rate", type=float, help=learning_rate)
    p.add_argument("--max-tokens", type=_positive_int, help=f"training budget in tokens ({max_tokens})")
    p.add_argument("--max-steps", type=_positive_int, help="optimizer steps (overrides --max-tokens)")
    p.add_argument("--chunk-size", type=_positive_int, help="tokens per loss chunk (default 1024)")
    p.add_argument("--seed", type=int)
    p.add_argument("--save-steps", type=_positive_int, help="checkpoint every N steps (default 50)")
    p.add_argument("--logging-steps", type=_positive_int, help="log losses every N steps (default 10)")
    _add_precision(p, what="training and teacher forward passes")
    p.add_argument("--no-bf16", dest="precision", action="store_const", const="fp32",
                   help="same as --precision fp32")
    p.add_argument("--max-time", metavar="DURATION",
                   help="training time budget, e.g. 15m or 1h: stops cleanly there (the schedule is shortened "
                        "to the steps that fit) and records the tokens actually trained")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--fsdp", nargs="?", const="full_shard auto_wrap", metavar="OPTIONS",
                   help="under torchrun/accelerate: shard with FSDP instead of DDP (default options "
                        "'full_shard auto_wrap'; docs/multi-gpu.md)")
    p.add_argument("--fsdp-config", metavar="JSON", help="transformers' fsdp_config file, with --fsdp")
    p.add_argument("--deepspeed", metavar="JSON", help="a DeepSpeed config; ZeRO-3 partitions the teacher "
                                                      "(docs/multi-gpu.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimlm", description="Compress a causal LM and measure what it bought.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download the built-in teacher and corpus into the cache")
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--data", default="sotu")

    p = sub.add_parser("student", help="build a student from the teacher's layers and write it")
    p.add_argument("--teacher", default="smollm2-135m", help="built-in name, local dir, .gguf file or hub id")
    p.add_argument("--data", default="sotu", help="built-in corpus, local .txt/.jsonl/.parquet file or folder, hub id")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--layers", type=_positive_int, help="keep N layers chosen by measured importance")
    group.add_argument("--keep-layers", help="keep exactly these teacher layers, e.g. 0-4,20-29")
    p.add_argument("--student-config", type=_json_or_file, help="narrower widths: JSON or a .json/.yaml file")
    p.add_argument("--block-size", type=_positive_int, default=256)
    p.add_argument("--calibration-blocks", type=_positive_int, default=8)
    p.add_argument("--seed", type=int, default=0)
    _add_precision(p, what="layer selection and measurement")
    _add_common(p)

    p = sub.add_parser("distill", help="distil a teacher into a student (paper section 2)")
    p.add_argument("--recipe", help="YAML file of settings; flags override it")
    p.add_argument("--teacher", help="built-in name, local dir, .gguf file or hub id (default smollm2-135m)")
    p.add_argument("--data", help="built-in corpus, local files or folder, hub dataset id (default sotu)")
    p.add_argument("--student", help="student model directory (else --layers or --keep-layers)")
    p.add_argument("--layers", type=_positive_int, help="build the student: keep N layers by measured importance")
    p.add_argument("--keep-layers", help="build the student: keep these teacher layers, e.g. 0-4,20-29")
    p.add_argument("--student-config", type=_json_or_file, help="narrower widths: JSON or a .json/.yaml file")
    p.add_argument("--temperature", type=float, help="tau of the KD term (default 2.0)")
    p.add_argument("--alpha", type=float, help="weight of hard-label CE; 1-alpha weighs KD (default 0.5)")
    p.add_argument("--kl", choices=["forward", "reverse", "jsd"], help="divergence of the KD term (default forward)")
    p.add_argument("--feature-layers", help="hidden-state map teacher:student, e.g. 6:3,12:6")
    p.add_argument("--feature-weight", type=float, help="beta of the feature loss")
    p.add_argument("--attention-layers", help="attention-map KD, decoder layers teacher:student, e.g. 20:10")
    p.add_argument("--attention-weight", type=float)
    _add_training(p, learning_rate="default 3e-4", max_tokens="default 300000")
    p.add_argument("--teacher-cache", action="store_true", default=None,
                   help="compute teacher top-k logits and hidden states once, reuse them in later runs")
    p.add_argument("--top-k", type=_positive_int)
    _add_common(p)

    p = sub.add_parser("finetune", help="LoRA or full fine-tuning, with the teacher in the loss if given")
    p.add_argument("model", help="model to fine-tune: model dir, built-in name, .gguf file or hub id")
    p.add_argument("--recipe", help="YAML file of settings; flags override it")
    p.add_argument("--method", choices=["lora", "full"], help="LoRA adapters (default) or every weight")
    p.add_argument("--data", help="plain text (as for distill) or instruction .jsonl: prompt/response or messages")
    p.add_argument("--teacher", help="with a teacher the loss is the distillation loss, else cross-entropy")
    p.add_argument("--alpha", type=float, help="with --teacher: weight of hard-label CE (default 0.5)")
    p.add_argument("--temperature", type=float, help="with --teacher: tau of the KD term (default 2.0)")
    p.add_argument("--kl", choices=["forward", "reverse", "jsd"], help="with --teacher: divergence (default forward)")
    p.add_argument("--rank", type=_positive_int, help="LoRA rank r (default 8)")
    p.add_argument("--lora-alpha", type=float, help="LoRA scaling numerator; update scaled by lora_alpha/r (default 16)")
    p.add_argument("--dropout", type=float, help="LoRA dropout (default 0.05)")
    p.add_argument("--target-modules", help="comma list of Linear names (default every attention and MLP projection)")
    _add_training(p, learning_rate="default 5e-4 for LoRA, 5e-5 for full", max_tokens="default 100000")
    _add_common(p)

    p = sub.add_parser("prune", help="prune weights, channels or key/value groups; before/after table")
    p.add_argument("model", help="model directory, built-in name, .gguf file or hub id")
    p.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "nm", "structured"])
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of weights (or MLP channels) removed")
    p.add_argument("--scope", default="layer", choices=["layer", "global"], help="magnitude/wanda: per layer or global")
    p.add_argument("--nm", default="2:4", help="N:M pattern for --method nm")
    p.add_argument("--kv-groups-removed", type=int, default=0, help="structured: key/value groups removed per layer")
    p.add_argument("--calibration", dest="data", default="sotu", help="calibration and evaluation text")
    p.add_argument("--calibration-blocks", type=_positive_int, default=16)
    p.add_argument("--recover-tokens", type=int, default=0,
                   help="structured: then distil the pruned model from the unpruned one for N tokens")
    p.add_argument("--eval-tokens", type=_positive_int, default=8192, help="test tokens for the before/after table")
    _add_precision(p, what="calibration passes and --recover-tokens training (the table is measured in fp32)")
    _add_common(p)

    p = sub.add_parser("quantize", help="min-max quantization with packed storage; before/after table")
    p.add_argument("model", help="model directory, built-in name, .gguf file or hub id")
    p.add_argument("--bits", type=int, default=8, help="2, 3, 4, 5, 6 or 8")
    p.add_argument("--granularity", default="channel", choices=["tensor", "channel", "group"])
    p.add_argument("--group-size", type=int, help="inputs per group with --granularity group, e.g. 32")
    p.add_argument("--symmetric", action="store_true", help="symmetric range (max|w|) instead of min-max")
    p.add_argument("--runtime", default="dequantized", choices=["dequantized", "int8-dynamic"],
                   help="how the result runs: fp32 weights, or torch's int8 kernels (faster, costs perplexity)")
    p.add_argument("--data", default="sotu", help="evaluation text for the before/after table")
    p.add_argument("--eval-tokens", type=_positive_int, default=8192)
    _add_common(p)

    p = sub.add_parser("export", help="write a GGUF file that llama.cpp and transformers load")
    p.add_argument("model", help="model directory, built-in name, .gguf file or hub id")
    p.add_argument("--format", default="gguf", choices=["gguf"])
    p.add_argument("--type", default="f16", choices=["f16", "q8_0", "q4_0"], help="GGUF tensor type")
    p.add_argument("--out", required=True, help="output .gguf file (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing output")

    p = sub.add_parser("eval", help="evaluate models side by side on the test split")
    p.add_argument("models", nargs="+", help="built-in names, model dirs, .gguf files or hub ids")
    p.add_argument("--data", default="sotu")
    p.add_argument("--window", type=_positive_int, default=256)
    p.add_argument("--stride", type=_positive_int)
    p.add_argument("--new-tokens", type=_positive_int, default=64, help="tokens decoded per speed run")
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="fp32 (default: the same protocol on every machine), bf16 (weights cast to bf16), or auto "
                        "(bf16 where the hardware runs it natively)")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="same as --precision bf16")
    p.add_argument("--tasks", default="", help="downstream checks, offline: cloze,summarization (docs/downstream.md)")
    p.add_argument("--task-items", type=_positive_int, help="items per downstream task (default: each task's own)")
    p.add_argument("--lm-eval", default="", metavar="TASKS",
                   help="also run lm-evaluation-harness tasks (needs `pip install lm-eval` and a network)")
    _add_common(p, out_required=False)
    _add_experiments(sub)
    return parser


def _add_experiments(sub) -> None:
    """`experiment KIND`, `pipeline RECIPE` and `report RUN_DIR` (paper section 3.2; docs/experiments.md)."""
    p = sub.add_parser("experiment", help="run one of the paper's studies over several seeds and write a report")
    kinds = p.add_subparsers(dest="kind", required=True)
    helps = {"temperature": ("KD temperature sweep (paper Table 1)", "--values", "temperatures (default 0.5,1,2,5,10)"),
             "feature-layer": ("which teacher layer to distil features from (paper Figure 2)", "--layers",
                               "teacher layers, 1..N (default: the paper's relative depths 1/12, 1/4, 1/2, 3/4, 1)"),
             "finetune": ("LoRA vs full fine-tuning of a distilled student (paper Figure 3)", "--methods",
                          "methods (default lora,full)")}
    for kind, (text, flag, values_help) in helps.items():
        k = kinds.add_parser(kind, help=text, description=text)
        k.add_argument(flag, dest="values", help=values_help)
        k.add_argument("--seeds", default="0,1,2", help="seeds per arm (default 0,1,2)")
        k.add_argument("--teacher", default="smollm2-135m")
        k.add_argument("--data", default="sotu")
        k.add_argument("--student", help="starting student directory (default: built from the teacher)")
        k.add_argument("--student-layers", type=_positive_int, default=14,
                       help="layers of the student built from the teacher (default 14)")
        if kind == "finetune":
            k.add_argument("--model", help="model both methods fine-tune (default: a student distilled once)")
            k.add_argument("--rank", type=_positive_int, default=8, help="LoRA rank (default 8)")
        k.add_argument("--max-tokens", type=_positive_int, default=20480, help="training tokens per arm (default 20480)")
        k.add_argument("--learning-rate", type=float,
                       help="default 6e-4 for distillation; fine-tuning: 5e-4 LoRA, 5e-5 full")
        k.add_argument("--batch-size", type=_positive_int, default=4)
        k.add_argument("--temperature", type=float, default=2.0, help="KD temperature of the arms that do not sweep it")
        k.add_argument("--alpha", type=float, default=0.5, help="weight of the hard-label CE in the KD loss")
        if kind == "feature-layer":
            k.add_argument("--feature-weight", type=float, default=1.0, help="beta, weight of the feature loss")
        k.add_argument("--top-k", type=_positive_int, default=128, help="teacher logits kept per token in the cache")
        k.add_argument("--recipe", help="YAML of extra training settings applied to every run (e.g. warmup_ratio)")
        _add_precision(k, what="training of every arm (measurement stays fp32)")
        _add_measurement(k)
        k.add_argument("--out", required=True, help="run folder; rerun the same command to finish missing arms")
        k.add_argument("--force", action="store_true", help="delete the run folder and start over")

    p = sub.add_parser("pipeline", help="distil -> fine-tune -> prune -> quantize from a recipe, every stage measured")
    p.add_argument("recipe", help="YAML recipe (examples in recipes/)")
    p.add_argument("--out", required=True, help="run folder; rerun the same command to finish missing stages")
    p.add_argument("--force", action="store_true", help="delete the run folder and start over")

    p = sub.add_parser("report", help="write report.md, report.html and plots for an experiment or pipeline folder")
    p.add_argument("run_dir")
    p.add_argument("--force", action="store_true", help="replace an existing report")


def _add_measurement(p) -> None:
    p.add_argument("--eval-tokens", type=_positive_int, help="test tokens scored, from the start of the split (default 8192)")
    p.add_argument("--repeats", type=_positive_int, default=3, help="decode-speed repeats (default 3)")
    p.add_argument("--tasks", default="cloze", help="downstream checks per model: cloze,summarization or none")
    p.add_argument("--task-items", type=_positive_int, help="items per downstream task (default: each task's own)")


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from slimlm.stages import distill, evaluate, export, fetch, finetune, prune, quantize, student

    if args.command == "fetch":
        fetch.fetch(args.teacher, args.data)
    elif args.command == "student":
        student.make_student(teacher=args.teacher, data=args.data, out=args.out, layers=args.layers,
                         keep_layers=args.keep_layers, student_config=args.student_config, block_size=args.block_size,
                         calibration_blocks=args.calibration_blocks, seed=args.seed, force=args.force,
                         precision=args.precision or "auto", trust_remote_code=args.trust_remote_code)
    elif args.command in ("distill", "finetune"):
        skip = {"command", "debug", "recipe", "out", "force", "resume"}
        overrides = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
        if not args.trust_remote_code:
            overrides.pop("trust_remote_code", None)
        stage = distill.distill if args.command == "distill" else finetune.finetune
        stage(out=args.out, force=args.force, resume=args.resume, recipe=args.recipe, **overrides)
    elif args.command == "prune":
        prune.prune(args.model, out=args.out, data=args.data, method=args.method, sparsity=args.sparsity,
                       scope=args.scope, nm=args.nm, kv_groups_removed=args.kv_groups_removed,
                       calibration_blocks=args.calibration_blocks, recover_tokens=args.recover_tokens,
                       eval_tokens=args.eval_tokens, precision=args.precision or "auto", force=args.force,
                       trust_remote_code=args.trust_remote_code)
    elif args.command == "quantize":
        quantize.quantize(args.model, out=args.out, data=args.data, bits=args.bits, granularity=args.granularity,
                          group_size=args.group_size, symmetric=args.symmetric, runtime=args.runtime,
                          eval_tokens=args.eval_tokens,
                          force=args.force, trust_remote_code=args.trust_remote_code)
    elif args.command == "export":
        export.export(args.model, out=args.out, type=args.type, force=args.force)
    elif args.command == "eval":
        evaluate.evaluate(args.models, data=args.data, out=args.out, force=args.force, window=args.window,
                     stride=args.stride, new_tokens=args.new_tokens, repeats=args.repeats, precision=args.precision,
                     tasks=args.tasks, task_items=args.task_items, lm_eval=args.lm_eval,
                     trust_remote_code=args.trust_remote_code)
    elif args.command == "experiment":
        from slimlm.settings import load_recipe
        from slimlm.experiments.sweeps import command_line, experiment

        extra = {k: getattr(args, k) for k in ("model", "rank", "feature_weight") if hasattr(args, k)}
        evaluation = {"tokens": args.eval_tokens, "repeats": args.repeats, "task_items": args.task_items,
                      "tasks": [] if args.tasks.strip().lower() == "none" else args.tasks}
        experiment(args.kind, out=args.out, values=args.values, seeds=args.seeds, teacher=args.teacher,
                   data=args.data, student=args.student, student_layers=args.student_layers,
                   max_tokens=args.max_tokens, learning_rate=args.learning_rate, batch_size=args.batch_size,
                   temperature=args.temperature, alpha=args.alpha, top_k=args.top_k, evaluation=evaluation,
                   settings=load_recipe(args.recipe) if args.recipe else None, precision=args.precision or "auto",
                   force=args.force, command=command_line(argv if argv is not None else sys.argv[1:]), **extra)
    elif args.command == "pipeline":
        from slimlm.experiments.pipeline import pipeline
        from slimlm.experiments.sweeps import command_line

        pipeline(args.recipe, out=args.out, force=args.force,
                 command=command_line(argv if argv is not None else sys.argv[1:]))
    elif args.command == "report":
        from slimlm.experiments.report import write_report

        write_report(args.run_dir, force=args.force)
        print(f"slimlm: wrote {Path(args.run_dir) / 'report.md'} and report.html", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        return run(argv)
    except SlimlmError as exc:
        if debug:
            raise
        print(f"slimlm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimlm: interrupted; rerun with --resume to continue a training run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
