"""The example command lines at the end of each command's --help: what a first run types, with the built-in
teacher (smollm2-135m, 30 layers) and corpora (sotu, wikipedia), the runs/ folders following one another.

Each is (why, command line); tests/test_cli_help.py parses every line with the real parser, so an example
cannot name a flag that does not exist.
"""

from __future__ import annotations

WORKFLOW = (
    ("the built-in teacher, corpus and general text, once", "slimlm fetch"),
    ("a student of 15 of the teacher's 30 layers", "slimlm student --layers 15 --out runs/s15"),
    ("distil it on sotu", "slimlm distill --student runs/s15 --out runs/d15"),
    ("measure teacher and students side by side", "slimlm eval smollm2-135m runs/s15 runs/d15"),
    (
        "4 bits in groups of 32",
        "slimlm quantize runs/d15 --bits 4 --granularity group --group-size 32 --out runs/d15-q4",
    ),
    ("one file for llama.cpp", "slimlm export runs/d15 --type q8_0 --out runs/d15-q8_0.gguf"),
)

EXAMPLES = {
    "fetch": (
        ("the teacher (smollm2-135m), the corpus (sotu) and the general text (wikipedia)", "slimlm fetch"),
        ("wikipedia as the training text, no general text", "slimlm fetch --data wikipedia --general-data none"),
    ),
    "student": (
        ("keep the 15 most important of the teacher's 30 layers", "slimlm student --layers 15 --out runs/s15"),
        ("keep exactly these layers", "slimlm student --keep-layers 0-4,20-29 --out runs/s-kept"),
        (
            "55% of the teacher's parameters, cut in depth or width",
            "slimlm student --target-params 0.55 --out runs/s55",
        ),
    ),
    "distill": (
        ("build a 15-layer student and distil it on sotu", "slimlm distill --layers 15 --out runs/d15"),
        (
            "a student from `slimlm student`, the teacher's outputs cached for later runs",
            "slimlm distill --student runs/s15 --teacher-cache --out runs/d15-cached",
        ),
        (
            "with a feature loss, in 15 minutes",
            "slimlm distill --student runs/s15 --feature-layers 15:8 --feature-weight 1 --max-time 15m --out runs/d15f",
        ),
        (
            "half the steps on text the student writes",
            "slimlm distill --student runs/s15 --on-policy 0.5 --out runs/d15-op",
        ),
    ),
    "finetune": (
        ("LoRA adapters, trained on sotu", "slimlm finetune runs/d15 --out runs/d15-lora"),
        (
            "every weight, with the teacher in the loss",
            "slimlm finetune runs/d15 --method full --teacher smollm2-135m --out runs/d15-full",
        ),
    ),
    "eval": (
        (
            "teacher and students on sotu's test split",
            "slimlm eval smollm2-135m runs/s15 runs/d15 --out runs/eval.json",
        ),
        ("with the downstream checks", "slimlm eval smollm2-135m runs/d15 --tasks cloze,summarization"),
    ),
    "prune": (
        (
            "half the weights, by Wanda score",
            "slimlm prune runs/d15 --method wanda --sparsity 0.5 --out runs/d15-wanda",
        ),
        (
            "a quarter of the MLP channels, then distil back from the unpruned model",
            "slimlm prune runs/d15 --method structured --sparsity 0.25 --recover-tokens 50000 --out runs/d15-s",
        ),
    ),
    "quantize": (
        ("8 bits, one scale per output channel", "slimlm quantize runs/d15 --out runs/d15-q8"),
        (
            "4 bits in groups of 32",
            "slimlm quantize runs/d15 --bits 4 --granularity group --group-size 32 --out runs/d15-q4",
        ),
    ),
    "export": (
        ("an f16 GGUF file", "slimlm export runs/d15 --out runs/d15.gguf"),
        ("the teacher at 8 bits, for llama.cpp", "slimlm export smollm2-135m --type q8_0 --out runs/teacher-q8_0.gguf"),
    ),
    "experiment": (
        ("the paper's Table 1", "slimlm experiment temperature --out runs/exp/temperature"),
        ("which layer to distil features from", "slimlm experiment feature-layer --out runs/exp/feature-layer"),
        ("students of 55% of the teacher's size", "slimlm experiment student-shape --out runs/exp/shape"),
    ),
    "experiment temperature": (
        ("five temperatures, three seeds", "slimlm experiment temperature --out runs/exp/temperature"),
        (
            "two temperatures, one seed, and an arm with the teacher online",
            "slimlm experiment temperature --values 1,5 --seeds 0 --online-control --out runs/exp/t-online",
        ),
    ),
    "experiment feature-layer": (
        ("the paper's relative depths", "slimlm experiment feature-layer --out runs/exp/feature-layer"),
        (
            "the feature weight picked first",
            "slimlm experiment feature-layer --weight-grid 0.1,1,10 --out runs/exp/fl-grid",
        ),
    ),
    "experiment finetune": (
        ("LoRA vs full on a distilled student", "slimlm experiment finetune --out runs/exp/finetune"),
        (
            "each method's learning rate picked first, the teacher in the loss",
            "slimlm experiment finetune --lr-grid 0.2,1,5 --with-teacher --out runs/exp/finetune-kd",
        ),
    ),
    "experiment student-shape": (
        ("depth, width and both at 55% of the teacher", "slimlm experiment student-shape --out runs/exp/shape"),
        (
            "two shapes at 40%",
            "slimlm experiment student-shape --target-params 0.4 --axes depth,width --out runs/exp/s40",
        ),
    ),
    "experiment data-mix": (
        ("sotu, wikipedia and the two mixed", "slimlm experiment data-mix --out runs/exp/data-mix"),
        (
            "two mixes of sotu and wikipedia",
            "slimlm experiment data-mix --corpora sotu:3+wikipedia:1,sotu+wikipedia --out runs/exp/mixes",
        ),
    ),
    "pipeline": (
        (
            "distil, fine-tune, prune and quantize as the recipe says",
            "slimlm pipeline recipes/pipeline.yaml --out runs/pipeline",
        ),
        (
            "without the quantized-teacher baselines",
            "slimlm pipeline recipes/pipeline.yaml --baselines none --out runs/pipe",
        ),
    ),
    "report": (
        ("report.md, report.html and plots of a run folder", "slimlm report runs/exp/temperature"),
        ("write them again", "slimlm report runs/pipeline --force"),
    ),
    "cache": (
        ("the teacher cache's entries and their size", "slimlm cache"),
        ("remove every entry", "slimlm cache remove --all"),
    ),
}


def epilog(examples, title: str = "examples") -> str:
    """The examples as the last section of a --help: each command line under a comment saying why."""
    lines = [f"{title}:"]
    for why, command in examples:
        lines += [f"  # {why}", f"  {command}"]
    return "\n".join(lines)
