"""Drawing the floating-point formats: their ranges, and one number's bits."""
from __future__ import annotations

import math

import ipywidgets as widgets
import numpy as np
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from numlab import formats
from numlab.viz._explorer import Explorer, grid_slider
from numlab.viz.palette import BLUE, GREEN, SKY, VERMILLION

COLORS = {"sign": VERMILLION, "exponent": BLUE, "mantissa": GREEN}
CHOICES = ["fp16", "bf16", "fp32", "fp64", "fp8_e4m3fn", "fp8_e5m2"]


def plot_ranges(ax, dtypes=("fp16", "bf16", "fp32"), eps=True):
    """Each format as a bar on one log10 axis: subnormal band, normal range, eps marked.

    Returns a dict of the artists: ``{"subnormal": [...], "normal": [...], "eps": [...]}``.
    """
    facts = [formats.info(d) for d in dtypes]
    artists = {"subnormal": [], "normal": [], "eps": []}
    for row, f in enumerate(facts):
        lo, mid, hi = (math.log10(v) for v in (f.smallest_subnormal, f.tiny, f.max))
        artists["subnormal"] += ax.barh(row, mid - lo, left=lo, height=0.5, color=SKY,
                                        label="subnormal" if row == 0 else None)
        artists["normal"] += ax.barh(row, hi - mid, left=mid, height=0.5, color=BLUE,
                                     label="normal" if row == 0 else None)
        if eps:
            artists["eps"] += ax.plot([math.log10(f.eps)], [row], marker="|", markersize=22,
                                      color="k", label="eps" if row == 0 else None)
    ax.set_yticks(range(len(facts)), [f.short for f in facts])
    ax.set_xlabel("log10 of the magnitude")
    ax.axvline(0, color="0.6", lw=1, zorder=0)
    ax.set_ylim(-0.6, len(facts) - 0.4)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncols=3, frameon=False)
    return artists


