"""Drawing softmax and its binary cousin: naive vs stable, and where each format breaks."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
from matplotlib.collections import LineCollection

from numlab import softmax as sm
from numlab.formats import short_name
from numlab.viz._explorer import Explorer, grid_slider
from numlab.viz.palette import BLACK, BLUE, GREEN, ORANGE, VERMILLION, VERMILLION_TEXT

DTYPES = ("fp16", "bf16", "fp32", "fp64")
NAIVE, STABLE, BAD = ORANGE, BLUE, VERMILLION
OK, WARN = GREEN, ORANGE
SCALE_RANGE = (1e-2, 1e4)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def _red_if_bad(v: float) -> str:
    return _fmt(v) if math.isfinite(v) else f"<b style='color:{VERMILLION_TEXT}'>{v}</b>"


# --- static plots --------------------------------------------------------------------------
def plot_sweep(ax, sweep: sm.LogitSweep, quantity: str = "loss"):
    """Naive and stable loss (or gradient norm) against the logit scale, inf/NaN marked in red.

    Returns ``{"naive": Line2D, "stable": Line2D, "bad": Line2D}``.
    """
    if quantity == "loss":
        naive, stable = sweep.loss_naive, sweep.loss_stable
    elif quantity == "grad":
        naive, stable = (np.linalg.norm(g, axis=1) for g in (sweep.grad_naive, sweep.grad_stable))
    else:
        raise ValueError(f"quantity must be 'loss' or 'grad', got {quantity!r}")
    s = sweep.scales
    (l_stable,) = ax.plot(s, stable, color=STABLE, label="stable (fused)")
    (l_naive,) = ax.plot(s, np.where(np.isfinite(naive), naive, np.nan), "--", color=NAIVE,
                         label="naive")
    bad = ~np.isfinite(naive)
    top = np.nanmax(stable) if np.isfinite(stable).any() else 1.0
    (l_bad,) = ax.plot(s[bad], np.full(bad.sum(), top), "x", color=BAD, label="naive is inf/NaN")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("logit scale s (logits = s * linspace(1, -1, n))")
    ax.set_ylabel("loss" if quantity == "loss" else "gradient norm")
    ax.set_title(f"{sweep.dtype}, {sweep.n_classes} classes, true class {sweep.target}")
    ax.legend(frameon=False)
    return {"naive": l_naive, "stable": l_stable, "bad": l_bad}


def _strip_segments(bps: list[sm.Breakpoints], lo: float, hi: float):
    """Per format: green (all fine), orange (naive gradient inf/NaN), red (naive loss too)."""
    segments, colors = [], []
    for row, bp in enumerate(bps):
        edges = [lo, min(max(bp.grad, lo), hi), min(max(bp.loss, lo), hi), hi]
        for a, b, color in zip(edges[:-1], edges[1:], (OK, WARN, BAD), strict=True):
            segments.append([(a, row), (b, row)])
            colors.append(color)
    ticks = [(min(bp.softmax, hi), row) for row, bp in enumerate(bps)]
    return segments, colors, ticks


def plot_breakpoints(ax, bps: list[sm.Breakpoints], xlim=SCALE_RANGE):
    """One row per format: where the naive gradient (orange) and loss (red) break; | = sum overflows.

    Returns ``{"strip": LineCollection, "overflow": Line2D}``.
    """
    segments, colors, ticks = _strip_segments(bps, *xlim)
    strip = ax.add_collection(LineCollection(segments, colors=colors, linewidths=9))
    (overflow,) = ax.plot(*zip(*ticks, strict=True), "|", color="k", markersize=16, mew=2)
    ax.set_xscale("log")
    ax.set_xlim(*xlim)
    ax.set_ylim(-0.6, len(bps) - 0.4)
    ax.set_yticks(range(len(bps)), [bp.dtype for bp in bps])
    ax.invert_yaxis()
    return {"strip": strip, "overflow": overflow}


def plot_softplus_error(ax, sweep: sm.BinarySweep):
    """Relative error of log(1 + e^z) and of the softplus form against z (symlog), inf/NaN in red.

    Returns ``{"naive": Line2D, "stable": Line2D, "bad": Line2D}``.
    """
    floor = 1e-17
    z = sweep.z
    err_n, err_s = sweep.rel_error("softplus_naive"), sweep.rel_error("softplus_stable")
    (l_n,) = ax.plot(z, np.clip(np.where(np.isfinite(err_n), err_n, np.nan), floor, None), "^",
                     color=NAIVE, ms=3, label="log(1 + e^z)")
    (l_s,) = ax.plot(z, np.clip(err_s, floor, None), ".", color=STABLE, ms=3,
                     label="max(z,0) + log1p(e^-|z|)")
    bad = ~np.isfinite(sweep.softplus_naive)
    (l_b,) = ax.plot(z[bad], np.full(bad.sum(), 3.0), "x", color=BAD, ms=4, label="naive is inf")
    _softplus_axes(ax, floor)
    ax.set_title(f"softplus in {sweep.dtype}: relative error vs the exact value")
    ax.legend(frameon=False, loc="upper left", fontsize=9)
    return {"naive": l_n, "stable": l_s, "bad": l_b}


def _softplus_axes(ax, floor):
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("log")
    ax.set_xlim(-1.2e4, 1.2e4)
    ax.set_ylim(floor / 3, 30)
    ax.set_xticks([-1e4, -1e2, -1, 0, 1, 1e2, 1e4], ["-1e4", "-100", "-1", "0", "1", "100", "1e4"])
    ax.set_yticks([1e-16, 1e-8, 1], ["1e-16", "1e-8", "1"])
    ax.minorticks_off()
    ax.set_xlabel("z")


def _off(err: float, limit: float) -> str:
    """The naive gradient's largest error, red with "(wrong)" once it passes sm.wrong_limit."""
    if not math.isfinite(err):
        return f"<b style='color:{VERMILLION_TEXT}'>inf/NaN</b>"
    if err > limit:
        return f"<b style='color:{VERMILLION_TEXT}'>{err:.3g} (wrong, though finite)</b>"
    return f"{err:.2g}"


