"""The table `slimlm eval` (and prune/quantize's before/after) prints: models as columns, metrics as rows,
then one line stating the measurement protocol, since perplexity means nothing without it (metrics.py).
Under perplexity and accuracy, in domain and on general text, a row gives each model's ratio to the first
column (the teacher, in the usual order), the number a user compressing a model asks for first."""

from __future__ import annotations

_ROWS = [  # (label, key, format)
    ("parameters (M)", "parameters", lambda v: f"{v / 1e6:.2f}"),
    ("size on disk (MB)", "size_on_disk_mb", lambda v: f"{v:.1f}"),
    ("perplexity", "perplexity", lambda v: f"{v:.2f}" if v < 1e4 else f"{v:.3g}"),
    ("bits/byte", "bits_per_byte", lambda v: f"{v:.3f}"),
    ("next-token accuracy", "accuracy", lambda v: f"{v:.3f}"),
    ("decode tok/s", "decode_tokens_per_s", lambda v: f"{v:.1f}"),
    ("prefill tok/s", "prefill_tokens_per_s", lambda v: f"{v:.0f}"),
    ("memory MiB (weights + decode peak)", "inference_memory_mib", lambda v: f"{v:.0f}"),
    ("general perplexity", "general_perplexity", lambda v: f"{v:.2f}" if v < 1e4 else f"{v:.3g}"),
    ("general next-token accuracy", "general_accuracy", lambda v: f"{v:.3f}"),
    ("cloze exact match", "cloze_exact_match", lambda v: f"{v:.3f}"),
    ("ROUGE-1 / 2 / L", "rouge1", None),  # formatted in format_table
]
# downstream and general-text rows, shown only when measured (slimlm eval --tasks, --general-data)
_OPTIONAL = {"cloze_exact_match", "rouge1", "general_perplexity", "general_accuracy"}
# what each model kept of the first one (the teacher, in the usual order): a ratio row under these metrics
_RATIOS = {"perplexity", "accuracy", "general_perplexity", "general_accuracy"}


def _rouge(result: dict) -> str:
    if result.get("rouge1") is None:
        return "-"
    return f"{result['rouge1']:.3f} / {result['rouge2']:.3f} / {result['rougeL']:.3f}"


def format_table(results: dict[str, dict]) -> str:
    """Models as columns, metrics as rows, then one line stating the protocol (perplexity depends on it)."""
    names = list(results)
    cells = [["metric", *names]]
    for label, key, fmt in _ROWS:
        if key in _OPTIONAL and all(r.get(key) is None for r in results.values()):
            continue
        if key == "rouge1":  # one row for both ROUGE scores
            cells.append([label, *(_rouge(r) for r in results.values())])
            continue
        cells.append([label, *(fmt(r[key]) if r.get(key) is not None else "-" for r in results.values())])
        first = results[names[0]].get(key)
        if key in _RATIOS and len(names) > 1 and first:
            cells.append(
                [
                    f"  ÷ {names[0]}",
                    *(f"{r[key] / first:.2f}x" if r.get(key) is not None else "-" for r in results.values()),
                ]
            )
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    general = next((r["general_protocol"] for r in results.values() if r.get("general_protocol")), None)
    protocol = []
    for key, label in (
        ("window", "window"),
        ("stride", "stride"),
        ("tokens_scored", "tokens scored"),
        ("threads", "threads"),
    ):
        values = sorted({str(r.get(key, "-")) for r in results.values()})
        protocol.append(f"{label} {'/'.join(values)}")
    lines.append(
        "protocol: sliding-window perplexity, "
        + ", ".join(protocol)
        + "; speed: batch-1 greedy generate with KV cache, median of repeats after warm-up"
    )
    if general:
        lines.append(f"general text: {general}")
    noisy = [name for name, r in results.items() if r.get("decode_note")]
    if noisy:
        lines.append(
            f"decode tok/s of {', '.join(noisy)}: {results[noisy[0]]['decode_note']} (rerun on an idle machine)"
        )
    return "\n".join(lines)
