"""Drawing for :mod:`numlab.clipping`: ``plot_*(ax, result)`` and three explorers.

* :func:`explore_depth`: depth, gain and nonlinearity -> gradient norm per layer (log axis)
  beside the rate the gain predicts.
* :func:`explore_clipping`: a 2-D gradient as an arrow, its norm-clipped and value-clipped
  versions, the threshold circle (norm) and box (value).
* :func:`explore_training`: no / norm / value clipping and a threshold -> loss and gradient
  norm per step of the toy RNN, spikes and the first non-finite step marked.
"""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import Circle, Rectangle
from matplotlib.ticker import NullLocator

from numlab import clipping
from numlab.viz._explorer import Explorer, grid_slider
from numlab.viz.palette import BLACK, BLUE, GREY, ORANGE, VERMILLION

COLORS = {"original": BLACK, "norm": BLUE, "value": VERMILLION, "predicted": ORANGE}


def _finite(values) -> np.ndarray:
    """float64 numpy copy with inf/NaN replaced by NaN (matplotlib leaves a gap there)."""
    arr = np.asarray(values, dtype=np.float64).copy()
    arr[~np.isfinite(arr)] = np.nan
    return arr


def _vector(x: float, y: float) -> torch.Tensor:
    return torch.tensor([x, y], dtype=torch.float64)


_NAN2 = torch.full((2,), float("nan"), dtype=torch.float64)
_NONE = torch.zeros(0, dtype=torch.long)


def _decades(values: np.ndarray, floor: float = 0.5, ceil: float = 2.0) -> tuple[float, float]:
    """y-limits snapped to powers of ten around the finite positive values (and floor/ceil)."""
    ok = values[np.isfinite(values) & (values > 0)]
    lo, hi = (min(ok.min(), floor), max(ok.max(), ceil)) if ok.size else (floor, ceil)
    return 10.0 ** np.floor(np.log10(lo)), 10.0 ** np.ceil(np.log10(hi))


# --- depth ------------------------------------------------------------------------------------
def plot_depth(ax, profile: clipping.DepthProfile):
    """Measured gradient norm per layer and the predicted geometric line; returns both lines."""
    (measured,) = ax.semilogy(profile.layers.numpy(), _finite(profile.norms), "o-", ms=3,
                              color=COLORS["norm"], label="measured |dL/dh_l|")
    (predicted,) = ax.semilogy(profile.layers.numpy(), _finite(profile.predicted), "--",
                               color=COLORS["predicted"], label="predicted rate ** (depth - l)")
    ax.set_xlabel("layer l (0 = input)")
    ax.set_ylabel("gradient norm")
    ax.legend(loc="best")
    return measured, predicted


class DepthExplorer(Explorer):
    figsize = (9, 4)

    def setup(self, fig):
        # Fixed margins instead of constrained layout, and no minor ticks: together they were
        # two thirds of a full redraw (which a new axis range needs).
        fig.set_layout_engine("none")
        self.ax = fig.add_axes((0.1, 0.15, 0.88, 0.74))
        self.ax.set_yscale("log")
        self.ax.yaxis.set_minor_locator(NullLocator())
        (self.measured,) = self.ax.plot([], [], "o-", ms=3, color=COLORS["norm"],
                                        label="measured |dL/dh_l|")
        (self.predicted,) = self.ax.plot([], [], "--", color=COLORS["predicted"],
                                         label="predicted rate ** (depth - l)")
        self.ax.set_xlabel("layer l (0 = input, depth = output)")
        self.ax.set_ylabel("gradient norm")
        self.ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=2, frameon=False)
        # Blitting: the y axis (its ticks move with every gain) is drawn with the lines on
        # top of a background that holds the frame, x axis and legend.
        self.animate(self.measured, self.predicted, self.ax.yaxis)

    def background_key(self):
        return self.ax.get_xlim()

    def compute(self, depth, gain, nonlinearity):
        return clipping.gradient_norms_by_depth(depth, 64, gain, nonlinearity)

    def draw(self, r):
        x = r.layers.numpy()
        self.measured.set_data(x, _finite(r.norms))
        self.predicted.set_data(x, _finite(r.predicted))
        # x-axis in bands (10, 25, 50, 100, 150, 200 layers) so a depth drag mostly blits
        band = next((b for b in (10, 25, 50, 100, 150, 200) if r.depth <= b), r.depth)
        self.ax.set_xlim(-0.5, band + 0.5)
        lo, hi = _decades(np.concatenate([_finite(r.norms), _finite(r.predicted)]))
        # Keep the current limits while the data fit and fill a fair part of them: the
        # background (ticks, labels) then stays valid and a slider drag only blits the lines.
        cur_lo, cur_hi = self.ax.get_ylim()
        span, cur_span = np.log10(hi / lo), np.log10(cur_hi / cur_lo)
        if not (cur_lo <= lo and hi <= cur_hi and span >= 0.3 * cur_span):
            self.ax.set_ylim(lo / 10, hi * 10)  # a decade of headroom each side
        zero, dtype = torch.nonzero(r.norms == 0).flatten(), str(r.dtype).replace("torch.", "")
        note = ""
        if r.overflowed:
            note = f" &nbsp; <b style='color:#c00'>overflow to inf/NaN in {dtype}</b>"
        elif zero.numel():
            note = (f" &nbsp; <b style='color:#c00'>underflow: exactly 0 from layer "
                    f"{int(zero[-1])} down ({dtype})</b>")
        return (f"{r.nonlinearity}, gain {r.gain:.2f}, depth {r.depth}: |grad| at the input "
                f"<b>{r.input_norm:.3g}</b> &nbsp; fitted rate {r.fitted_rate:.4f}/layer, "
                f"predicted {r.predicted_rate:.4f} ({r.rate_kind}){note}")