# --- explore_softmax ---------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class SoftmaxView:
    """What the softmax explorer shows: one row of the sweep, and the breakpoints per format."""

    sweep: sm.LogitSweep
    breakpoints: tuple

    @property
    def first_bad(self) -> str | None:
        """The first non-finite naive value, as 'p[j]', 'loss' or 'grad[j]', or None."""
        sw = self.sweep
        for name, values in (("p", sw.probs_naive[0]), ("loss", sw.loss_naive[:1]),
                             ("grad", sw.grad_naive[0])):
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                return "loss" if name == "loss" else f"{name}[{bad[0]}]"
        return None

    def __repr__(self):
        sw = self.sweep
        return (f"SoftmaxView({sw.dtype}, s={sw.scales[0]:.4g}, {sw.n_classes} classes: loss naive "
                f"{_fmt(sw.loss_naive[0])}, stable {_fmt(sw.loss_stable[0])}; first bad: {self.first_bad})")


class SoftmaxExplorer(Explorer):
    """Logits, naive vs stable probabilities and gradients, and a strip of where formats break."""


    figsize = (10, 5.4)

    def setup(self, fig):
        fig.set_layout_engine(None)  # fixed axes positions: no layout pass per frame
        self.ax_z = fig.add_axes((0.09, 0.44, 0.22, 0.44))
        self.ax_p = fig.add_axes((0.39, 0.44, 0.26, 0.44))
        self.ax_g = fig.add_axes((0.73, 0.44, 0.25, 0.44))
        self.ax_s = fig.add_axes((0.06, 0.11, 0.92, 0.2))
        self.bars = {}
        for ax, key, color, width in ((self.ax_z, "z", "0.35", 10), (self.ax_p, "p_naive", NAIVE, 5),
                                      (self.ax_p, "p_stable", STABLE, 5),
                                      (self.ax_g, "g_naive", NAIVE, 5), (self.ax_g, "g_stable", STABLE, 5)):
            self.bars[key] = self.animate(ax.add_collection(LineCollection([], colors=color,
                                                                           linewidths=width)))
        self.p_bad = self.animate(*self.ax_p.plot([], [], "x", color=BAD, ms=12, mew=3))
        self.g_bad = self.animate(*self.ax_g.plot([], [], "x", color=BAD, ms=12, mew=3))
        self.p_note = self.animate(self.ax_p.text(0.5, 0.78, "", transform=self.ax_p.transAxes,
                                                  ha="center", color=BAD, fontsize=12,
                                                  fontweight="bold"))
        # The logits are s * linspace(1, -1, n): bars are drawn as z / s on a fixed axis, and
        # the two labels carry the scale (so a slider move never re-renders tick labels).
        self.ax_z.set_ylim(-1.2, 1.2)
        self.ax_z.set_yticks([-1, 0, 1], ["", "0", ""])
        self.z_top = self.animate(self.ax_z.text(-0.03, 1 / 2.4 * 2.2, "", ha="right", va="center",
                                                 transform=self.ax_z.transAxes))
        self.z_bottom = self.animate(self.ax_z.text(-0.03, 0.2 / 2.4, "", ha="right", va="center",
                                                    transform=self.ax_z.transAxes))
        self.ax_z.set_title("logits z")
        self.ax_p.set_title("probabilities")
        self.ax_g.set_title("d loss / d z")
        self.ax_p.set_ylim(-0.05, 1.1)
        self.ax_p.set_yticks([0, 0.5, 1])
        self.ax_g.set_ylim(-1.15, 1.15)
        self.ax_g.set_yticks([-1, 0, 1])
        self.ax_g.axhline(0, color="0.7", lw=1)
        self.ax_p.plot([], [], color=NAIVE, lw=5, label="naive")
        self.ax_p.plot([], [], color=STABLE, lw=5, label="stable")
        self.ax_p.legend(loc="upper right", frameon=False, fontsize=10, ncols=2)
        self.loss_text = self.animate(fig.text(0.5, 0.955, "", ha="center", fontsize=13))
        self.strip = None
        self.ax_s.set_title("where the naive forms break: gradient (orange), loss (red); "
                            "| the sum overflows", fontsize=11)
        self.ax_s.set_xlabel("logit scale s", labelpad=1)
        self.now = self.animate(self.ax_s.axvline(1.0, color="k", lw=1.5, ls="--"))
        # Class j sits at (j + 1/2) / n on a fixed [0, 1] axis, so changing n moves artists only.
        for ax in (self.ax_z, self.ax_p, self.ax_g):
            ax.set_xlim(0, 1)
            ax.set_xticks([])
            ax.set_xlabel("class 0, 1, ..., n-1", fontsize=11, labelpad=2)

    def compute(self, scale, dtype, n_classes, target):
        sweep = sm.sweep_logits([scale], dtype, n_classes, target)
        bps = tuple(sm.breakpoints(d, n_classes, target) for d in DTYPES)
        return SoftmaxView(sweep, bps)

    def draw(self, r):
        sw = r.sweep
        n, s = sw.n_classes, sw.scales[0]
        x = (np.arange(n) + 0.5) / n
        off = 0.17 / n
        width = float(np.clip(90 / n, 2, 14))
        self._set_bars("z", x, sw.logits[0] / s, 2 * width)
        self.z_top.set_text(f"{s:.3g}")
        self.z_bottom.set_text(f"{-s:.3g}")
        pn, ps, gn, gs = sw.probs_naive[0], sw.probs_stable[0], sw.grad_naive[0], sw.grad_stable[0]
        self._set_bars("p_naive", x - off, np.nan_to_num(pn, nan=0, posinf=0, neginf=0), width)
        self._set_bars("p_stable", x + off, ps, width)
        self._set_bars("g_naive", x - off, np.clip(np.nan_to_num(gn, nan=0), -1.1, 1.1), width)
        self._set_bars("g_stable", x + off, gs, width)
        bad_p, bad_g = ~np.isfinite(pn), ~np.isfinite(gn)
        self.p_bad.set_data(x[bad_p] - off, np.full(bad_p.sum(), 0.5))
        self.g_bad.set_data(x[bad_g] - off, np.zeros(bad_g.sum()))
        first = r.first_bad
        self.p_note.set_text(f"first inf/NaN: {first}" if first else "")
        loss_n, loss_s = sw.loss_naive[0], sw.loss_stable[0]
        self.loss_text.set_text(f"loss: naive {_fmt(loss_n)}, fused {_fmt(loss_s)}")
        self.loss_text.set_color(VERMILLION_TEXT if not math.isfinite(loss_n) else "k")
        self.now.set_xdata([s, s])
        self._draw_strip(r)
        return (f"naive loss {_red_if_bad(loss_n)} &nbsp; fused loss {_red_if_bad(loss_s)} &nbsp; "
                f"naive grad [{', '.join(_red_if_bad(v) for v in gn[:6])}{', …' if n > 6 else ''}]"
                f" &nbsp; naive grad off by {_off(sw.grad_error[0], sm.wrong_limit(sw.dtype))}"
                f" &nbsp; first non-finite: {first or 'none'} &nbsp; "
                f"sum after the shift {sw.shifted_sum[0]:.4g} (in [1, {n}])")

    def _set_bars(self, key, x, heights, width):
        self.bars[key].set_segments([[(a, 0), (a, h)] for a, h in zip(x, heights, strict=True)])
        self.bars[key].set_linewidth(width)

    def _draw_strip(self, r):
        if self.strip is None:
            self.strip = plot_breakpoints(self.ax_s, list(r.breakpoints))
            self.animate(self.strip["strip"], self.strip["overflow"])
            return
        segments, colors, ticks = _strip_segments(list(r.breakpoints), *SCALE_RANGE)
        self.strip["strip"].set_segments(segments)
        self.strip["strip"].set_colors(colors)
        self.strip["overflow"].set_data(*zip(*ticks, strict=True))


