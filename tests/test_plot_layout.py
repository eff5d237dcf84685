"""Every report figure reads at a glance: drawn from small report dicts shaped like report.json, no two texts
overlap (labels, titles, axis and tick labels, legends) and every text lies inside the canvas. The student-shape
fixture has the committed study's close arms (perplexity 63-70) next to far starting students (450-1050)."""

from __future__ import annotations

import statistics

import pytest
from matplotlib.figure import Figure

from slimlm.experiments import plots


def summary(values: list[float]) -> dict:
    std = statistics.stdev(values) if len(values) > 1 else None
    return {
        "mean": statistics.fmean(values),
        "std": std,
        "n": len(values),
        "values": values,
        "seeds": [0, 1][: len(values)],
    }


def arm(name, value, label, **metrics) -> dict:
    return {"name": name, "value": value, "label": label, "metrics": {k: summary(v) for k, v in metrics.items()}}


def ref(ppl, tok_s, size, params, **extra) -> dict:
    metrics = {"perplexity": ppl, "decode_tokens_per_s": tok_s, "size_on_disk_mb": size, "parameters": params}
    return {"metrics": metrics, **extra}


def gguf(arm_name, bits, ppl, tok_s, size, params) -> dict:
    about = {"of": f"{arm_name} (seed 0)", "arm": arm_name, "bits": bits, "type": f"q{bits}_0"}
    return ref(ppl, tok_s, size, params, baseline=about)


def teacher_baseline(bits, ppl, tok_s, size) -> dict:
    return ref(ppl, tok_s, size, 134.5e6, baseline={"of": "teacher", "bits": bits})


def student_shape() -> tuple[dict, dict]:
    """The committed student-shape study's numbers, rounded: three arms within a few perplexity points."""
    arms = [
        arm("depth", "depth", "depth", perplexity=[62.8, 65.0], decode_tokens_per_s=[38.9, 36.8],
            size_on_disk_mb=[297.3, 297.3], parameters=[74.33e6, 74.33e6]),
        arm("width", "width", "width", perplexity=[68.3, 71.2], decode_tokens_per_s=[22.2, 31.2],
            size_on_disk_mb=[296.7, 296.7], parameters=[74.16e6, 74.16e6]),
        arm("both", "both", "both", perplexity=[64.3, 66.9], decode_tokens_per_s=[29.3, 45.9],
            size_on_disk_mb=[293.9, 293.9], parameters=[73.46e6, 73.46e6]),
    ]  # fmt: skip
    references = {
        "teacher": ref(28.7, 14.1, 538.1, 134.5e6),
        "student-depth": ref(1050.2, 39.2, 297.3, 74.33e6, student={"axis": "depth"}),
        "student-width": ref(814.8, 32.0, 296.7, 74.16e6, student={"axis": "width"}),
        "student-both": ref(448.4, 30.1, 293.9, 73.46e6, student={"axis": "both"}),
        "teacher-int8": teacher_baseline(8, 28.7, 14.1, 136.3),
        "teacher-int4": teacher_baseline(4, 30.1, 20.4, 101.1),
        "teacher-q8_0-llama.cpp": teacher_baseline(8, 28.7, 76.0, 144.8),
        "teacher-q4_0-llama.cpp": teacher_baseline(4, 33.9, 99.1, 91.7),
        "depth-q8_0-llama.cpp": gguf("depth", 8, 63.0, 204.9, 80.8, 74.33e6),
        "depth-q4_0-llama.cpp": gguf("depth", 4, 72.2, 303.2, 57.8, 74.33e6),
        "width-q8_0-llama.cpp": gguf("width", 8, 68.4, 71.2, 133.8, 74.16e6),
        "width-q4_0-llama.cpp": gguf("width", 4, 72.4, 71.9, 125.1, 74.16e6),
        "both-q8_0-llama.cpp": gguf("both", 8, 64.7, 120.2, 79.9, 73.46e6),
        "both-q4_0-llama.cpp": gguf("both", 4, 74.3, 153.1, 57.4, 73.46e6),
    }
    parameter = {"name": "axes", "numeric": False, "target_params": 0.55}
    report = {"kind": "student-shape", "parameter": parameter, "arms": arms, "references": references}
    return report, {"kind": "student-shape", "parameter": parameter}