class FormatExplorer(Explorer):
    """One number in one format: its bits as boxes, its stored value, its neighbours."""

    figsize = (10, 3.6)

    def setup(self, fig):
        self.ax_bits, self.ax_line = fig.subplots(2, 1, height_ratios=[1, 1.2])
        self.ax_bits.set_axis_off()
        self.boxes = []
        for i in range(64):  # the widest format; narrower ones hide the rest
            box = Rectangle((i, 0), 0.92, 1, color=COLORS["mantissa"])
            self.boxes.append(self.ax_bits.add_patch(box))
        # The bits' digits as two marker glyphs ("0" and "1", bold, white), stamped at each
        # box: Agg draws a marker once and copies it, where 64 texts cost about 20 ms.
        self.digits = {bit: self.ax_bits.plot([], [], ls="none", marker=rf"$\mathbf{{{bit}}}$",
                                              color="white", mec="none")[0]
                       for bit in "01"}
        self.ax_bits.set_ylim(-0.1, 1.1)
        self.caption = self.ax_bits.text(0, 1.25, "", fontsize=12)
        ax = self.ax_line
        ax.set_yticks([])
        # about five ticks: long decimal labels stay apart (and each costs ~1 ms to draw)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        (self.grid,) = ax.plot([], [], "|", color="0.3", markersize=30, label="representable")
        (self.stored,) = ax.plot([], [], "o", color=COLORS["exponent"], markersize=10, label="stored")
        (self.typed,) = ax.plot([], [], "x", color=COLORS["sign"], markersize=12, mew=3, label="typed")
        # (below the legend's row)
        self.note = ax.text(0.5, 0.55, "", transform=ax.transAxes, ha="center", va="center",
                            fontsize=12)
        ax.legend(loc="upper right", ncols=3, frameon=False)
        ax.set_ylim(-1, 2)
        # Blitting: only the number line's frame and the legend stay in the background; the
        # bit boxes, digits, caption, markers, note and the number line's ticks are drawn on
        # top of it on every change of format or value.
        self.animate(*self.boxes, *self.digits.values(), self.caption, self.grid, self.stored,
                     self.typed, self.note, ax.xaxis)

    def compute(self, dtype, x, magnitude=None):
        below, above = formats.neighbors(x, dtype)
        return {
            "d": formats.decompose(x, dtype),
            "format": formats.info(dtype),
            "neighbors": (below, above),
            "ulp": formats.ulp(x, dtype),
        }

    def draw(self, r):
        d, f = r["d"], r["format"]
        kinds = ["sign"] + ["exponent"] * f.exponent_bits + ["mantissa"] * f.mantissa_bits
        bits = f"{d.sign}{d.exponent_bits}{d.mantissa_bits}"
        for i, box in enumerate(self.boxes):
            shown = i < f.bits
            box.set_visible(shown)
            if shown:
                box.set_color(COLORS[kinds[i]])
        centres = np.arange(f.bits) + 0.46
        chars = np.array(list(bits))
        # a digit as tall as 9-point text (6 points in the 64-bit format's narrower boxes)
        size = 0.73 * (9 if f.bits <= 32 else 6)
        for bit, marker in self.digits.items():
            marker.set_data(centres[chars == bit], np.full(int((chars == bit).sum()), 0.5))
            marker.set_markersize(size)
        self.ax_bits.set_xlim(-0.2, max(f.bits, 16) + 0.2)
        self.caption.set_text(
            f"{f.short}: 1 sign (red) + {f.exponent_bits} exponent (blue) + {f.mantissa_bits} mantissa"
            f" (green) bits; {d.kind}"
        )
        below, above = r["neighbors"]
        finite = [v for v in (below, d.stored, above) if math.isfinite(v)]
        if math.isfinite(d.stored):
            self.grid.set_data([below, d.stored, above], [0, 0, 0])
            self.stored.set_data([d.stored], [0])
            self.typed.set_data([d.x], [0])
            span = max(finite) - min(finite) or 1.0
            self.ax_line.set_xlim(min(finite) - span * 0.15, max(finite) + span * 0.15)
            self.note.set_text("")
        else:
            self.grid.set_data(finite, [0] * len(finite))
            self.stored.set_data([], [])
            self.typed.set_data([], [])
            self.note.set_text(f"{d.x:g} is past max = {f.max:.6g}: stored as {d.stored}")
        return (
            f"<b>{d.x!r}</b> is stored in {f.short} as <b>{d.stored!r}</b> ({d.kind}); "
            f"rounding error {d.abs_error:.3g} (relative {d.rel_error:.3g}); "
            f"neighbours {_neighbour(below, f)} and {_neighbour(above, f)}; "
            f"spacing of the numbers here (ulp) {r['ulp']:.3g}"
        )


def _neighbour(value: float, f) -> str:
    # NaN stands for "no number there": e4m3fn has nothing beyond +-max, not even inf
    return f"none (no inf in {f.short})" if math.isnan(value) else f"{value:.8g}"


def explore_format(dtype="fp16", x=0.1):
    """Choose a format, type or slide a value: see its bits, stored value and neighbours."""
    dtype = formats.short_name(dtype)
    text = widgets.FloatText(value=x, description="x", layout=widgets.Layout(width="240px"))
    slider = grid_slider(abs(x) or 1.0, log=True, min=-45, max=40, step=0.01,
                                    description="|x| slider", readout_format=".3g",
                                    layout=widgets.Layout(width="460px"))
    # The slider feeds the text box; typing allows negatives, zero, inf and exact values.
    slider.observe(lambda change: setattr(text, "value", change["new"]), names="value")
    explorer = FormatExplorer({
        "dtype": widgets.Dropdown(options=CHOICES, value=dtype, description="format"),
        "x": text,
    })
    explorer.children[0].children += (slider,)
    explorer.slider = slider
    # The first render placed the two axes; later values only change tick labels below the
    # number line, so skipping constrained layout on every update halves its cost.
    explorer.fig.set_layout_engine("none")
    return explorer
