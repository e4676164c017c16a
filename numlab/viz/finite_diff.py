"""Drawing finite differences: error-vs-step curves and gradcheck heatmaps, and their widgets."""
from __future__ import annotations

import functools
import warnings

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.ticker import LogLocator, NullLocator

from numlab import finite_diff, layers
from numlab.formats import short_name
from numlab.viz._explorer import Explorer, grid_slider
from numlab.viz.palette import BLUE, GREEN_TEXT, VERMILLION, VERMILLION_TEXT

DTYPES = ["fp16", "bf16", "fp32", "fp64"]
FWD, CEN = BLUE, VERMILLION
FLOOR = 1e-17  # errors of exactly 0 are drawn here (log axes cannot show 0)


def _positive(t) -> np.ndarray:
    a = np.asarray(t, dtype=float)
    return np.where(a > 0, a, FLOOR)


class _SweepArtists:
    """The artists of one error-vs-h plot, created once and then only updated."""

    def __init__(self, ax):
        self.ax = ax
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(1e-16, 1.0)
        ax.set_ylim(1e-16, 1.0)
        # Decade ticks only (every other one on x): fewer tick labels, a faster redraw.
        ax.xaxis.set_major_locator(LogLocator(numticks=9))
        ax.yaxis.set_major_locator(LogLocator(numticks=8))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_locator(NullLocator())
        ax.set_xlabel("step h")
        ax.set_ylabel("relative error of f'(x)")
        ax.grid(True, which="major", alpha=0.3)
        (self.forward,) = ax.plot([], [], color=FWD, label="forward (f(x+h)-f(x))/h")
        (self.central,) = ax.plot([], [], "-.", color=CEN, label="central (f(x+h)-f(x-h))/2h")
        (self.forward_model,) = ax.plot([], [], "--", color=FWD, lw=1.2, alpha=0.8,
                                        label="model: truncation + rounding")
        (self.central_model,) = ax.plot([], [], ls=(0, (1, 1)), color=CEN, lw=1.2, alpha=0.8)
        (self.best,) = ax.plot([], [], "*", color="k", markersize=14, label="measured best h")
        self.thumb_forward = ax.axvline(1e-8, color=FWD, ls=":", lw=1.5, label="sqrt(eps), cbrt(eps)")
        self.thumb_central = ax.axvline(1e-5, color=CEN, ls=":", lw=1.5)
        self.current = ax.axvline(1e-4, color="0.4", lw=1, visible=False)
        (self.points,) = ax.plot([], [], "o", color="k", markersize=7, visible=False)
        self.legend = ax.legend(loc="upper center", fontsize=9, ncols=2, framealpha=0.95)

    def update(self, r: finite_diff.SweepResult, point: finite_diff.SweepResult | None = None,
               sticky: bool = False):
        """Show ``r`` (and ``point``); ``sticky`` keeps the y-limits while the data fit them
        and fill most of them (a widget then redraws only its curves, not the axes)."""
        hs = r.hs.numpy()
        self.forward.set_data(hs, _positive(r.forward_err))
        self.central.set_data(hs, _positive(r.central_err))
        self.forward_model.set_data(hs, r.model_err("forward").numpy())
        self.central_model.set_data(hs, r.model_err("central").numpy())
        self.best.set_data([r.best_forward_h, r.best_central_h],
                           _positive([r.best_forward_err, r.best_central_err]))
        sq, cb = r.rule_of_thumb
        self.thumb_forward.set_xdata([sq, sq])
        self.thumb_central.set_xdata([cb, cb])
        if point is not None:
            h = float(point.hs[0])
            self.current.set_xdata([h, h])
            self.points.set_data([h, h], _positive([point.forward_err[0], point.central_err[0]]))
        self.current.set_visible(point is not None)
        self.points.set_visible(point is not None)
        self.ax.set_xlim(hs.min() / 2, hs.max() * 2)
        top = float(max(r.forward_err.max(), r.central_err.max(), 1.0))
        low = float(min(r.best_forward_err, r.best_central_err))
        # Whole decades (head room for the legend on top): nearby x values then keep the
        # same limits and ticks, which lets a widget redraw only its curves.
        lo, hi = max(FLOOR, low / 30), top * 1e3
        lo, hi = 10.0 ** np.floor(np.log10(lo)), 10.0 ** np.ceil(np.log10(hi))
        cur_lo, cur_hi = self.ax.get_ylim()
        fits = cur_lo <= lo and hi <= cur_hi and np.log10(cur_hi / cur_lo) <= np.log10(hi / lo) + 3
        if not (sticky and fits):
            self.ax.set_ylim(lo, hi)
        return self


