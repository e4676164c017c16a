"""Drawing the NaN hunt: per-layer norms, and loss curves of look-alike pathologies."""
from __future__ import annotations

import functools

import ipywidgets as widgets
import numpy as np

from numlab import debugging as dbg
from numlab.viz._explorer import Explorer, grid_slider
from numlab.viz.palette import BLACK, BLUE, GREEN, MARKERS, ORANGE, PURPLE, SKY, VERMILLION

TRAIN, VAL, FRESH, BAD = BLUE, ORANGE, GREEN, VERMILLION
QUIET = (BLUE, GREEN, PURPLE, SKY, BLACK, ORANGE)  # the odd layer out is BAD
_LABELS = {"grad": "|gradient|", "weight": "|weight|", "ratio": "|gradient| / |weight|"}


def _positive(values):
    """Log axes cannot show 0, inf or NaN: hide those points instead of warning."""
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


# --- static plots ----------------------------------------------------------------------------
def plot_norms(ax, history: dbg.NormHistory, what: str = "ratio", highlight: str | None = "auto"):
    """One line per layer over the logged steps, log scale; the odd layer out drawn in red.

    ``what`` is ``"grad"``, ``"weight"`` or ``"ratio"`` (gradient norm over weight norm).
    ``highlight="auto"`` picks :meth:`NormHistory.outlier`; a layer name picks that one;
    ``None`` highlights nothing. Returns ``{layer name: Line2D}``.
    """
    if not isinstance(history, dbg.NormHistory):
        raise TypeError(f"history must be a NormHistory (GradNormLogger.history), got "
                        f"{type(history).__name__}")
    if what not in _LABELS:
        raise ValueError(f"what must be one of {list(_LABELS)}, got {what!r}")
    if highlight == "auto":
        highlight = history.outlier(what)
    elif highlight is not None and highlight not in history.layers:
        raise ValueError(f"highlight must be 'auto', None or one of {list(history.layers)}, "
                         f"got {highlight!r}")
    values = {"grad": history.grad, "weight": history.weight, "ratio": history.ratio}[what]
    lines = {}
    for j, name in enumerate(history.layers):
        odd = name == highlight
        (lines[name],) = ax.plot(history.steps, _positive(values[:, j]), ms=4,
                                 marker="X" if odd else MARKERS[j % len(MARKERS)],
                                 color=BAD if odd else QUIET[j % len(QUIET)],
                                 lw=3.0 if odd else 1.5, zorder=3 if odd else 2,
                                 label=f"layer {name}" + ("  <- odd one out" if odd else ""))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(_LABELS[what])
    ax.legend(loc="best")
    ax.grid(True, which="major", alpha=0.3)
    return lines


def plot_curves(ax, run: dbg.CurveRun, fresh: bool = True):
    """Training, validation (and fresh held-out) loss of a :class:`CurveRun`, log scale.

    Returns ``{"train", "val", "fresh", "stop"}`` artists (``"stop"`` marks where NanGuard
    stopped the run; hidden when it did not).
    """
    if not isinstance(run, dbg.CurveRun):
        raise TypeError(f"run must be a CurveRun (from pathology_run), got {type(run).__name__}")
    (train,) = ax.plot(run.steps, _positive(run.train_loss), color=TRAIN, label="train")
    (val,) = ax.plot(run.steps, _positive(run.val_loss), "--", color=VAL, label="validation")
    (new,) = ax.plot(run.steps, _positive(run.fresh_loss), ":", color=FRESH,
                     label="fresh held-out", visible=fresh)
    stopped = run.stopped_at is not None
    stop = ax.axvline(run.stopped_at if stopped else 0, color=BAD, ls="-.", lw=1.5,
                      label="NanGuard stop" if stopped else "_nolegend_", visible=stopped)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.legend(loc="best")
    ax.grid(True, which="major", alpha=0.3)
    return {"train": train, "val": val, "fresh": new, "stop": stop}


# --- widgets -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _cached_run(pathology: str, seed: int) -> dbg.CurveRun:
    # A run takes about half a second: revisiting a choice must be instant on a projector.
    return dbg.pathology_run(pathology, seed=seed)


