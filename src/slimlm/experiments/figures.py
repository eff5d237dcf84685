"""What every report figure is built from (plots.py, frontier_plot.py): a figure without pyplot's global state,
saving it, log axes only where values span a wide range, and reference models drawn as single points: the
teacher and other references as stars, the teacher's quantized baselines (baselines.py) as markers of their own.
"""

from __future__ import annotations

from pathlib import Path

from slimlm.experiments.columns import column

BASELINE_MARKERS = ("s", "D", "P", "X", "v")
BASELINE_COLORS = ("0.25", "0.5", "0.35", "0.6", "0.15")  # greys: apart from the arms' and stars' colours


def figure(panels: int, width=4.6, height=3.8):
    """(figure, one axis per panel side by side)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas on savefig

    fig = Figure(figsize=(width * panels, height), layout="constrained")
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def save(fig, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / name, dpi=110)
    return f"plots/{name}"


def log_if_wide(ax, xs, ys) -> None:
    """Log axes only where values span more than 20×, with plain numbers as tick labels."""
    from matplotlib.ticker import FuncFormatter

    for values, set_scale, axis in ((xs, ax.set_xscale, ax.xaxis), (ys, ax.set_yscale, ax.yaxis)):
        if values and min(values) > 0 and max(values) / min(values) > 20:
            set_scale("log")
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def perplexity_axis(ax, values, axis: str = "y") -> None:
    """Perplexity on a log axis, ticked at 1, 2 and 5 times powers of ten with plain numbers, where the values
    span more than 2× (a teacher and its students span orders of magnitude); a linear axis where they do not,
    which a log axis would leave without ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not values or min(values) <= 0 or max(values) / min(values) <= 2:
        return
    getattr(ax, f"set_{axis}scale")("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


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
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, -12), fontsize=8)
        drawn.append((x, y))
    return drawn


def _baseline_order(ref: dict) -> tuple:
    """References first (in their order), then the baselines from the most bits to the fewest."""
    baseline = ref.get("baseline") or {}
    return (bool(baseline), -(baseline.get("bits") or 0))
