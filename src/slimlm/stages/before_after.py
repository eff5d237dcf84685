"""The before/after table of `prune` and `quantize`: measured in the same run on the same test tokens, so
the comparison is fair, and published with the model in the usual slimlm format (output.py).
"""

from __future__ import annotations

from pathlib import Path

from slimlm.distributed import log
from slimlm.output import model_card, publish


def measure(model, tokenizer, splits, model_dir, eval_tokens, window, repeats):
    from slimlm.eval.metrics import evaluate_model

    test = splits.test[:eval_tokens]
    return evaluate_model(
        model,
        tokenizer,
        test,
        model_dir=model_dir,
        window=window,
        stride=window,
        new_tokens=32,
        repeats=repeats,
        progress=False,
    )


def publish_before_after(
    stage, out, model, tokenizer, kind, source, source_dir, splits, settings, detail, before, after, eval_tokens, window
):
    from slimlm.eval.table import format_table

    table = format_table({"before": before, "after": after})
    print(table)
    sparsity = detail.get("sparsity_by_kind")
    if sparsity:
        print("sparsity achieved: " + ", ".join(f"{k} {v:.3f}" for k, v in sparsity.items()))
    record = {
        "stage": kind,
        "source": str(source),
        "source_dir": str(source_dir),
        "settings": settings,
        "detail": detail,
        "data": splits.info,
        "protocol": {"split": "test", "tokens": eval_tokens, "window": window, "stride": window},
        "metrics": {"before": before, "after": after},
    }
    card = model_card(f"{source}, {kind}d", record, table)
    if kind == "quantize":
        card += (
            "\nThe weights are stored packed (`model.quantized.safetensors`); load with "
            "`slimlm.methods.quantization.load_quantized(PATH)` or any `slimlm` command.\n"
        )
    publish(stage, Path(out), model, tokenizer, record, card)
    log(f"wrote {out}")
    return Path(out)