def explore_softmax(scale=5.0, dtype="fp16", n_classes=4, target="low"):
    """Drag the logit scale up (log slider to 1e4): watch the naive softmax break, per format."""
    dtype = short_name(dtype)
    return SoftmaxExplorer({
        "scale": grid_slider(scale, log=True, min=-2, max=4, step=0.01,
                                        description="logit scale", readout_format=".4g",
                                        layout=widgets.Layout(width="420px")),
        "dtype": widgets.Dropdown(options=list(DTYPES), value=dtype, description="dtype",
                                  layout=widgets.Layout(width="170px")),
        "n_classes": widgets.IntSlider(value=n_classes, min=2, max=20, description="classes",
                                       layout=widgets.Layout(width="300px")),
        "target": widgets.Dropdown(options=[("lowest logit", "low"), ("highest logit", "high")],
                                   value=target, description="true class",
                                   layout=widgets.Layout(width="230px")),
    })


# --- explore_bce -------------------------------------------------------------------------
_Z_GRID = np.concatenate([-np.logspace(4, -2, 160), np.logspace(-2, 4, 160)])
_STRIP_Z = np.concatenate([-np.logspace(4, -2, 300), np.logspace(-2, 4, 300)])


@dataclass(frozen=True, repr=False)
class BceView:
    """What the BCE explorer shows: the values at one z, and the error curve over all z."""

    point: sm.BinarySweep
    curve: sm.BinarySweep

    def __repr__(self):
        p = self.point
        return (f"BceView({p.dtype}, z={p.z[0]:.4g}, t={p.target:g}: softplus naive "
                f"{_fmt(p.softplus_naive[0])} vs {_fmt(p.softplus_stable[0])}, bce naive "
                f"{_fmt(p.bce_naive[0])} vs {_fmt(p.bce_stable[0])})")


