"""How a number is shown, in one place, because the report's tables, its sentences and its plots must all
show a metric the same way: its column label, display scale and format, 'mean ± std' cells and units.

Raw units stay in report.json; only what is displayed is scaled.
"""

from __future__ import annotations

from collections import namedtuple

# key, label, scale applied for display, format spec.
Column = namedtuple("Column", "key label scale spec")
RESULT_COLUMNS = [
    Column("accuracy", "next-token acc. (%)", 100, ".2f"),
    Column("perplexity", "perplexity", 1, ".2f"),
    Column("bits_per_byte", "bits/byte", 1, ".3f"),
    Column("general_perplexity", "general ppl", 1, ".2f"),
    Column("general_accuracy", "general acc. (%)", 100, ".2f"),
    Column("decode_tokens_per_s", "decode tok/s", 1, ".1f"),
    Column("size_on_disk_mb", "size (MB)", 1, ".1f"),
    Column("parameters", "params (M)", 1e-6, ".2f"),
    Column("inference_memory_mib", "inference memory (MiB)", 1, ".0f"),
    Column("cloze_exact_match", "cloze exact match", 1, ".3f"),
    Column("rouge1", "ROUGE-1", 1, ".3f"),
    Column("rouge2", "ROUGE-2", 1, ".3f"),
    Column("rougeL", "ROUGE-L", 1, ".3f"),
]
TRAINING_COLUMNS = [
    Column("tokens", "train tokens", 1, ".0f"),
    Column("train_tokens_per_s", "train tok/s", 1, ".1f"),
    Column("peak_memory_mib", "peak train memory (MiB)", 1, ".0f"),
    Column("trainable_parameters", "trainable params (M)", 1e-6, ".3f"),
    Column("optimizer_state_bytes", "optimizer state (MB)", 1e-6, ".1f"),
    Column("train_runtime_s", "train runtime (s)", 1, ".0f"),
    Column("wall_time_s", "train time (s)", 1, ".0f"),
]
# shown only where a table asks for them (the frontier table, frontier.py), not in every results table
EXTRA_COLUMNS = [Column("prefill_tokens_per_s", "prefill tok/s", 1, ".0f")]
COLUMNS = {c.key: c for c in RESULT_COLUMNS + TRAINING_COLUMNS + EXTRA_COLUMNS}
UNITS = {
    "accuracy": "%",
    "general_accuracy": "%",
    "decode_tokens_per_s": " tok/s",
    "prefill_tokens_per_s": " tok/s",
    "size_on_disk_mb": " MB",
    "inference_memory_mib": " MiB",
    "parameters": "M parameters",
}


def column(key: str) -> Column:
    """A metric's column; unknown metrics are shown under their own name, unscaled."""
    return COLUMNS.get(key, Column(key, key, 1, ".4g"))


def display(value, key: str) -> str:
    """One raw value in its column's display units."""
    col = column(key)
    v = value * col.scale
    return f"{v:.3g}" if key.endswith("perplexity") and v >= 1e4 else format(v, col.spec)


def cell(summary: dict | None, key: str) -> str:
    """'mean ± std' in the column's display units; the mean alone for one seed; '–' when absent."""
    if not summary:
        return "–"
    if summary["std"] is None:
        return display(summary["mean"], key)
    return f"{display(summary['mean'], key)} ± {display(summary['std'], key)}"


def said(summary: dict | None, key: str) -> str:
    """A cell with its unit, for sentences."""
    return cell(summary, key) + UNITS.get(key, "")


def paper_value(value, key: str = "") -> str:
    """The paper's numbers as printed; accuracy gets its % sign in sentences."""
    return "–" if value is None else f"{value:g}%" if key == "accuracy_pct" else f"{value:g}"


def ratio(a: float, b: float, spec: str = ".2f") -> str:
    """a/b as "1.23×", or "n/a" when b is zero (a metric such as exact match can be 0 on a weak model)."""
    return f"{a / b:{spec}}×" if b else "n/a (divisor is 0)"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, a `|` inside a cell escaped; a blank line after it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows] + [""]