def explore_depth(depth: int = 50, gain: float = 1.1, nonlinearity: str = "linear"):
    """Sliders for depth and gain (and a nonlinearity menu) -> gradient norm per layer."""
    style = {"description_width": "initial"}
    return DepthExplorer({
        "depth": widgets.IntSlider(value=depth, min=1, max=200, description="depth", style=style),
        "gain": grid_slider(gain, min=0.5, max=1.5, step=0.01, readout_format=".2f",
                                    description="gain (spectral norm)", style=style),
        "nonlinearity": widgets.Dropdown(options=list(clipping.NONLINEARITIES),
                                         value=nonlinearity, description="f"),
    })


# --- clipping in 2-D ----------------------------------------------------------------------------
def _check_2d(comparison: clipping.ClipComparison):
    if comparison.original.numel() != 2:
        raise ValueError("plot_clip_2d needs a 2-D gradient (2 entries), got "
                         f"{comparison.original.numel()}")


def plot_clip_2d(ax, comparison: clipping.ClipComparison, *, values_in_legend: bool = True):
    """Arrows for the gradient and its two clipped versions, with the circle and the box.

    Returns a dict of the artists: ``original``, ``norm``, ``value`` (FancyArrow),
    ``circle`` (Circle, radius max_norm) and ``box`` (Rectangle, half-width clip_value).
    """
    _check_2d(comparison)
    m, c = comparison.max_norm, comparison.clip_value
    m_text, c_text = (f" = {m:g}", f" = {c:g}") if values_in_legend else ("", "")
    artists = {
        "circle": ax.add_patch(Circle((0, 0), m, fill=False, ls="--", color=COLORS["norm"],
                                      label=f"|g| = max_norm{m_text}")),
        "box": ax.add_patch(Rectangle((-c, -c), 2 * c, 2 * c, fill=False, ls=":",
                                      color=COLORS["value"], label=f"|g_i| = clip_value{c_text}")),
    }
    for key, vec, label in (("original", comparison.original, "gradient"),
                            ("norm", comparison.by_norm, "clip_grad_norm_"),
                            ("value", comparison.by_value, "clip_grad_value_")):
        x, y = (float(v) for v in vec)
        artists[key] = ax.arrow(0, 0, x, y, width=0.03 if key == "original" else 0.045,
                                length_includes_head=True, color=COLORS[key], label=label,
                                alpha=0.45 if key == "original" else 0.9,
                                zorder=2 if key == "original" else 3)
    ax.set_aspect("equal")
    ax.axhline(0, color="#bbb", lw=0.8)
    ax.axvline(0, color="#bbb", lw=0.8)
    ax.legend(loc="upper left", fontsize=9)
    return artists


