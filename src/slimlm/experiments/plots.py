"""The report's PNG plots: ours as mean ± 1 std with every seed as a faint dot, the paper's numbers on a
twin axis (its levels are not comparable with ours, only its shape), one figure layout per kind (the
student-shape frontier, which has no paper counterpart: frontier_plot.py; the building blocks: figures.py).

matplotlib is imported inside the functions and only its object API is used (no pyplot), so importing
the report costs nothing and leaves no global state behind.
"""

from __future__ import annotations

from pathlib import Path

from slimlm.experiments import labels
from slimlm.experiments import paper as paper_data
from slimlm.experiments.axis import arm_x, method_of, point_x, teacher_layers
from slimlm.experiments.columns import TRAINING_COLUMNS, column
from slimlm.experiments.control import ONLINE, ONLINE_LEGEND, controls, swept
from slimlm.experiments.figures import draw_references
from slimlm.experiments.figures import figure as _figure
from slimlm.experiments.figures import log_if_wide as _log_if_wide
from slimlm.experiments.figures import save as _save
from slimlm.experiments.figures import suptitle as _suptitle
from slimlm.experiments.frontier_plot import plot_student_shape
from slimlm.experiments.stats import finite

DOWNSTREAM = ("cloze_exact_match", "rouge1", "rouge2", "rougeL")
SPEEDS = ("decode_tokens_per_s", "prefill_tokens_per_s")
# Our metric -> the paper's key for it, where the paper has one.
PAPER_KEY = {"accuracy": "accuracy_pct", "perplexity": "perplexity", "decode_tokens_per_s": "decode_tokens_per_s"}


def draw_plots(report: dict, spec: dict, folder: Path) -> list[str]:
    """Draw the report's figures into `folder`; return their paths relative to the run folder."""
    return PLOTTERS.get(report["kind"], plot_generic)(report, spec, folder)


# ---------------------------------------------------------------- building blocks


def single_pass(key: str) -> str:
    """What a speed panel's title says of its timings: each model was timed once, when it was evaluated,
    not round-robin against the others (bench/decode_speed.py), so a busy minute can move one point alone."""
    return " (single pass per seed)" if key in SPEEDS else ""


def _panels(arms) -> list[str]:
    """Accuracy, perplexity, speed, and downstream scores when any arm has them."""
    general = [k for k in ("general_accuracy", "general_perplexity") if any(k in a["metrics"] for a in arms)]
    keys = ["accuracy", "perplexity", *general, "decode_tokens_per_s"]
    return keys + [k for k in DOWNSTREAM if any(k in a["metrics"] for a in arms)]


def _draw_ours(ax, arms, key, x_of, fmt="o-", color="C0", label="slimlm (mean ± std over seeds)"):
    """Mean with ±1 std error bars, each seed a faint dot: the reader sees the noise the means hide."""
    arms = [a for a in arms if key in a["metrics"]]
    scale = column(key).scale
    xs = [x_of(a) for a in arms]
    means = [a["metrics"][key]["mean"] * scale for a in arms]
    stds = [(a["metrics"][key]["std"] or 0) * scale for a in arms]
    for x, a in zip(xs, arms):
        ax.scatter(
            [x] * a["metrics"][key]["n"],
            [v * scale for v in a["metrics"][key]["values"]],
            color=color,
            alpha=0.25,
            s=14,
            zorder=2,
        )
    if arms:
        ax.errorbar(xs, means, yerr=stds, fmt=fmt, color=color, capsize=4, label=label, zorder=3)
    ax.set_ylabel(column(key).label)
    ax.grid(alpha=0.3)


def _bars(ax, arms, key, block="metrics", offset=0.0, width=0.8):
    """One bar per arm with ±1 std and faint seed dots."""
    scale = column(key).scale
    for i, a in enumerate(arms):
        s = a[block].get(key)
        if not s:
            continue
        ax.bar(
            i + offset,
            s["mean"] * scale,
            width,
            yerr=(s["std"] or 0) * scale,
            capsize=4,
            color="C0",
            alpha=0.8,
            label="slimlm (mean ± std)" if i == 0 else None,
        )
        ax.scatter([i + offset] * s["n"], [v * scale for v in s["values"]], color="k", alpha=0.3, s=12, zorder=3)
    ax.set_xticks(range(len(arms)), [a["label"] for a in arms])
    ax.set_ylabel(column(key).label)
    ax.grid(axis="y", alpha=0.3)


def _paper_axis(ax, unit: str):
    """A twin y axis in the paper's colour: its levels are not comparable with ours, only its shape."""
    twin = ax.twinx()
    twin.set_ylabel(f"paper: {unit}", color="C3")
    twin.tick_params(axis="y", colors="C3")
    return twin


def _legend_below(ax, twin, y: float) -> None:
    """One legend under the panel for both axes, one entry per label."""
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    seen = dict(zip(l1 + l2, h1 + h2))
    twin.legend(seen.values(), seen.keys(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, y))


