"""The student-shape study's frontier figure (shapes.py; no paper counterpart, so slimlm's numbers only): test
perplexity against parameters, size on disk and decode speed, one point per arm with ±1 std and every seed as
a faint dot, an arrow from the starting student it was distilled from, and the teacher and its quantized
baselines as markers of their own (figures.draw_references). The perplexity axis is fitted to the distilled
students and the references (focus.py): the starting students lie far above, drawn at the panel's top edge.
"""

from __future__ import annotations

from pathlib import Path

from slimlm.experiments import focus, labels
from slimlm.experiments.columns import column
from slimlm.experiments.figures import draw_references, figure, log_if_wide, save, suptitle
from slimlm.experiments.frontier import starting_student
from slimlm.experiments.round_robin import with_round_robin_speeds

ARM_COLORS = ("C0", "C2", "C3", "C4", "C5", "C6")  # C1 is the teacher's star (figures.draw_references)
PANELS = (
    ("parameters", "parameters (M)", "parameters vs perplexity (lower-left is better)"),
    ("size_on_disk_mb", "size on disk (MB)", "size vs perplexity (lower-left is better)"),
    (
        "decode_tokens_per_s",
        "decode tok/s (batch 1, single pass per model)",
        "decode speed, single pass, vs perplexity (lower-right is better)",
    ),
)
Y = "perplexity"
STARTS = "starting students (before distillation)"


ROUND_ROBIN_PANEL = (
    "decode_tokens_per_s",
    "decode tok/s (batch 1, round-robin, median over rounds)",
    "decode speed, round-robin, vs perplexity (lower-right is better)",
)


def plot_student_shape(report: dict, spec: dict, folder: Path) -> list[str]:
    fig, axes = figure(len(PANELS), width=5.0, height=4.8)
    round_robin = bool(report.get("round_robin"))  # bench/decode_speed.py's speeds replace the single passes
    panels = PANELS[:-1] + (ROUND_ROBIN_PANEL,) if round_robin else PANELS
    for ax, (xkey, xlabel, title) in zip(axes, panels):
        _panel(ax, with_round_robin_speeds(report) if round_robin and xkey == panels[-1][0] else report, xkey)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(column(Y).label + (" (log scale)" if ax.get_yscale() == "log" else ""))
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    seen = {}  # one entry per label, from every panel (a model may lack one panel's metric), under the panels
    for ax in axes:
        handles, names = ax.get_legend_handles_labels()
        seen.update({name: h for name, h in zip(names, handles) if name not in seen})
    top = axes[0].get_ylim()[1]
    seen = {_starts_legend(report, top) if name == STARTS else name: h for name, h in seen.items()}
    fig.legend(seen.values(), seen.keys(), loc="outside lower center", ncols=min(4, len(seen)), fontsize=7)
    target = report.get("parameter", {}).get("target_params")
    at = f" at {target:g} of the teacher's parameters" if target else ""
    suptitle(
        fig,
        f"Student shape{at}: distilled students (filled, mean ± std over seeds), the students they started from, "
        "the teacher, its quantized baselines and GGUF exports under llama.cpp (slimlm only; no paper counterpart)",
        fontsize=9,
    )
    return [save(fig, folder, "student_shape_frontier.png")]


def _by_seed(summary: dict) -> dict:
    return dict(zip(summary["seeds"], summary["values"]))


def _starts(report: dict) -> list[float]:
    names = {starting_student(report["references"], arm.get("value"))[0] for arm in report["arms"]}
    return [report["references"][n]["metrics"][Y] for n in names if n and Y in report["references"][n]["metrics"]]


def _fitted(report: dict) -> list[float]:
    """The perplexities the axis is fitted to: each arm's seeds and mean ± std, and every reference but the
    starting students (focus.py)."""
    values = []
    for arm in report["arms"]:
        s = arm["metrics"].get(Y)
        if s:
            values += [*s["values"], s["mean"] - (s["std"] or 0), s["mean"] + (s["std"] or 0)]
    starts = {starting_student(report["references"], arm.get("value"))[0] for arm in report["arms"]}
    values += [r["metrics"][Y] for n, r in report["references"].items() if n not in starts and Y in r["metrics"]]
    return values or _starts(report) or [1.0]


def _starts_legend(report: dict, top: float) -> str:
    """The starting students' legend entry, naming the range of those drawn at the top edge (focus.clamp)."""
    far = [v for v in _starts(report) if v > top]
    return f"{STARTS}; ▲ off scale, perplexity {min(far):.0f}–{max(far):.0f}" if far else STARTS


def _panel(ax, report: dict, xkey: str) -> None:
    fitted = focus.fit(ax, _fitted(report))
    scale, references = column(xkey).scale, report["references"]
    xs, starts, colors = [], [], {}
    for i, arm in enumerate(report["arms"]):
        colors[arm["name"]] = color = ARM_COLORS[i % len(ARM_COLORS)]
        name, start = starting_student(references, arm.get("value"))
        begin = None
        if start and {xkey, Y} <= start["metrics"].keys():
            y, marker = focus.clamp(ax, start["metrics"][Y], fitted)
            begin = (start["metrics"][xkey] * scale, y)
            label = STARTS if not starts else None
            ax.scatter(*begin, s=60, marker=marker, facecolors="none", edgecolors=color, zorder=3, label=label)
            starts.append(name)
            xs.append(begin[0])
        end = _arm(ax, arm, xkey, color)
        if end is not None:
            if begin is not None:
                ax.annotate("", xy=end, xytext=begin, arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.5})
            xs.append(end[0])
    drawn = draw_references(ax, references, xkey, Y, skip=starts, colors=colors)
    log_if_wide(ax, xs + [x for x, _ in drawn], [])
    if ax.get_xscale() == "linear":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))


def _arm(ax, arm: dict, xkey: str, color: str):
    """One distilled arm: its mean with ±1 std both ways, each seed a faint dot, its name as a label."""
    m, scale = arm["metrics"], column(xkey).scale
    if not {xkey, Y} <= m.keys():
        return None
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
    labels.add(ax, arm["name"], end, color=color)
    return end