def _softplus_health(dtype) -> np.ndarray:
    """0 where log(1+e^z) is within 1% of the truth, 1 where it is worse, 2 where inf/NaN."""
    sw = _strip_sweep(short_name(dtype))
    err = sw.rel_error("softplus_naive")
    return np.where(~np.isfinite(sw.softplus_naive), 2, np.where(err > 0.01, 1, 0))


@functools.lru_cache(maxsize=8)  # one per format
def _strip_sweep(dtype: str) -> sm.BinarySweep:
    return sm.sweep_bce(_STRIP_Z, dtype, target=1.0)


@functools.lru_cache(maxsize=32)  # bounded: the label slider can produce many values
def _curve(dtype: str, target: float) -> sm.BinarySweep:
    return sm.sweep_bce(_Z_GRID, dtype, target=target)


def _format_strip(ax):
    """One row per format: where naive log(1 + e^z) is fine, off by more than 1%, or inf."""
    strip = ax.add_collection(LineCollection([], linewidths=9))
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(-1.2e4, 1.2e4)
    ax.set_xticks([-1e4, -1e2, -1, 0, 1, 1e2, 1e4], ["-1e4", "-100", "-1", "0", "1", "100", "1e4"])
    ax.minorticks_off()
    ax.set_ylim(-0.6, len(DTYPES) - 0.4)
    ax.set_yticks(range(len(DTYPES)), DTYPES)
    ax.invert_yaxis()
    ax.set_title("log(1 + e^z) per format: fine (green), off by > 1% (orange), inf (red)",
                 fontsize=11)
    segments, colors = [], []
    for row, d in enumerate(DTYPES):
        health = _softplus_health(d)
        # one segment per run of equal health, from its first z to the next run's first z
        starts = np.flatnonzero(np.diff(health, prepend=-1))
        ends = np.append(starts[1:], len(health) - 1)
        for a, b in zip(starts, ends, strict=True):
            segments.append([(_STRIP_Z[a], row), (_STRIP_Z[b], row)])
            colors.append((OK, WARN, BAD)[health[a]])
    strip.set_segments(segments)
    strip.set_colors(colors)
    return strip


