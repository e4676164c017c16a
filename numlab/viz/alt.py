"""Alt text: a sentence per figure saying what it shows, read off the figure itself.

Every figure numlab displays (a static :func:`~numlab.viz.new_figure` or a widget's frame)
carries the text from :func:`describe` in its output's metadata (``{"image/png": {"alt":
...}}``): the web book puts it on the ``<img>``, and a screen reader reads it there.

The sentence names each panel's title, its axes (and which are logarithmic), its series
and the range each one spans, so it changes with the result drawn: a reader who cannot see
the figure learns what a seeing reader learns from the axes and the legend.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
from matplotlib.figure import Figure

_SHAPES = {"Rectangle": "bars", "FancyArrow": "arrows", "FancyArrowPatch": "arrows",
           "Polygon": "shaded regions", "Circle": "circles"}
_MAX_SERIES = 6  # beyond this a sentence stops helping; the count is still given


def describe(fig) -> str:
    """A sentence (a few, for several panels) describing ``fig``'s panels and series."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    panels = [ax for ax in fig.axes if ax.get_visible() and not _is_colorbar(ax)]
    colorbars = {id(ax): ax for ax in fig.axes if _is_colorbar(ax)}
    parts = []
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None and suptitle.get_text():
        parts.append(f"{_clean(suptitle.get_text())}.")
    if len(panels) > 1:
        parts.append(f"{len(panels)} panels.")
    for i, ax in enumerate(panels, 1):
        prefix = f"Panel {i}" if len(panels) > 1 else "Plot"
        parts.append(_panel(ax, prefix, colorbars))
    text = " ".join(p for p in parts if p)
    return text or "An empty figure."


def _panel(ax, prefix: str, colorbars: dict) -> str:
    title = " ".join(_clean(t) for t in (ax.get_title("left"), ax.get_title(), ax.get_title("right")) if t)
    head = f'{prefix}, "{title}"' if title else prefix
    x, y = _axis(ax, "x"), _axis(ax, "y")
    what = f"{y} against {x}" if x and y else (y or x or "")
    series = _series(ax)
    sentence = f"{head}: {what}" if what else head
    if ax.images:
        values = np.asarray(ax.images[0].get_array(), dtype=float)
        label = next((_clean(c.get_ylabel()) for c in colorbars.values() if c.get_ylabel()), "")
        finite = values[np.isfinite(values)]
        span = f" from {_num(finite.min())} to {_num(finite.max())}" if finite.size else ""
        sentence += f"; a colour map{' of ' + label if label else ''}{span}"
    texts = [_clean(t.get_text()) for t in ax.texts if t.get_visible() and _clean(t.get_text())]
    if texts:
        sentence += "; labelled " + ", ".join(f'"{t}"' for t in texts[:_MAX_SERIES])
    if series:
        shown = "; ".join(series[:_MAX_SERIES])
        more = f"; and {len(series) - _MAX_SERIES} more" if len(series) > _MAX_SERIES else ""
        sentence += f"; series: {shown}{more}"
    elif ax.patches and not ax.images:
        kinds = Counter(_SHAPES.get(type(p).__name__, "shapes") for p in ax.patches)
        sentence += "; " + ", ".join(_count(n, kind[:-1]) for kind, n in kinds.items())
    return sentence + "."


def _axis(ax, which: str) -> str:
    label = _clean(getattr(ax, f"get_{which}label")())
    scale = getattr(ax, f"get_{which}scale")()
    if label and scale in ("log", "symlog"):
        label += " (log scale)"
    return label


def _series(ax) -> list[str]:
    # the x label without its parenthetical gloss, to say where a value sits
    xname = re.sub(r"\s*\(.*\)$", "", _clean(ax.get_xlabel())) or "x"
    out = []
    for line in ax.get_lines():
        label = line.get_label()
        if not label or label.startswith("_") or not line.get_visible():
            continue
        label = _clean(label)
        x = np.asarray(line.get_xdata(), dtype=float)
        y = np.asarray(line.get_ydata(), dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        if line.get_transform() == ax.get_xaxis_transform():  # axvline: x is data
            xs = ", ".join(_num(v) for v in dict.fromkeys(x[ok].tolist()))
            out.append(f"{label}: a vertical line at {xname} = {xs}")
        elif line.get_transform() == ax.get_yaxis_transform():  # axhline: y is data
            ys = ", ".join(_num(v) for v in dict.fromkeys(y[ok].tolist()))
            out.append(f"{label}: a horizontal line at {ys}")
        elif not ok.any():
            if y.size:  # a series with data, all of it inf or nan (an empty line is a legend key)
                out.append(f"{label} (no finite values)")
        elif ok.sum() <= 3:
            out.append(f"{label} at " + ", ".join(
                f"{xname} = {_num(a)}: {_num(b)}" for a, b in zip(x[ok], y[ok], strict=True)))
        elif y[ok].min() == y[ok].max():
            out.append(f"{label} constant at {_num(y[ok].min())}")
        else:
            lo = int(np.argmin(np.where(ok, y, np.inf)))
            out.append(f"{label} from {_num(y[lo])} (at {xname} = {_num(x[lo])}) to {_num(y[ok].max())}")
    for coll in ax.collections:  # stems and vertical lines (LineCollection) with a label
        label = coll.get_label()
        segments = getattr(coll, "get_segments", lambda: [])()
        if label and not label.startswith("_") and segments:
            tops = np.array([seg[:, 1].max() for seg in segments if len(seg)], dtype=float)
            tops = tops[np.isfinite(tops)]
            if tops.size:
                out.append(f"{_clean(label)}: {_count(len(segments), 'stem')} "
                           f"from {_num(tops.min())} to {_num(tops.max())}")
    for container in ax.containers:  # bar charts with a label
        label = container.get_label()
        if label and not label.startswith("_"):
            out.append(f"{_clean(label)} ({_count(len(container), 'bar')})")
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _is_colorbar(ax) -> bool:
    return getattr(ax, "_colorbar", None) is not None or ax.get_label() == "<colorbar>"


def _num(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    return f"{v:.2g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.1e}"


def _clean(text: str) -> str:
    # mathtext reads badly aloud: drop the dollar signs and the commonest backslash names
    text = text.replace("$", "").replace("\\", "").replace("\n", " ")
    return " ".join(text.split())
