"""The pipeline's report sentences: the paper gives no numbers for pruning, quantization or the combined pipeline,
so the report says what each stage bought against the teacher and which models are on the size/perplexity
frontier (no other model both smaller and lower in perplexity).
"""

from __future__ import annotations

from slimlm.experiments.columns import cell, display, said
from slimlm.experiments.stats import dominated


def pipeline_sentences(arms, references) -> list[str]:
    """No paper numbers exist: say what each stage bought against the teacher, and which stages are on the
    size/perplexity frontier."""
    measured = [a for a in arms if FRONTIER_KEYS <= a["metrics"].keys()]
    teacher = references.get("teacher", {}).get("metrics", {})
    out = [f"Stage {arm['label']}: {stage_numbers(arm, teacher)}." for arm in measured]
    return out + pipeline_frontier(measured, references)


FRONTIER_KEYS = {"size_on_disk_mb", "perplexity"}


def pipeline_frontier(measured, references) -> list[str]:
    """The stages and references that no other model beats on both size and perplexity."""
    points = {
        a["label"]: (a["metrics"]["size_on_disk_mb"]["mean"], a["metrics"]["perplexity"]["mean"]) for a in measured
    }
    points.update(
        {
            n: (r["metrics"]["size_on_disk_mb"], r["metrics"]["perplexity"])
            for n, r in references.items()
            if FRONTIER_KEYS <= r["metrics"].keys()
        }
    )
    if len(points) < 2:
        return []
    front = [n for n, p in points.items() if not dominated(p, [q for m, q in points.items() if m != n])]
    return [
        "On the size/perplexity frontier (no other model is both smaller and lower in perplexity): "
        + ", ".join(front)
        + "."
    ]


def stage_numbers(arm, teacher) -> str:
    """One stage's size, perplexity and speed, and what it bought against the teacher."""
    m = arm["metrics"]
    text = f"{said(m['size_on_disk_mb'], 'size_on_disk_mb')}, perplexity {cell(m['perplexity'], 'perplexity')}"
    if "decode_tokens_per_s" in m:
        text += f", {said(m['decode_tokens_per_s'], 'decode_tokens_per_s')}"
    if teacher.get("size_on_disk_mb") and teacher.get("perplexity"):
        smaller = teacher["size_on_disk_mb"] / m["size_on_disk_mb"]["mean"]
        text += (
            f"; against the teacher ({teacher['size_on_disk_mb']:.1f} MB, perplexity "
            f"{display(teacher['perplexity'], 'perplexity')}): {smaller:.2f}× "
            f"smaller, perplexity {m['perplexity']['mean'] / teacher['perplexity']:.2f}× the teacher's"
        )
        if teacher.get("decode_tokens_per_s") and "decode_tokens_per_s" in m:
            text += f", {m['decode_tokens_per_s']['mean'] / teacher['decode_tokens_per_s']:.2f}× its decode speed"
    return text
