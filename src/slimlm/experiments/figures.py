"""What every report figure is built from (plots.py, frontier_plot.py): a figure without pyplot's global state,
a title that fits it, saving it with its point labels placed apart (labels.py), log axes only where values
span a wide range, and reference models drawn as single points: the teacher and other references as stars,
the teacher's quantized baselines (baselines.py) as markers of their own.
"""

from __future__ import annotations

from pathlib import Path

from slimlm.experiments import labels
from slimlm.experiments.columns import column

BASELINE_MARKERS = ("s", "D", "P", "X", "v")
BASELINE_COLORS = ("0.25", "0.5", "0.35", "0.6", "0.15")  # greys: apart from the arms' and stars' colours


DPI = 110


def figure(panels: int, width=4.6, height=3.8, columns=3):
    """(figure, one axis per panel), at most `columns` panels a row so a six-panel sweep stays readable on a
    page, on an Agg canvas so `save` can measure its texts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state

    cols = min(panels, columns)
    rows = -(-panels // cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]


def suptitle(fig, text: str, fontsize=10) -> None:
    """The figure's title, wrapped to the figure's width: matplotlib neither wraps nor shrinks a long one, so
    its ends would fall off the canvas."""
    import textwrap

    chars = int(fig.get_figwidth() * 72 / (fontsize * 0.6))  # 0.6 em: a generous mean character width
    fig.suptitle(textwrap.fill(text, chars), fontsize=fontsize)


def save(fig, folder: Path, name: str) -> str:
    """Settle the layout at the saving resolution, place the point labels (labels.py), freeze the layout so
    the file shows exactly what was measured, and write the PNG."""
    fig.canvas.draw()
    fig.canvas.draw()  # again: the first layout can change the ticks, and so the room their labels need
    labels.place(fig)
    fig.set_layout_engine("none")
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / name, dpi=DPI)
    return f"plots/{name}"


def log_if_wide(ax, xs, ys) -> None:
    """Log axes only where values span more than 20×, ticked at 1, 2 and 5 times powers of ten with plain
    numbers (a log axis ticked at powers of ten alone may show one tick or none)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for values, set_scale, axis in ((xs, ax.set_xscale, ax.xaxis), (ys, ax.set_yscale, ax.yaxis)):
        if values and min(values) > 0 and max(values) / min(values) > 20:
            set_scale("log")
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())


def draw_references(ax, references: dict, xkey: str, ykey: str, skip=(), colors=None) -> list[tuple[float, float]]:
    """Each reference that has both metrics as one labelled point (those named in `skip` left to the caller):
    annotated stars for the teacher and other references; for each baseline of the teacher a grey marker of
    its own, named in the legend; a plus (8-bit) or cross (4-bit) in its arm's colour (`colors`: arm name ->
    colour) for a distilled student exported to GGUF, the legend naming the kind once. Returns the points
    drawn, in display units, for the caller's axis scaling."""
    xs, ys = column(xkey).scale, column(ykey).scale
    drawn, stars, baselines, kinds = [], 0, 0, set()
    for name, ref in sorted(references.items(), key=lambda item: _baseline_order(item[1])):
        if name in skip or not {xkey, ykey} <= ref["metrics"].keys():
            continue
        x, y = ref["metrics"][xkey] * xs, ref["metrics"][ykey] * ys
        baseline = ref.get("baseline") or {}
        if baseline.get("of", "teacher") != "teacher":  # a distilled student exported to GGUF
            kind = f"distilled, GGUF {baseline.get('type', '')} (arm's colour)"
            color = (colors or {}).get(baseline.get("arm"), "0.45")
            marker = "P" if baseline.get("bits", 8) >= 8 else "X"
            label = None if kind in kinds else kind
            ax.scatter(x, y, marker=marker, s=60, color=color, edgecolors="k", zorder=4, label=label)
            kinds.add(kind)
        elif baseline:  # its own marker and colour, named in the legend (four of them at one x would overlap)
            marker, color = BASELINE_MARKERS[baselines % 5], BASELINE_COLORS[baselines % 5]
            label, baselines = f"baseline: {name}", baselines + 1
            ax.scatter(x, y, marker=marker, s=70, color=color, edgecolors="k", zorder=4, label=label)
        else:
            stars += 1
            ax.scatter(x, y, marker="*", s=150, color=f"C{stars}", zorder=4, label=f"reference: {name}")
            labels.add(ax, name, (x, y))
        drawn.append((x, y))
    return drawn


def _baseline_order(ref: dict) -> tuple:
    """References first (in their order), then the baselines from the most bits to the fewest."""
    baseline = ref.get("baseline") or {}
    return (bool(baseline), -(baseline.get("bits") or 0))