class BceExplorer(Explorer):
    """log(1 + e^z) vs the softplus form, and sigmoid-then-log BCE vs the fused one, at one z."""

    figsize = (10, 5.2)
    floor = 1e-17

    def setup(self, fig):
        fig.set_layout_engine(None)
        self.ax_e = fig.add_axes((0.07, 0.44, 0.55, 0.46))
        self.ax_t = fig.add_axes((0.66, 0.44, 0.33, 0.46))
        self.ax_s = fig.add_axes((0.07, 0.08, 0.91, 0.2))
        # every moving part is animated (blitted); the axes behind them never change
        self.err_n = self.animate(*self.ax_e.plot([], [], "^", color=NAIVE, ms=3, label="log(1 + e^z)"))
        self.err_s = self.animate(*self.ax_e.plot([], [], ".", color=STABLE, ms=3,
                                                  label="softplus form"))
        self.err_bad = self.animate(*self.ax_e.plot([], [], "x", color=BAD, ms=4, label="inf / NaN"))
        # the format's name sits in the title, above the data (inside the axes the inf
        # markers covered it)
        self.title = self.animate(self.ax_e.set_title(" ", fontsize=12))
        self.z_line = self.animate(self.ax_e.axvline(1.0, color="k", lw=1.5, ls="--"))
        _softplus_axes(self.ax_e, self.floor)
        self.ax_e.set_xlabel("")
        ax = self.ax_t
        ax.set_axis_off()
        ax.text(0.0, 0.92, "at this z", fontsize=12, fontweight="bold", transform=ax.transAxes)
        ax.text(0.30, 0.92, "naive", color=BLACK, fontsize=12, transform=ax.transAxes)
        ax.text(0.65, 0.92, "stable", color=STABLE, fontsize=12, transform=ax.transAxes)
        self.cells = {}
        for i, row in enumerate(("softplus", "bce", "d bce/dz")):
            y = 0.76 - 0.16 * i
            ax.text(0.0, y, row, fontsize=12, transform=ax.transAxes)
            # columns placed so a value as long as -2.061e-09 ends inside the figure
            for col, x in (("naive", 0.30), ("stable", 0.65)):
                self.cells[row, col] = self.animate(ax.text(x, y, "", fontsize=11,
                                                            family="monospace",
                                                            transform=ax.transAxes))
        ax.legend(handles=[self.err_n, self.err_s, self.err_bad], loc="lower left", frameon=False,
                  fontsize=10, markerscale=3, title="relative error (left)", title_fontsize=10)
        self.strip = _format_strip(self.ax_s)
        self.s_line = self.animate(self.ax_s.axvline(1.0, color="k", lw=1.5, ls="--"))

    def compute(self, magnitude, sign, target, dtype):
        z = magnitude if sign == "+" else -magnitude
        point = sm.sweep_bce([z], dtype, target=target)
        return BceView(point=point, curve=_curve(short_name(dtype), float(target)))

    def draw(self, r):
        c, p = r.curve, r.point
        err_n, err_s = c.rel_error("softplus_naive"), c.rel_error("softplus_stable")
        finite = np.isfinite(err_n)
        self.err_n.set_data(c.z[finite], np.clip(err_n[finite], self.floor, None))
        self.err_s.set_data(c.z, np.clip(err_s, self.floor, None))
        bad = ~np.isfinite(c.softplus_naive)
        self.err_bad.set_data(c.z[bad], np.full(bad.sum(), 3.0))
        self.title.set_text(f"softplus in {c.dtype}: relative error vs the exact value")
        z = p.z[0]
        self.z_line.set_xdata([z, z])
        self.s_line.set_xdata([z, z])
        first = None
        for row, (a, b) in {"softplus": ("softplus_naive", "softplus_stable"),
                            "bce": ("bce_naive", "bce_stable"),
                            "d bce/dz": ("grad_naive", "grad_stable")}.items():
            for col, key in (("naive", a), ("stable", b)):
                v = float(getattr(p, key)[0])
                cell = self.cells[row, col]
                cell.set_text(_fmt(v))
                cell.set_color(VERMILLION_TEXT if not math.isfinite(v) else "k")
                if first is None and not math.isfinite(v):
                    first = f"{col} {row}"
        return (f"{p.dtype}, z = {z:.4g}, t = {p.target:g}: log(1+e^z) = "
                f"{_red_if_bad(p.softplus_naive[0])}, softplus form = {_red_if_bad(p.softplus_stable[0])};"
                f" BCE naive {_red_if_bad(p.bce_naive[0])}, fused {_red_if_bad(p.bce_stable[0])};"
                f" first non-finite: {first or 'none'}")


def explore_bce(magnitude=20.0, sign="+", target=1.0, dtype="fp32"):
    """The binary case: drag |z| up, flip its sign, change the label t and the format."""
    dtype = short_name(dtype)
    return BceExplorer({
        "magnitude": grid_slider(magnitude, log=True, min=-2, max=4, step=0.01,
                                            description="|z|", readout_format=".4g",
                                            layout=widgets.Layout(width="400px")),
        "sign": widgets.ToggleButtons(options=["+", "-"], value=sign, description="sign",
                                      style={"button_width": "40px"}),
        "target": grid_slider(target, min=0.0, max=1.0, step=0.05,
                                      description="label t", layout=widgets.Layout(width="300px")),
        "dtype": widgets.Dropdown(options=list(DTYPES), value=dtype, description="dtype",
                                  layout=widgets.Layout(width="170px")),
    })