class ClipExplorer(Explorer):
    figsize = (8, 5)
    limit = 3.5

    def setup(self, fig):
        self.ax = fig.add_subplot()
        first = clipping.clip_comparison(_vector(1.0, 1.0), 1.0)
        self.artists = plot_clip_2d(self.ax, first, values_in_legend=False)
        # A figure legend outside the axes: constrained layout makes room for it, so it is
        # not cut off, and it never covers an arrow.
        self.ax.get_legend().remove()
        fig.legend(handles=list(self.artists.values()), loc="outside right upper", fontsize=10)
        self.animate(*self.artists.values())
        self.ax.set_xlim(-self.limit, self.limit)
        self.ax.set_ylim(-self.limit, self.limit)
        self.ax.set_xlabel("g_1")
        self.ax.set_ylabel("g_2")

    def compute(self, gx, gy, threshold):
        return clipping.clip_comparison(_vector(gx, gy), threshold)

    def draw(self, r):
        for key, vec in (("original", r.original), ("norm", r.by_norm), ("value", r.by_value)):
            x, y = (float(v) for v in vec)
            self.artists[key].set_data(x=0, y=0, dx=x, dy=y)
        self.artists["circle"].set_radius(r.max_norm)
        c = r.clip_value
        self.artists["box"].set_bounds(-c, -c, 2 * c, 2 * c)
        return (f"threshold {r.max_norm:.2f}: |g| = {r.norm:.3f} &nbsp; by norm: |g| = "
                f"{r.norm_by_norm:.3f}, cos = <b>{r.cos_by_norm:.4f}</b> &nbsp; by value: |g| = "
                f"{r.norm_by_value:.3f}, cos = <b>{r.cos_by_value:.4f}</b>")


def explore_clipping(gx: float = 2.5, gy: float = 0.8, threshold: float = 1.0):
    """A 2-D gradient (two sliders) and one threshold for both clips (circle and box)."""
    slider = dict(min=-3.0, max=3.0, step=0.05, readout_format=".2f")
    return ClipExplorer({
        "gx": grid_slider(gx, description="g_1", **slider),
        "gy": grid_slider(gy, description="g_2", **slider),
        "threshold": grid_slider(threshold, min=0.1, max=3.0, step=0.05,
                                         description="threshold", readout_format=".2f"),
    })


# --- training ---------------------------------------------------------------------------------
def plot_training(ax_loss, ax_norm, run: clipping.TrainingRun, *, legend_all: bool = False):
    """Loss and pre-clip gradient norm per step (log axes); spikes and the NaN step marked.

    Returns a dict: ``loss``, ``norm``, ``baseline`` (Line2D), ``spikes`` (PathCollection),
    ``threshold`` and ``nonfinite`` (Line2D, hidden when there is no threshold / no NaN).
    The legends list only what is shown, unless ``legend_all`` (a widget whose artists come
    and go keeps every entry).
    """
    steps = np.arange(len(run.losses))
    loss = _finite(run.losses)
    artists = {
        "loss": ax_loss.semilogy(steps, loss, color=COLORS["original"], label="loss")[0],
        "spikes": ax_loss.scatter(run.spike_steps.numpy(), loss[run.spike_steps.numpy()],
                                  marker="^", color=COLORS["value"], zorder=3,
                                  label="spike (> 10x best so far)"),
        "norm": ax_norm.semilogy(steps, _finite(run.grad_norms), color=COLORS["norm"],
                                 label="|grad| before clipping")[0],
        "threshold": ax_norm.axhline(run.max_norm, ls="--", color=COLORS["predicted"],
                                     label="threshold"),
    }
    at = run.nonfinite_step if run.diverged else 0
    artists["nonfinite"] = ax_norm.axvline(at, color=COLORS["value"], lw=1.5, ls="-.",
                                           label="first non-finite step")
    artists["baseline"] = ax_loss.axhline(1 / 6, ls=":", color=GREY,
                                          label="predict the mean (1/6)")
    ax_loss.set_ylabel("loss (MSE)")
    ax_norm.set_ylabel("gradient norm")
    ax_norm.set_xlabel("step")
    shown = {"threshold": run.clip is not None, "nonfinite": run.diverged,
             "spikes": len(run.spike_steps) > 0}
    for ax in (ax_loss, ax_norm):
        # A legend copies each artist's visibility, so it is drawn before hiding anything.
        keep = [a for key, a in artists.items() if a.axes is ax and (legend_all or shown.get(key, 1))]
        ax.legend(handles=keep, loc="upper right", fontsize=9)
    artists["threshold"].set_visible(shown["threshold"])
    artists["nonfinite"].set_visible(shown["nonfinite"])
    return artists