def _draw_paper(ax, xs, ys, pkey, label, *, ranges=None):
    """The paper's values as a dashed line; ranges it gives without a point as vertical bars."""
    unit = {"accuracy_pct": "accuracy (%)", "perplexity": "perplexity", "decode_tokens_per_s": "tok/s"}[pkey]
    twin = _paper_axis(ax, unit)
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if pts:
        twin.plot(*zip(*pts), "s--", color="C3", mfc="none", label=label)
    for x, (lo, hi) in ranges or []:
        twin.vlines(x, lo, hi, color="C3", lw=3, alpha=0.5, label=f"paper range {lo:g}–{hi:g} (approx.)")
    _legend_below(ax, twin, -0.2)


# ---------------------------------------------------------------- one layout per kind


def _sweep_figure(arms, kind, x_of, paper_label, style_axis, vs):
    """One panel per metric against the swept axis, with the paper's points where it has that metric; control
    arms (control.py) as their own unjoined markers, just right of their setting so they hide no swept point."""
    keys, points, extra = _panels(arms), swept(arms), controls(arms)
    fig, axes = _figure(len(keys))
    source = paper_data.BY_KIND[kind]
    pxs = [point_x(p, kind) for p in source["points"]]
    for ax, key in zip(axes, keys):
        _draw_ours(ax, points, key, x_of)
        for i, kind_arms in enumerate(_by_control(extra)):
            label = ONLINE_LEGEND if kind_arms[0]["control"] == ONLINE else f"{kind_arms[0]['control']} (control)"
            _draw_ours(ax, kind_arms, key, lambda a: x_of(a) * 1.08, fmt="DsP"[i % 3], color=f"C{2 + i}", label=label)
        style_axis(ax)
        ours = [v for a in arms for v in ((a["metrics"].get(key) or {}).get("values") or [])]
        _log_if_wide(ax, [], ours)  # one diverged arm (perplexity 1e8) must not flatten the others to a line
        pkey = PAPER_KEY.get(key)
        if pkey:
            span = source.get(f"{pkey}_range")  # a range given in words instead of a number per point
            ranges = [(x, span) for x, p in zip(pxs, source["points"]) if p[pkey] is None] if span else None
            _draw_paper(ax, pxs, [p[pkey] for p in source["points"]], pkey, paper_label, ranges=ranges)
        else:
            ax.legend(fontsize=7)
        ax.set_title(f"{column(key).label} vs {vs}{single_pass(key)}")
    return fig, dict(zip(keys, axes))


def _by_control(arms: list[dict]) -> list[list[dict]]:
    """Control arms grouped by what they control for, each group drawn with its own marker and legend."""
    groups: dict[str, list[dict]] = {}
    for arm in arms:
        groups.setdefault(arm["control"], []).append(arm)
    return list(groups.values())


def plot_temperature(report, spec, folder) -> list[str]:
    arms = report["arms"]
    ticks = sorted({float(a["value"]) for a in arms} | {p["temperature"] for p in paper_data.TABLE1["points"]})

    def style(ax):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(spec["parameter"].get("label", "KD temperature τ") + " (log scale)")

    fig, _ = _sweep_figure(arms, "temperature", lambda a: float(a["value"]), "paper Table 1 (right axis)", style, "τ")
    _suptitle(
        fig,
        "KD temperature sweep: slimlm (left axes) and the paper's Table 1 (right axes, levels not comparable)",
        fontsize=10,
    )
    return [_save(fig, folder, "temperature.png")]


def plot_feature_layer(report, spec, folder) -> list[str]:
    fig2, layers = paper_data.FIGURE2, teacher_layers(spec)

    def style(ax):
        ax.set_xlabel("relative depth (distilled layer / teacher layers)")
        ax.set_xlim(0, 1.05)
        top = ax.secondary_xaxis("top", functions=(lambda depth: depth * layers, lambda layer: layer / layers))
        top.set_xlabel(f"slimlm teacher layer (of {layers})", fontsize=8)

    fig, axes = _sweep_figure(
        report["arms"],
        "feature-layer",
        lambda a: arm_x(a, spec),
        "paper Figure 2, approximate (read from its text; right axis)",
        style,
        "distilled layer",
    )
    axes["accuracy"].text(
        0.02,
        0.02,
        "paper: layers 1 and 12 'lower' (no number given)",
        transform=axes["accuracy"].transAxes,
        fontsize=7,
        color="C3",
    )
    _suptitle(
        fig,
        "Feature-distillation layer sweep: slimlm (left axes) and the paper's Figure 2 (right axes; approximate, "
        f"its layers 1, 6, 12 of {fig2['teacher_layers']} drawn at relative depth)",
        fontsize=10,
    )
    return [_save(fig, folder, "feature_layer.png")]


def plot_finetune(report, spec, folder) -> list[str]:
    arms = [a for a in report["arms"] if a["metrics"]] or report["arms"]
    names = [_finetune_quality(arms, folder)]
    cost = [c.key for c in TRAINING_COLUMNS if any(c.key in a["training"] for a in arms)]
    if cost:
        names.append(_finetune_cost(arms, cost, folder))
    return names