def plot_sweep(ax, result: finite_diff.SweepResult, h: float | None = None, f=None):
    """Forward and central error against h, the error model, the best h and the rules of thumb.

    With ``h`` (and the same ``f`` as the sweep) the estimates at that step are marked too.
    Returns the artists as a dict.
    """
    artists = _SweepArtists(ax)
    point = None
    if h is not None:
        if f is None:
            raise ValueError("f is needed with h: pass the function the sweep used")
        point = finite_diff.sweep_h(f, result.x, result.dtype, hs=[h], df=result.true)
    artists.update(result, point)
    ax.set_title(f"x = {result.x:g}, {short_name(result.dtype)}")
    return {k: v for k, v in vars(artists).items() if k != "ax"}


class StepExplorer(Explorer):
    """Slide h and watch both estimates of f'(x): truncation on the right, rounding on the left."""

    figsize = (9, 4.6)

    def setup(self, fig):
        self.ax = fig.add_subplot()
        self.artists = _SweepArtists(self.ax)
        # A fixed title height (y given): matplotlib otherwise measures every decoration
        # above the axes on each full redraw to place it (a quarter of that redraw).
        self.ax.set_title(" ", y=1.0)
        # Blitting: axes, ticks and legend stay in a cached background while the limits do
        # not change; the curves, markers, lines and the title are redrawn on top.
        a = self.artists
        # the legend last: it is drawn over the curves and the h marker, never under them
        self.animate(a.forward, a.central, a.forward_model, a.central_model, a.best,
                     a.thumb_forward, a.thumb_central, a.current, a.points, self.ax.title, a.legend)

    def background_key(self):
        return (self.ax.get_xlim(), self.ax.get_ylim())

    def compute(self, func, x, dtype, h):
        sweep = _sweep(func, x, dtype)  # depends on f, x and the format only: h reuses it
        point = finite_diff.sweep_h(func, x, sweep.dtype, hs=[finite_diff.usable_step(h, sweep.dtype)],
                                    df=sweep.true)
        return sweep, point

    def draw(self, result):
        r, p = result
        self.artists.update(r, p, sticky=True)
        self.ax.set_title(f"d/dx {self.controls['func'].value} at x = {r.x:g} in {short_name(r.dtype)}")
        sq, cb = r.rule_of_thumb
        h = float(p.hs[0])
        return (
            f"h = {h:.2e}: forward {float(p.forward[0]):.8g} (error {float(p.forward_err[0]):.1e}), "
            f"central {float(p.central[0]):.8g} (error {float(p.central_err[0]):.1e}); "
            f"true {r.true:.8g}.<br>Best measured h: forward {r.best_forward_h:.1e}, central "
            f"{r.best_central_h:.1e}; model h*: {r.forward_model.h_opt:.1e}, "
            f"{r.central_model.h_opt:.1e}; rule of thumb sqrt(eps) = {sq:.1e}, cbrt(eps) = {cb:.1e}."
        )


@functools.lru_cache(maxsize=64)
def _sweep(func: str, x: float, dtype: str) -> finite_diff.SweepResult:
    return finite_diff.sweep_h(func, x, dtype)


def explore_step_size(func="exp", x=1.0, dtype="fp32", h=1e-4):
    """Choose f, x and the format; slide h on a log scale."""
    if func not in finite_diff.FUNCTIONS:
        raise ValueError(f"func must be one of {list(finite_diff.FUNCTIONS)}, got {func!r}")
    if short_name(dtype) not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if not (isinstance(x, int | float) and -2 <= x <= 2):
        raise ValueError(f"x must be a number in [-2, 2], got {x!r}")
    if not (isinstance(h, int | float) and 1e-16 <= h <= 1):
        raise ValueError(f"h must be a number in [1e-16, 1], got {h!r}")
    explorer = StepExplorer({
        "func": widgets.Dropdown(options=list(finite_diff.FUNCTIONS), value=func, description="f"),
        "x": grid_slider(x, min=-2.0, max=2.0, step=0.05, description="x"),
        "dtype": widgets.Dropdown(options=DTYPES, value=short_name(dtype), description="format"),
        "h": grid_slider(h, log=True, min=-16, max=0, step=0.1, description="h",
                                    readout_format=".1e"),
    })
    return _freeze_layout(explorer)


def _freeze_layout(explorer: Explorer) -> Explorer:
    # The first render placed the axes; tick labels keep about the same width afterwards, so
    # skipping constrained layout on every update makes a slider move about a third cheaper.
    explorer.fig.set_layout_engine("none")
    return explorer