def pipeline() -> tuple[dict, dict]:
    """The committed pipeline's stages: distil and fine-tune land on the same point."""
    stages = [("student", 845.5, 24.0, 311.5), ("distill", 91.5, 23.9, 311.5), ("finetune", 93.0, 22.1, 311.5),
              ("prune", 107.6, 26.1, 281.8), ("quantize", 107.9, 27.0, 71.4)]  # fmt: skip
    arms = [
        arm(f"{i + 1}-{s}", i + 1, s, perplexity=[p], decode_tokens_per_s=[t], size_on_disk_mb=[mb])
        for i, (s, p, t, mb) in enumerate(stages)
    ]
    references = {
        "teacher": ref(28.7, 14.4, 538.1, 134.5e6),
        "teacher-int8": teacher_baseline(8, 28.7, 16.0, 136.3),
        "teacher-int4": teacher_baseline(4, 30.1, 17.5, 101.1),
    }
    parameter = {"name": "stage", "label": "pipeline stage", "numeric": False}
    return {"kind": "pipeline", "parameter": parameter, "arms": arms, "references": references}, {
        "kind": "pipeline",
        "parameter": parameter,
    }


def sweep(kind: str, values, parameter: dict) -> tuple[dict, dict]:
    """A swept study with two seeds per arm, one downstream score and a control arm."""
    arms = [
        arm(f"a{v}", v, f"{v}", accuracy=[0.23 + 0.002 * i, 0.24], perplexity=[72.0 + 3 * i, 75.0 + 2 * i],
            decode_tokens_per_s=[30.0 + i, 38.0], cloze_exact_match=[0.27 - 0.01 * i, 0.26])
        for i, v in enumerate(values)
    ]  # fmt: skip
    control = arm("online", values[2], "online", accuracy=[0.235, 0.245], perplexity=[71.0, 74.0],
                  decode_tokens_per_s=[36.0, 42.0], cloze_exact_match=[0.25, 0.26])  # fmt: skip
    arms.append({**control, "control": "online teacher"})
    parameter = {**parameter, "teacher_layers": 30}
    return {"kind": kind, "parameter": parameter, "arms": arms, "references": {}}, {
        "kind": kind,
        "parameter": parameter,
        "protocol": {"teacher_layers": 30},
    }


def finetune() -> tuple[dict, dict]:
    arms = [
        {**arm(m, m, label, accuracy=[0.25, 0.26], perplexity=[60.0, 62.0], decode_tokens_per_s=[27.0, 29.0],
               cloze_exact_match=[0.29, 0.3]),
         "training": {"wall_time_s": summary([100.0, 110.0]), "peak_memory_mib": summary([2000.0, 2100.0])}}
        for m, label in (("lora", "LoRA r=8"), ("full", "full fine-tuning"))
    ]  # fmt: skip
    parameter = {"name": "method", "numeric": False}
    return {"kind": "finetune", "parameter": parameter, "arms": arms, "references": {}}, {
        "kind": "finetune",
        "parameter": parameter,
    }


def data_mix() -> tuple[dict, dict]:
    """Any other kind: bars per arm, general-text metrics included."""
    arms = [
        arm(name, name, name, accuracy=[0.25, 0.26], perplexity=[60.0, 61.0], general_accuracy=[0.22, 0.23],
            general_perplexity=[99.0, 101.0], decode_tokens_per_s=[27.0, 29.0], cloze_exact_match=[0.29, 0.3])
        for name in ("sotu", "wikipedia", "sotu + wikipedia")
    ]  # fmt: skip
    parameter = {"name": "data", "numeric": False}
    return {"kind": "data-mix", "parameter": parameter, "arms": arms, "references": {}}, {
        "kind": "data-mix",
        "parameter": parameter,
    }