def _finetune_quality(arms, folder) -> str:
    """Our bars beside the paper's hatched Figure 3 bars, on their own axis."""
    keys = _panels(arms)
    fig, axes = _figure(len(keys))
    paper = {p["method"]: p for p in paper_data.FIGURE3["points"]}
    for ax, key in zip(axes, keys):
        pkey = PAPER_KEY.get(key)
        _bars(ax, arms, key, offset=-0.2 if pkey else 0.0, width=0.4 if pkey else 0.8)
        if pkey:
            twin = _paper_axis(ax, "accuracy (%)" if pkey == "accuracy_pct" else column(key).label)
            for i, a in enumerate(arms):
                p = paper.get(method_of(a))
                if p:
                    twin.bar(
                        i + 0.2,
                        p[pkey],
                        0.4,
                        color="none",
                        edgecolor="C3",
                        hatch="//",
                        label="paper Figure 3 (right axis)" if i == 0 else None,
                    )
            _legend_below(ax, twin, -0.1)
        ax.set_title(column(key).label + single_pass(key))
    _suptitle(
        fig,
        "LoRA vs full fine-tuning: slimlm (solid, left axes) and the paper's Figure 3 (hatched, right axes)",
        fontsize=10,
    )
    return _save(fig, folder, "finetune_quality.png")


def _finetune_cost(arms, keys, folder) -> str:
    fig, axes = _figure(len(keys), width=3.6)
    for ax, key in zip(axes, keys):
        _bars(ax, arms, key, block="training")
        ax.set_title(column(key).label)
    _suptitle(fig, "Training cost, slimlm only (the paper gives no training-cost numbers)")
    return _save(fig, folder, "finetune_cost.png")


def _by_seed(summary: dict) -> dict:
    return dict(zip(summary["seeds"], summary["values"]))


def _frontier_panel(ax, report, ykey):
    """Stages connected in order with 2-D error bars, references as labelled stars."""
    arms = [a for a in report["arms"] if {"size_on_disk_mb", ykey} <= a["metrics"].keys()]
    scale = column(ykey).scale
    xs = [a["metrics"]["size_on_disk_mb"]["mean"] for a in arms]
    ys = [a["metrics"][ykey]["mean"] * scale for a in arms]
    if arms:
        ax.errorbar(
            xs,
            ys,
            xerr=[a["metrics"]["size_on_disk_mb"]["std"] or 0 for a in arms],
            yerr=[(a["metrics"][ykey]["std"] or 0) * scale for a in arms],
            fmt="o-",
            color="C0",
            capsize=3,
            label="stages: " + " → ".join(f"{i + 1}. {a['label']}" for i, a in enumerate(arms)),
        )
    for i, (x, y, a) in enumerate(zip(xs, ys, arms)):
        labels.add(ax, f"{i + 1}. {a['label']}", (x, y))
        size, other = _by_seed(a["metrics"]["size_on_disk_mb"]), _by_seed(a["metrics"][ykey])
        seeds = [s for s in size if s in other]
        ax.scatter([size[s] for s in seeds], [other[s] * scale for s in seeds], color="C0", alpha=0.25, s=12)
    refs = draw_references(ax, report["references"], "size_on_disk_mb", ykey)  # baselines: markers of their own
    _log_if_wide(ax, xs + [x for x, _ in refs], ys + [y for _, y in refs])
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel(column(ykey).label)
    ax.grid(alpha=0.3)


def plot_pipeline(report, spec, folder) -> list[str]:
    fig, (left, right) = _figure(2, width=5.5, height=4.4)
    _frontier_panel(left, report, "perplexity")
    left.set_title("size vs perplexity (lower-left is better)", fontsize=10)
    _frontier_panel(right, report, "decode_tokens_per_s")
    right.set_title("size vs decode speed, single pass (upper-left is better)", fontsize=10)
    handles, names = left.get_legend_handles_labels()  # the same models in both panels: one legend under them
    fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize=7)
    _suptitle(fig, "Compression pipeline frontier (slimlm only; the paper reports no pipeline numbers)")
    return [_save(fig, folder, "pipeline_frontier.png")]


def plot_generic(report, spec, folder) -> list[str]:
    """Any other kind: metric panels against the parameter (numeric) or as bars (not numeric)."""
    arms = report["arms"]
    keys = _panels(arms)
    fig, axes = _figure(len(keys))
    numeric = spec.get("parameter", {}).get("numeric") and all(finite(a["value"]) for a in arms)
    for ax, key in zip(axes, keys):
        if numeric:
            _draw_ours(ax, arms, key, lambda a: float(a["value"]))
            ax.set_xlabel(spec["parameter"].get("label", spec["parameter"].get("name", "")))
        else:
            _bars(ax, arms, key)
        ax.set_title(column(key).label + single_pass(key))
    return [_save(fig, folder, "arms.png")]


PLOTTERS = {
    "temperature": plot_temperature,
    "feature-layer": plot_feature_layer,
    "finetune": plot_finetune,
    "pipeline": plot_pipeline,
    "student-shape": plot_student_shape,
}