class PathologyExplorer(Explorer):
    """Pick a pathology: train / validation / fresh loss, per-layer gradient norms, verdict."""

    figsize = (10, 4.4)
    slow = True

    def setup(self, fig):
        self.ax_loss, self.ax_norm = fig.subplots(1, 2)
        self.lines = {
            "train": self.ax_loss.plot([], [], color=TRAIN, label="train")[0],
            "val": self.ax_loss.plot([], [], "--", color=VAL, label="validation")[0],
            "fresh": self.ax_loss.plot([], [], ":", color=FRESH, label="fresh held-out")[0],
        }
        # not in the legend: the status line says where NanGuard stopped a run
        self.stop = self.ax_loss.axvline(0, color=BAD, ls="-.", lw=1.5, visible=False)
        self.ax_loss.set(yscale="log", xlabel="step", ylabel="cross-entropy loss")
        self.ax_loss.legend(loc="lower left")
        self.layer_lines = [self.ax_norm.plot([], [], marker=m, ms=4, color=c, label=f"layer {name}")[0]
                            for name, c, m in zip(("0", "2", "4"), QUIET, MARKERS, strict=False)]
        self.ax_norm.set(yscale="log", xlabel="step", ylabel="|gradient| per layer")
        self.ax_norm.legend(loc="lower left")
        for ax in (self.ax_loss, self.ax_norm):
            ax.grid(True, alpha=0.3)

    def compute(self, pathology, seed, fresh):
        self.status.value = "<i>training ...</i>"  # visible while the run trains
        return _cached_run(pathology, int(seed))

    def draw(self, run):
        for key in ("train", "val", "fresh"):
            self.lines[key].set_data(run.steps, _positive(getattr(run, f"{key}_loss")))
        self.lines["fresh"].set_visible(self.controls["fresh"].value)
        self.stop.set_visible(run.stopped_at is not None)
        if run.stopped_at is not None:
            self.stop.set_xdata([run.stopped_at, run.stopped_at])
        hist = run.norms
        for j, line in enumerate(self.layer_lines):
            line.set_data(hist.steps, _positive(hist.grad[:, j]))
        for ax in (self.ax_loss, self.ax_norm):
            ax.relim()
            ax.autoscale_view()
        self.ax_loss.set_title(run.pathology)
        d = run.diagnosis
        facts = (f"overlap {run.overlap:.0%}, input shift {run.shift:.2g} std, "
                 f"max |logit| {np.nanmax(run.max_logit):.3g}")
        if run.stopped_at is not None:
            facts += f", NanGuard stopped at step {run.stopped_at}"
        symptom = "yes" if run.symptom else "no"
        return (f"<b>verdict: {d.verdict}</b> &mdash; {d.reason}<br>{facts}; "
                f"'train falls, validation diverges': {symptom}")


def explore_pathologies(pathology: str = "overfitting", seed: int = 0, fresh: bool = True):
    """Five small training runs that look alike on one curve, and the signal that separates them."""
    if pathology not in dbg.PATHOLOGIES:
        raise ValueError(f"pathology must be one of {dbg.PATHOLOGIES}, got {pathology!r}")
    return PathologyExplorer({
        "pathology": widgets.Dropdown(options=list(dbg.PATHOLOGIES), value=pathology,
                                      description="run"),
        "seed": widgets.IntSlider(value=seed, min=0, max=9, description="seed",
                                  continuous_update=False),
        "fresh": widgets.Checkbox(value=fresh, description="show fresh held-out set"),
    })


@functools.lru_cache(maxsize=64)
def _cached_misinit(bad_layer: int, log_scale: float) -> dbg.MisinitRun:
    return dbg.misinit_run(bad_layer=bad_layer, scale=10.0**log_scale)


class NormExplorer(Explorer):
    """Shrink one layer's initial weights and watch its gradient-to-weight ratio stand out."""

    figsize = (10, 4.2)
    slow = True

    def setup(self, fig):
        self.ax_grad, self.ax_ratio = fig.subplots(1, 2)
        self.lines = {}
        for ax, what in ((self.ax_grad, "grad"), (self.ax_ratio, "ratio")):
            self.lines[what] = [ax.plot([], [], marker=m, ms=4, color=c, label=f"layer {n}")[0]
                                for n, c, m in zip(("0", "2", "4", "6"), QUIET, MARKERS, strict=False)]
            ax.set(yscale="log", xlabel="step", ylabel=_LABELS[what])
            ax.grid(True, alpha=0.3)
        self.ax_ratio.legend(loc="upper right")

    def compute(self, bad_layer, log_scale):
        return _cached_misinit(int(bad_layer), round(float(log_scale), 2))

    def draw(self, run):
        hist = run.history
        flagged = run.flagged
        for what, values in (("grad", hist.grad), ("ratio", hist.ratio)):
            for j, line in enumerate(self.lines[what]):
                odd = hist.layers[j] == flagged
                line.set_data(hist.steps, _positive(values[:, j]))
                line.set_color(BAD if odd else QUIET[j])
                line.set_linewidth(3.0 if odd else 1.5)
        for ax in (self.ax_grad, self.ax_ratio):
            ax.relim()
            ax.autoscale_view()
        head = f"layer {run.bad_layer} initial weights x {run.scale:.0e}: "
        if flagged is None:
            return head + "no layer's ratio strays 1.5 decades from the others"
        verdict = "the bad one" if flagged == run.bad_layer else "not the bad one"
        return head + f"the ratio singles out layer <b>{flagged}</b> ({verdict})"


def explore_norms(bad_layer: int = 2, log_scale: float = -3.0):
    """A 4-layer ReLU MLP with one layer's initial weights scaled by 10**log_scale."""
    if isinstance(bad_layer, bool) or bad_layer not in (0, 1, 2, 3):
        raise ValueError(f"bad_layer must be 0, 1, 2 or 3, got {bad_layer!r}")
    if not (isinstance(log_scale, int | float) and -6 <= log_scale <= 0):
        raise ValueError(f"log_scale must be a number in [-6, 0], got {log_scale!r}")
    return NormExplorer({
        "bad_layer": widgets.Dropdown(options=[("layer 0", 0), ("layer 2", 1), ("layer 4", 2),
                                               ("layer 6", 3)], value=bad_layer,
                                      description="bad layer"),
        "log_scale": grid_slider(log_scale, min=-6, max=0, step=0.5,
                                         description="log10 scale", continuous_update=False),
    })