def plot_threshold_sweep(ax, sweep: clipping.ThresholdSweep):
    """Final loss against the threshold (log-log); the unclipped result as a text note."""
    loss = _finite(sweep.final_loss)
    (line,) = ax.loglog(sweep.thresholds.numpy(), loss, "o-", color=COLORS["norm"],
                        label=f"clip by {sweep.clip}")
    base = ax.axhline(1 / 6, ls=":", color=GREY, label="predict the mean (1/6)")
    fate = (f"non-finite at step {sweep.unclipped.nonfinite_step}" if sweep.unclipped.diverged
            else f"final loss {sweep.unclipped.final_loss:.3g}")
    note = ax.text(0.02, 0.95, f"no clipping: {fate}", transform=ax.transAxes, va="top")
    ax.set_xlabel("threshold")
    ax.set_ylabel("mean loss, last 20 steps")
    ax.legend(loc="center left")
    return line, base, note


class TrainingExplorer(Explorer):
    figsize = (9, 5.5)
    slow = True  # retrains the RNN on every change

    def __init__(self, controls, steps: int = 300):
        self.steps = steps
        super().__init__(controls)

    def setup(self, fig):
        self.ax_loss, self.ax_norm = fig.subplots(2, 1, sharex=True)
        empty = clipping.TrainingRun(
            clip=None, max_norm=1.0, lr=1.0, losses=_NAN2, grad_norms=_NAN2,
            clipped_steps=_NONE, spike_steps=_NONE, nonfinite_step=None)
        self.artists = plot_training(self.ax_loss, self.ax_norm, empty, legend_all=True)
        for ax in (self.ax_loss, self.ax_norm):
            ax.set_xlim(0, self.steps)

    def update(self) -> None:
        # Without clipping the threshold changes nothing: grey it out rather than retrain.
        self.controls["threshold"].disabled = self.controls["clip"].value == "none"
        super().update()

    def _on_change(self, change) -> None:
        if change["owner"] is self.controls["threshold"] and self.controls["clip"].value == "none":
            return
        super()._on_change(change)

    def compute(self, clip, threshold, lr):
        mode = None if clip == "none" else clip
        self.progress.description = "training"
        return clipping.train_rnn(mode, threshold if mode else 1.0, lr=lr, steps=self.steps,
                                  progress=self.tick)

    def draw(self, r):
        steps = np.arange(len(r.losses))
        loss = _finite(r.losses)
        a = self.artists
        a["loss"].set_data(steps, loss)
        a["norm"].set_data(steps, _finite(r.grad_norms))
        idx = r.spike_steps.numpy()
        a["spikes"].set_offsets(np.column_stack([idx, loss[idx]]) if idx.size else np.empty((0, 2)))
        a["threshold"].set_ydata([r.max_norm, r.max_norm])
        a["threshold"].set_visible(r.clip is not None)
        a["nonfinite"].set_xdata([r.nonfinite_step or 0] * 2)
        a["nonfinite"].set_visible(r.diverged)
        for ax, values in ((self.ax_loss, loss), (self.ax_norm, _finite(r.grad_norms))):
            ok = values[np.isfinite(values) & (values > 0)]
            if r.clip is not None and ax is self.ax_norm:
                ok = np.append(ok, r.max_norm)
            if ok.size:
                ax.set_ylim(ok.min() / 2, ok.max() * 2)
        # .3g: the sliders' own readout, so the status repeats what the reader set
        how = "no clipping" if r.clip is None else f"clip by {r.clip} at {r.max_norm:.3g}"
        end = (f"<b style='color:#c00'>non-finite at step {r.nonfinite_step}</b>" if r.diverged
               else f"final loss <b>{r.final_loss:.4f}</b>")
        return (f"{how}, lr {r.lr:.3g}: max |grad| {r.max_grad_norm:.3g}, "
                f"{len(r.clipped_steps)} steps clipped, {len(r.spike_steps)} spikes, {end}")


def explore_training(clip: str = "none", threshold: float = 1.0, lr: float = 0.3,
                     steps: int = 300):
    """Clipping mode, threshold and learning rate -> loss and gradient norm per step.

    Each change retrains the toy RNN (a fraction of a second), so the sliders only fire on
    release (``continuous_update=False``) and a progress bar shows the run.
    """
    if clip not in ("none", "norm", "value"):
        raise ValueError(f"clip must be 'none', 'norm' or 'value', got {clip!r}")
    style = {"description_width": "initial"}
    return TrainingExplorer({
        "clip": widgets.ToggleButtons(options=["none", "norm", "value"], value=clip,
                                      description="clip"),
        "threshold": grid_slider(threshold, log=True, min=-2, max=1, step=0.05,
                                            description="threshold", continuous_update=False,
                                            readout_format=".3g", style=style),
        "lr": grid_slider(lr, log=True, min=-2, max=0, step=0.05,
                                     description="learning rate", continuous_update=False,
                                     readout_format=".3g", style=style),
    }, steps=steps)
