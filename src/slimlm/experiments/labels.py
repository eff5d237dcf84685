"""Point labels that never collide: each label is tried at a fixed list of spots around its point, nearest
first, and kept at the first spot where it stays inside its panel and clear of every text and labelled point
placed before it; a label that fits nowhere is hidden, its point being named in the legend. The order is
fixed, so the same report always gives the same picture.

Labels are drawn with `add` while a figure is built and moved by `place` once its layout is settled
(figures.save), since only then are their sizes on the canvas known.
"""

from __future__ import annotations

GID = "slimlm-label"  # marks the annotations `place` may move
RINGS = (3.0, 12.0, 24.0, 40.0)  # gap between label and point, in points; beyond the first a leader line shows
# Directions as (x, y) unit steps: right, then above and below, then left, then straight up and down.
DIRECTIONS = ((1, 0), (1, 1), (1, -1), (-1, 0), (-1, 1), (-1, -1), (0, 1), (0, -1))
BACKING = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75}  # readable over lines
POINT_PX = 5.0  # half the side of the box kept clear around each labelled point


def add(ax, text: str, xy, color="k", fontsize=8):
    """A label for the point `xy` (data units), placed later by `place`."""
    arrow = {"arrowstyle": "-", "color": color, "lw": 0.6, "alpha": 0.6, "shrinkA": 1, "shrinkB": 3}
    label = ax.annotate(
        text, xy, xytext=(0, 0), textcoords="offset points", ha="center", va="center",
        fontsize=fontsize, color=color, arrowprops=arrow, annotation_clip=False, bbox=BACKING,
    )  # fmt: skip
    label.set_gid(GID)
    label.set_in_layout(False)  # placed inside its panel, so the layout need not make room for it
    return label


def place(fig) -> list[str]:
    """Move every label of `fig` to its first free spot; return the texts of those hidden for want of one."""
    renderer = fig.canvas.get_renderer()
    fixed = [t.get_window_extent(renderer) for t in _fixed_texts(fig)]
    hidden = []
    for ax in fig.axes:
        labels = [t for t in ax.texts if t.get_gid() == GID]
        taken = fixed + [_point_box(ax, label.xy) for label in labels]
        legend = ax.get_legend()
        if legend is not None:
            taken.append(legend.get_window_extent(renderer))
        for label in labels:
            box = _first_free(label, ax.bbox, taken, renderer)
            if box is None:
                label.set_visible(False)
                hidden.append(label.get_text())
            else:
                taken.append(box)
    return hidden


def _first_free(label, area, taken, renderer):
    """The label's box at the first spot inside `area` that overlaps nothing in `taken`, or None."""
    label.xyann = (0, 0)
    size = _text_box(label, renderer)
    to_points = 72.0 / label.figure.dpi
    half_w, half_h = size.width / 2 * to_points, size.height / 2 * to_points
    for gap in RINGS:
        for dx, dy in DIRECTIONS:
            label.xyann = (dx * (half_w + gap), dy * (half_h + gap))
            box = _text_box(label, renderer)
            if _inside(box, area) and not any(box.overlaps(other) for other in taken):
                label.arrow_patch.set_visible(gap > RINGS[0])
                return box
    return None


def _text_box(label, renderer):
    """The label's text alone: an annotation's own extent takes in its leader line, which reaches the point."""
    from matplotlib.text import Text

    label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)


def _inside(box, area) -> bool:
    return area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1


def _point_box(ax, xy):
    from matplotlib.transforms import Bbox

    x, y = ax.transData.transform(xy)
    return Bbox.from_extents(x - POINT_PX, y - POINT_PX, x + POINT_PX, y + POINT_PX)


def _fixed_texts(fig) -> list:
    """Texts drawn inside panels that labels must not cover: any text of a panel other than a label."""
    return [t for ax in fig.axes for t in ax.texts if t.get_gid() != GID and t.get_visible() and t.get_text()]