# --- gradcheck heatmap -------------------------------------------------------------------------
class _JacobianArtists:
    """Heatmap of log10 per-entry relative error, failing entries crossed."""

    def __init__(self, ax, colorbar=True):
        self.ax = ax
        self.image = ax.imshow(np.zeros((2, 2)), cmap="viridis", vmin=-16, vmax=0,
                               interpolation="nearest", aspect="auto")
        (self.failed,) = ax.plot([], [], "x", color=VERMILLION, markersize=7, mew=2,
                                 label="fails |a-n| <= atol + rtol|n|")
        ax.set_xlabel("input entry j")
        ax.set_ylabel("output entry i")
        if colorbar:
            ax.figure.colorbar(self.image, ax=ax, label="log10 relative error")
        ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.16), fontsize=9, frameon=False)

    def update(self, report: finite_diff.GradcheckReport):
        rel = report.rel_error.numpy()
        rows, cols = rel.shape
        self.image.set_data(np.log10(np.maximum(rel, 1e-16)))
        self.image.set_extent((-0.5, cols - 0.5, rows - 0.5, -0.5))
        ok = torch.isclose(report.analytical, report.numerical, rtol=report.rtol, atol=report.atol)
        bad_i, bad_j = np.nonzero(~ok.numpy())
        self.failed.set_data(bad_j, bad_i)
        self.ax.set_xlim(-0.5, cols - 0.5)
        self.ax.set_ylim(rows - 0.5, -0.5)
        return self


def plot_jacobian_error(ax, report: finite_diff.GradcheckReport, colorbar=True):
    """The per-entry relative error of a gradcheck as a heatmap; returns the artists."""
    artists = _JacobianArtists(ax, colorbar=colorbar)
    artists.update(report)
    ax.set_title(f"{'passed' if report.passed else 'FAILED'}: max rel err {report.max_rel_error:.1e}")
    return {"image": artists.image, "failed": artists.failed}


LAYER_CHOICES = [
    (f"{name}{': wrong' if wrong else ''}", (name, wrong))
    for name in layers.LAYERS for wrong in (False, True)
]


class GradcheckExplorer(Explorer):
    """Pick a layer (right or subtly wrong), a format and eps; see where the Jacobian disagrees."""

    figsize = (8, 5)
    n = 12

    def setup(self, fig):
        self.ax = fig.add_subplot()
        self.artists = _JacobianArtists(self.ax)
        self.ax.set_title(" ", y=1.0)  # a fixed title height: no search for room on redraws
        # Blitting: the colorbar, ticks and legend stay in a cached background while the
        # Jacobian's shape (the limits) is unchanged; heatmap, crosses and title move.
        self.animate(self.artists.image, self.artists.failed, self.ax.title)

    def background_key(self):
        return (self.ax.get_xlim(), self.ax.get_ylim())

    def compute(self, layer, dtype, eps):
        name, wrong = layer
        fn, inputs = layers.problem(name, self.n, wrong=wrong, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # shown in the status line (report.warnings)
            return finite_diff.gradcheck(fn, inputs, eps=eps)

    def draw(self, report):
        self.artists.update(report)
        verdict = "passed" if report.passed else "FAILED"
        self.ax.set_title(f"{verdict}  ({report.n_failed} of {report.analytical.numel()} entries fail; "
                          f"eps={report.eps:.0e}, {short_name(report.dtype)})")
        # The three worst entries on one line, not a table: the widget then fits a laptop
        # screen (the full list is report.worst, the repr prints it as a table).
        worst = "; ".join(
            f"d out{list(e.out_index)} / d in{list(e.in_index)}: {e.analytical:.4g} vs {e.numerical:.4g}"
            for e in report.worst[:3]
        )
        color = GREEN_TEXT if report.passed else VERMILLION_TEXT
        note = f"<br><i>{' '.join(report.warnings)}</i>" if report.warnings else ""
        return (
            f"<b style='color:{color}'>{verdict}</b>: max abs error {report.max_abs_error:.1e}, "
            f"max rel error {report.max_rel_error:.1e}, Jacobian rel error "
            f"{report.norm_rel_error:.1e}.{note}<br>worst (analytical vs numerical): {worst}"
        )


def explore_gradcheck(layer="layer_norm", wrong=True, dtype="fp64", eps=1e-6):
    """Choose a hand-written layer, its format and the finite-difference step eps."""
    if layer not in layers.LAYERS:
        raise ValueError(f"layer must be one of {sorted(layers.LAYERS)}, got {layer!r}")
    if not (isinstance(eps, int | float) and 1e-10 <= eps <= 0.1):
        raise ValueError(f"eps must be a number in [1e-10, 0.1], got {eps!r}")
    if short_name(dtype) not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    explorer = GradcheckExplorer({
        "layer": widgets.Dropdown(options=LAYER_CHOICES, value=(layer, bool(wrong)),
                                  description="layer"),
        "dtype": widgets.Dropdown(options=DTYPES, value=short_name(dtype), description="format"),
        "eps": grid_slider(eps, log=True, min=-10, max=-1, step=0.25,
                                      description="eps", readout_format=".0e"),
    })
    return _freeze_layout(explorer)
