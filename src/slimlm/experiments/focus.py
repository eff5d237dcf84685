"""A perplexity axis fitted to the models being compared, not to every model drawn: the students before
distillation sit 10-30 times higher than the distilled ones, and an axis reaching up to them squeezes
distilled arms a few points apart into one cluster of pixels. Such far points are drawn at the panel's edge
as arrowheads pointing the way they went, their values named in the legend.
"""

from __future__ import annotations

import math

LOG_ABOVE = 4.0  # a log axis where the fitted values span more than this factor; linear (finer ticks) below
MARGIN = (0.08, 0.22)  # room under and over the fitted values, as fractions of their span; the edge row above
EDGE = 0.9  # where an off-scale point is drawn, as a fraction of the way from the top value to the top edge


def fit(ax, values: list[float]) -> tuple[float, float]:
    """Fit ax's y axis to `values` (linear or log, see LOG_ABOVE); return the range beyond which a point is
    off scale, with room left at the top for off-scale markers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    lo, hi = min(values), max(values)
    log = lo > 0 and hi / lo > LOG_ABOVE
    to, back = (math.log10, lambda v: 10**v) if log else (float, float)
    span = (to(hi) - to(lo)) or abs(to(hi)) * 0.1 or 1.0
    bottom, top = back(to(lo) - MARGIN[0] * span), back(to(hi) + MARGIN[1] * span)
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(bottom, top)
    return lo, hi


def clamp(ax, y: float, fitted: tuple[float, float]) -> tuple[float, str]:
    """Where to draw `y` and with which marker: itself as a circle inside the fitted range, else an arrowhead
    near the top or bottom edge pointing the way it lies."""
    lo, hi = fitted
    bottom, top = ax.get_ylim()
    log = ax.get_yscale() == "log"
    to, back = (math.log10, lambda v: 10**v) if log else (float, float)
    if y > top:
        return back(to(hi) + EDGE * (to(top) - to(hi))), "^"
    if y < bottom:
        return back(to(lo) - EDGE * (to(lo) - to(bottom))), "v"
    return y, "o"
