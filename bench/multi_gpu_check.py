"""GPU check of `slimlm distill` under torchrun/accelerate: DDP, FSDP (+ resume), DeepSpeed ZeRO-3.

The CPU tests (tests/test_distributed.py) cover DDP on gloo and FSDP2's math; accelerate runs FSDP and
DeepSpeed only on accelerators, so this script runs the whole stage there and prints one table:

    bench/multi_gpu_check.sh            # all visible GPUs; use 2 or more

With one GPU every launcher starts one process (WORLD_SIZE=1): slimlm's coordination helpers are no-ops,
FSDP and ZeRO shard over a single rank and nothing crosses ranks, so only the single-process CUDA paths of
torchrun, accelerate and --fsdp (with its resume) are exercised, not multi-rank agreement.

Each arm distils the same random Llama teacher (8 layers, hidden 256, built here; no download) into its
layers 0,3,4,7 on the same synthetic text, with the same global batch and seed, in fp32 (no bf16), and is
compared with the single-process run: the largest weight difference and the validation perplexity.
Expected: DDP and FSDP within ~1e-4 of the single process (rounding of the sums), FSDP-resumed equal to
FSDP, DeepSpeed (teacher ZeRO-3, student ZeRO-2) within ~1e-3 (its own gradient buckets).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(os.environ.get("CHECK_DIR", "runs/multi_gpu_check")).resolve()
NGPU = int(os.environ.get("NGPU", torch.cuda.device_count() or 1))
GLOBAL_BATCH = 8


def setup() -> tuple[Path, Path]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = ROOT / "text"
    text.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))) for _ in range(400)]
    docs = [" ".join(rng.choice(words) for _ in range(3000)) for _ in range(12)]
    for i, doc in enumerate(docs):
        (text / f"doc-{i:02d}.txt").write_text(doc)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        docs,
        trainers.BpeTrainer(
            vocab_size=512, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=0,
    )
    teacher = ROOT / "teacher"
    LlamaForCausalLM(config).save_pretrained(teacher, safe_serialization=True)
    tokenizer.save_pretrained(teacher)
    (ROOT / "recipe.yaml").write_text("eval_window: 64\neval_tokens: 2048\ncalibration_blocks: 4\n")
    (ROOT / "zero3.json").write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "zero_optimization": {"stage": 3, "overlap_comm": True},
            }
        )
    )
    return teacher, text


def distill_args(teacher, text, out, per_device):
    return [
        "distill",
        "--recipe",
        ROOT / "recipe.yaml",
        "--teacher",
        teacher,
        "--data",
        text,
        "--keep-layers",
        "0,3,4,7",
        "--block-size",
        64,
        "--batch-size",
        per_device,
        "--learning-rate",
        1e-3,
        "--no-bf16",
        "--max-steps",
        8,
        "--save-steps",
        4,
        "--logging-steps",
        1,
        "--seed",
        1,
        "--out",
        out,
    ]


def run(name, launcher, argv) -> dict:
    out = ROOT / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(name + ".partial"), ignore_errors=True)
    start = time.time()
    done = subprocess.run([*launcher, *map(str, argv)], capture_output=True, text=True)
    (ROOT / f"{name}.log").write_text(done.stdout + done.stderr)
    return {
        "name": name,
        "code": done.returncode,
        "seconds": time.time() - start,
        "out": out,
        "error": next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")[:120],
    }


RESUME_SCRIPT = """
import sys, slimlm
args = dict(teacher=sys.argv[1], data=sys.argv[2], keep_layers="0,3,4,7", block_size=64, batch_size=int(sys.argv[4]),
            learning_rate=1e-3, bf16=False, max_steps=8, save_steps=4, logging_steps=1, seed=1,
            fsdp="full_shard auto_wrap",
            eval_window=64, eval_tokens=2048, calibration_blocks=4)
slimlm.distill(out=sys.argv[3], stop_after=4, **args)
slimlm.distill(out=sys.argv[3], resume=True, **args)
"""


def main() -> None:
    from safetensors.torch import load_file

    teacher, text = setup()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(NGPU)]
    per = GLOBAL_BATCH // NGPU
    (ROOT / "resume.py").write_text(RESUME_SCRIPT)
    arms = [
        run("single", [sys.executable, "-m", "slimlm"], distill_args(teacher, text, ROOT / "single", GLOBAL_BATCH)),
        run("ddp-torchrun", [*torchrun, "-m", "slimlm"], distill_args(teacher, text, ROOT / "ddp-torchrun", per)),
        run(
            "ddp-accelerate",
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--num_processes",
                str(NGPU),
                *(["--multi_gpu"] if NGPU > 1 else []),
                "-m",
                "slimlm",
            ],
            distill_args(teacher, text, ROOT / "ddp-accelerate", per),
        ),
        run("fsdp", [*torchrun, "-m", "slimlm"], [*distill_args(teacher, text, ROOT / "fsdp", per), "--fsdp"]),
        run("fsdp-resumed", torchrun, [ROOT / "resume.py", teacher, text, ROOT / "fsdp-resumed", per]),
    ]
    try:
        import deepspeed  # noqa: F401

        arms.append(
            run(
                "deepspeed-zero3",
                [*torchrun, "-m", "slimlm"],
                [*distill_args(teacher, text, ROOT / "deepspeed-zero3", per), "--deepspeed", ROOT / "zero3.json"],
            )
        )
    except ImportError:
        arms.append(
            {
                "name": "deepspeed-zero3",
                "code": None,
                "seconds": 0,
                "out": None,
                "error": "skipped: deepspeed is not installed",
            }
        )
    ref = load_file(str(ROOT / "single" / "model.safetensors")) if arms[0]["code"] == 0 else None
    fsdp = load_file(str(ROOT / "fsdp" / "model.safetensors")) if arms[3]["code"] == 0 else None
    print(
        f"\n{NGPU} GPU(s): {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; "
        f"torch {torch.__version__}; global batch {GLOBAL_BATCH} x 64 tokens, 8 steps, fp32\n"
    )
    print("| arm | exit | s | max abs weight diff vs single | vs fsdp | val ppl after | processes | note |")
    print("|---|---|---|---|---|---|---|---|")
    for arm in arms:
        diff = diff_fsdp = ppl = procs = "-"
        model = arm["out"] / "model.safetensors" if arm["out"] else None
        if arm["code"] == 0 and model and model.exists():
            w = load_file(str(model))
            if ref is not None:
                diff = f"{max((w[k] - ref[k]).abs().max().item() for k in ref):.2e}"
            if fsdp is not None:
                diff_fsdp = f"{max((w[k] - fsdp[k]).abs().max().item() for k in fsdp):.2e}"
            record = json.loads((arm["out"] / "slimlm.json").read_text())
            ppl = f"{record['metrics']['validation_after']['perplexity']:.3f}"
            procs = record["training"].get("processes", "-")
        note = "" if arm["code"] == 0 else arm["error"].replace("|", "/")
        print(
            f"| {arm['name']} | {arm['code']} | {arm['seconds']:.0f} | {diff} | {diff_fsdp} | {ppl} "
            f"| {procs} | {note} |"
        )
    print(f"\nlogs: {ROOT}/*.log")


if __name__ == "__main__":
    main()
