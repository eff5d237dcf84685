"""The student-shape study's frontier figure (shapes.py; no paper counterpart, so slimlm's numbers only): test
perplexity (log scale) against parameters, size on disk and decode speed, one point per arm with ±1 std and
every seed as a faint dot, an arrow from the starting student it was distilled from, and the teacher and its
quantized baselines as markers of their own (figures.draw_references).
"""

from __future__ import annotations

from pathlib import Path

from slimlm.experiments.columns import column
from slimlm.experiments.figures import draw_references, figure, log_if_wide, perplexity_axis, save
from slimlm.experiments.frontier import starting_student

ARM_COLORS = ("C0", "C2", "C3", "C4", "C5", "C6")  # C1 is the teacher's star (figures.draw_references)
PANELS = (
    ("parameters", "parameters (M)", "parameters vs perplexity (lower-left is better)"),
    ("size_on_disk_mb", "size on disk (MB)", "size vs perplexity (lower-left is better)"),
    ("decode_tokens_per_s", "decode tok/s (batch 1)", "decode speed vs perplexity (lower-right is better)"),
)
Y = "perplexity"


def plot_student_shape(report: dict, spec: dict, folder: Path) -> list[str]:
    fig, axes = figure(len(PANELS), width=5.0, height=4.8)
    for ax, (xkey, xlabel, title) in zip(axes, PANELS):
        _panel(ax, report, xkey)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(column(Y).label + (" (log scale)" if ax.get_yscale() == "log" else ""))
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    seen = {}  # one entry per label, from every panel (a model may lack one panel's metric), under the panels
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        seen.update({label: h for label, h in zip(labels, handles) if label not in seen})
    fig.legend(seen.values(), seen.keys(), loc="outside lower center", ncols=min(4, len(seen)), fontsize=7)
    target = report.get("parameter", {}).get("target_params")
    at = f" at {target:g} of the teacher's parameters" if target else ""
    fig.suptitle(
        f"Student shape{at}: distilled students (filled, mean ± std over seeds), the students they started from "
        "(hollow), the teacher, its quantized baselines and GGUF exports under llama.cpp (slimlm only; the paper "
        "has no such study)",
        fontsize=9,
    )
    return [save(fig, folder, "student_shape_frontier.png")]


def _by_seed(summary: dict) -> dict:
    return dict(zip(summary["seeds"], summary["values"]))


def _panel(ax, report: dict, xkey: str) -> None:
    scale, references = column(xkey).scale, report["references"]
    xs, ys, starts = [], [], []
    for i, arm in enumerate(report["arms"]):
        color = ARM_COLORS[i % len(ARM_COLORS)]
        name, start = starting_student(references, arm.get("value"))
        begin = None
        if start and {xkey, Y} <= start["metrics"].keys():
            starts.append(name)
            begin = (start["metrics"][xkey] * scale, start["metrics"][Y])
            ax.scatter(
                *begin,
                s=60,
                facecolors="none",
                edgecolors=color,
                zorder=3,
                label="starting students (before distillation)" if len(starts) == 1 else None,
            )
            xs.append(begin[0])
            ys.append(begin[1])
        m = arm["metrics"]
        if not {xkey, Y} <= m.keys():
            continue
        end = (m[xkey]["mean"] * scale, m[Y]["mean"])
        ax.errorbar(
            *end,
            xerr=(m[xkey]["std"] or 0) * scale,
            yerr=m[Y]["std"] or 0,
            fmt="o",
            ms=7,
            color=color,
            capsize=3,
            zorder=4,
            label=f"{arm['name']} (distilled)",
        )
        x_seed, y_seed = _by_seed(m[xkey]), _by_seed(m[Y])
        seeds = [s for s in x_seed if s in y_seed]
        ax.scatter([x_seed[s] * scale for s in seeds], [y_seed[s] for s in seeds], color=color, alpha=0.25, s=12)
        ax.annotate(arm["name"], end, textcoords="offset points", xytext=(6, 4), fontsize=8, color=color)
        if begin is not None:
            ax.annotate("", xy=end, xytext=begin, arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.5})
        xs.append(end[0])
        ys.append(end[1])
    colors = {arm["name"]: ARM_COLORS[i % len(ARM_COLORS)] for i, arm in enumerate(report["arms"])}
    drawn = draw_references(ax, references, xkey, Y, skip=starts, colors=colors)
    xs += [x for x, _ in drawn]
    ys += [y for _, y in drawn]
    perplexity_axis(ax, ys)
    log_if_wide(ax, xs, [])
    if ax.get_xscale() == "linear":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