FIXTURES = {
    "student-shape": student_shape,
    "pipeline": pipeline,
    "temperature": lambda: sweep("temperature", [0.5, 1.0, 2.0, 5.0, 10.0], {"label": "KD temperature τ"}),
    "feature-layer": lambda: sweep("feature-layer", [3, 8, 15, 22, 30], {"label": "teacher layer"}),
    "finetune": finetune,
    "data-mix": data_mix,
}


def drawn(report: dict, spec: dict, folder, monkeypatch) -> list[Figure]:
    """The figures draw_plots saves, caught at savefig, each drawn again on an Agg canvas for measuring."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figures.append(fig) or save(fig, *a, **k))
    plots.draw_plots(report, spec, folder)
    for fig in figures:
        FigureCanvasAgg(fig).draw()
    return figures


def shown_texts(fig: Figure) -> list:
    """Every text the reader sees: non-empty, visible, and for tick labels only those of ticks in view."""
    from matplotlib.axis import Axis
    from matplotlib.text import Text

    hidden = set()
    for axis in fig.findobj(Axis):
        low, high = sorted(axis.get_view_interval())
        pad = (high - low) * 1e-6
        for tick in axis.get_major_ticks() + axis.get_minor_ticks():
            if not low - pad <= tick.get_loc() <= high + pad or not tick.get_visible():
                hidden.update({id(tick.label1), id(tick.label2)})
    return [
        t
        for t in fig.findobj(Text)
        if t.get_text().strip() and t.get_visible() and id(t) not in hidden and _ancestors_visible(t)
    ]


def _ancestors_visible(text) -> bool:
    axes = text.axes
    return axes is None or axes.get_visible()


def box(text):
    """A text's own box (an annotation's extent would take in its leader line), trimmed by a hair so that
    texts merely touching do not count."""
    from matplotlib.text import Text

    return Text.get_window_extent(text, text.figure.canvas.get_renderer()).expanded(0.98, 0.9)


def overlaps(fig: Figure) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), box(t)) for t in shown_texts(fig)]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1 :] if box_a.overlaps(box_b)]


def outside(fig: Figure) -> list[str]:
    canvas = fig.bbox.padded(1)
    return [
        t.get_text() for t in shown_texts(fig) if not (canvas.contains(*box(t).min) and canvas.contains(*box(t).max))
    ]


@pytest.mark.parametrize("kind", sorted(FIXTURES))
def test_no_two_texts_overlap_and_every_text_is_inside_the_canvas(kind, tmp_path, monkeypatch):
    report, spec = FIXTURES[kind]()
    figures = drawn(report, spec, tmp_path, monkeypatch)
    assert figures
    for fig in figures:
        assert not overlaps(fig), f"{kind}: texts overlap: {overlaps(fig)}"
        assert not outside(fig), f"{kind}: texts outside the canvas: {outside(fig)}"


def test_the_frontier_fits_its_perplexity_axis_to_the_distilled_students(tmp_path, monkeypatch):
    """Arms 2-5 perplexity points apart stay apart on the canvas, though their starting students lie 10x higher."""
    (fig,) = drawn(*student_shape(), tmp_path, monkeypatch)
    for ax in fig.axes:
        low, high = ax.get_ylim()
        assert low > 20 and high < 100  # the teacher (28.7) in view, the starting students (448-1050) not
        depth, width = (ax.transData.transform((1, y))[1] for y in (63.9, 69.8))
        assert width - depth > 20  # pixels


def test_panels_wrap_at_three_a_row():
    """A six-panel sweep is two rows of three (one row of six is unreadable on a page); fewer stay in one row."""
    from slimlm.experiments.figures import figure

    fig, axes = figure(6)
    rows = sorted({round(ax.get_subplotspec().rowspan.start) for ax in axes})
    cols = sorted({round(ax.get_subplotspec().colspan.start) for ax in axes})
    assert (rows, cols) == ([0, 1], [0, 1, 2]) and fig.get_figwidth() == pytest.approx(3 * 4.6)
    fig, axes = figure(2)
    assert {ax.get_subplotspec().rowspan.start for ax in axes} == {0} and fig.get_figheight() == pytest.approx(3.8)
