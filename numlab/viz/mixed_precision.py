"""Drawing mixed precision: gradient magnitudes against the formats, and training runs."""
from __future__ import annotations

import functools

import ipywidgets as widgets
import numpy as np

from numlab import device as _device
from numlab import formats
from numlab import mixed_precision as mp
from numlab.viz._explorer import Explorer, grid_slider
from numlab.viz.palette import BLUE, GREY, ORANGE, SKY, VERMILLION

BANDS = {  # shading of the representable ranges
    "fp16_subnormal": ORANGE,
    "fp16_normal": SKY,
    "bf16": GREY,
}
COLORS = {"fp32": BLUE, "scaled": VERMILLION, "reference": GREY, "skipped": VERMILLION}


def _finite_positive(values) -> np.ndarray:
    values = np.asarray(values, dtype=float).ravel()
    return values[np.isfinite(values) & (values > 0)]


def plot_gradient_histogram(ax, mags: mp.GradientMagnitudes, bins: int = 60, scaled: bool = True):
    """|gradient| histogram on a log axis over the fp16 subnormal band, fp16 normals, bf16.

    ``mags`` comes from :func:`numlab.mixed_precision.gradient_magnitudes`. Draws the fp32
    magnitudes and (``scaled=True``) the same values times the loss scale. The dashed line
    is half of fp16's smallest subnormal: anything smaller rounds to zero in fp16.
    Returns a dict of the artists.
    """
    if not isinstance(mags, mp.GradientMagnitudes):
        raise TypeError(f"mags must be a GradientMagnitudes (from gradient_magnitudes()), got "
                        f"{type(mags).__name__}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    fp16, bf16 = formats.info("fp16"), formats.info("bf16")
    series = {"fp32": _finite_positive(mags.fp32)}
    if scaled:
        series["scaled"] = _finite_positive(mags.scaled)
    everything = np.concatenate(list(series.values()))
    lo = min(everything.min(), fp16.smallest_subnormal) / 10
    hi = max(everything.max(), fp16.tiny) * 10
    edges = np.geomspace(lo, hi, bins + 1)
    artists = {}
    ax.set_xscale("log")
    artists["bf16"] = ax.axvspan(bf16.smallest_subnormal, bf16.max, ymin=0, ymax=0.05,
                                 color=BANDS["bf16"], alpha=0.9, lw=0,
                                 label="bf16 range (subnormal..max), beyond this axis")
    artists["fp16_subnormal"] = ax.axvspan(fp16.smallest_subnormal, fp16.tiny,
                                           color=BANDS["fp16_subnormal"], alpha=0.35, lw=0,
                                           label="fp16 subnormal band")
    artists["fp16_normal"] = ax.axvspan(fp16.tiny, fp16.max, color=BANDS["fp16_normal"],
                                        alpha=0.25, lw=0, label="fp16 normal range")
    artists["flush"] = ax.axvline(fp16.smallest_subnormal / 2, color="k", ls="--", lw=1.2,
                                  label="fp16 rounds to 0 below")
    labels = {"fp32": "|grad| (fp32, unscaled)",
              "scaled": f"|grad| x 2**{np.log2(mags.scale):g} (scaled)"}
    for name, values in series.items():
        counts, _ = np.histogram(values, bins=edges)
        artists[name] = ax.stairs(100 * counts / len(values), edges, fill=True, alpha=0.6,
                                  color=COLORS[name], label=labels[name])
    ax.set_xlim(lo, hi)
    ax.set_xlabel("gradient magnitude")
    ax.set_ylabel("% of entries")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=10, frameon=False)
    return artists


def plot_run(axes, run: mp.TrainingRun, reference: mp.TrainingRun | None = None):
    """Loss, zero-gradient share and loss scale per step on three axes; returns the artists."""
    if not isinstance(run, mp.TrainingRun):
        raise TypeError(f"run must be a TrainingRun (from train()), got {type(run).__name__}")
    ax_loss, ax_zero, ax_scale = axes
    steps = np.arange(run.steps)
    artists = {}
    if reference is not None:
        (artists["reference"],) = ax_loss.plot(np.arange(reference.steps), _clean(reference.loss),
                                               "--", color=COLORS["reference"], label="fp32 reference")
    (artists["loss"],) = ax_loss.plot(steps, _clean(run.loss), color=COLORS["fp32"],
                                      label=run.precision)
    (artists["zero"],) = ax_zero.plot(steps, 100 * run.zero_fraction, color=COLORS["fp32"])
    (artists["scale"],) = ax_scale.step(steps, run.scale, where="post", color=COLORS["fp32"])
    (artists["skipped"],) = ax_scale.plot(run.skipped, run.scale[run.skipped], "x",
                                          color=COLORS["skipped"], ms=10, mew=2.5,
                                          label="skipped step")
    _style_run_axes(ax_loss, ax_zero, ax_scale)
    return artists


def _clean(values) -> np.ndarray:
    # inf and NaN losses (a run ruined by an overflow) are left as gaps in the curve.
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _style_run_axes(ax_loss, ax_zero, ax_scale):
    ax_loss.set_yscale("log")
    ax_loss.set_title("training loss (MSE)")
    ax_loss.set_xlabel("step")
    ax_loss.legend(loc="lower left", frameon=False)
    ax_zero.set_title("gradients flushed to 0")
    ax_zero.set_ylabel("% of entries")
    ax_zero.set_xlabel("step")
    ax_zero.set_ylim(-3, 103)
    ax_scale.set_yscale("log", base=2)
    ax_scale.set_title("loss scale")
    ax_scale.set_xlabel("step")
    ax_scale.legend(loc="lower right", frameon=False)


class MixedPrecisionExplorer(Explorer):
    """Train the demo model in one precision, with or without a GradScaler, and watch."""

    figsize = (10, 3.5)
    slow = True  # trains on every change (a few hundred ms), with a progress bar
    steps = 80
    growth_interval = 10
    overflow_step = 40

    def setup(self, fig):
        # Fixed margins instead of constrained layout: the layout pass took about 0.3 s of
        # each update here, and the artists' extents hardly change between toggles.
        fig.set_layout_engine("none")
        margins = {"left": 0.075, "right": 0.99, "bottom": 0.15, "top": 0.91, "wspace": 0.28}
        self.axes = fig.subplots(1, 3, gridspec_kw=margins)
        empty = mp.TrainingRun(
            precision="fp32", device="cpu", scaler=False, loss=np.ones(1), scale=np.ones(1),
            skipped=[], zero_fraction=np.zeros(1), grad_sample=np.zeros(1), step_ms=np.zeros(1),
            loss_scale=1.0, init_scale=1.0, growth_interval=1,
        )
        self.artists = plot_run(self.axes, empty, reference=empty)  # artists made once

    def compute(self, precision, scaler, device, loss_scale, overflow):
        device = _device.pick(device).type  # one cache entry per real device
        _reference(device, float(loss_scale), self.steps)  # trained before the bar moves
        self.progress.description = f"training {precision}"
        return mp.train(
            precision, scaler=scaler, device=device, steps=self.steps, loss_scale=loss_scale,
            growth_interval=self.growth_interval,
            overflow_at=(self.overflow_step,) if overflow else (),
            progress=lambda step: self.tick(step + 1, self.steps),
        )

    def draw(self, run):
        a, ref = self.artists, _reference(run.device, run.loss_scale, run.steps)
        steps = np.arange(run.steps)
        a["reference"].set_data(np.arange(ref.steps), _clean(ref.loss))
        a["loss"].set_data(steps, _clean(run.loss))
        a["loss"].set_label(f"{run.precision}" + (" + scaler" if run.scaler else ""))
        # fp32 without a scaler *is* the reference run: one line, one legend entry
        a["reference"].set_visible(run.precision != "fp32" or run.scaler)
        a["reference"].set_label("fp32 reference" if a["reference"].get_visible() else "_hidden")
        a["zero"].set_data(steps, 100 * run.zero_fraction)
        a["scale"].set_data(steps, run.scale)
        a["skipped"].set_data(run.skipped, run.scale[run.skipped])
        ax_loss, _, ax_scale = self.axes
        for ax in (ax_loss, ax_scale):
            ax.set_autoscaley_on(True)
            ax.relim()
            ax.autoscale_view()
        self.axes[1].set_xlim(-1, run.steps)
        ax_loss.legend(loc="lower left", frameon=False)
        if not run.scaler:
            ax_scale.set_ylim(0.5, 2)  # a flat 1.0: no scaler
        ax_scale.set_title("loss scale" if run.scaler else "loss scale (no scaler: 1)")
        final = run.loss[-1]
        return (
            f"<b>{run.precision}</b> on {run.device}, "
            f"{'GradScaler on' if run.scaler else 'no scaler'}: "
            f"{100 * run.zero_fraction[0]:.1f}% of gradient entries flushed to 0 at step 0 "
            f"(mean {100 * run.zero_fraction.mean():.1f}%); final loss {final:.3g} "
            f"(fp32: {ref.loss[-1]:.3g}); skipped steps: {run.skipped or 'none'}; "
            f"{run.median_step_ms:.2f} ms/step"
        )


@functools.lru_cache(maxsize=16)
def _reference(device: str, loss_scale: float, steps: int) -> mp.TrainingRun:
    """The fp32 run the others are compared with: it does not depend on the toggles."""
    return mp.train("fp32", device=device, steps=steps, loss_scale=loss_scale)


def explore_mixed_precision(precision="fp16", scaler=False, device="auto", loss_scale=1e-5,
                            overflow=False) -> MixedPrecisionExplorer:
    """Toggle precision, GradScaler, device and loss magnitude; watch loss, zeros, scale."""
    precision = mp.resolve_precision(precision)
    if not isinstance(scaler, bool):
        raise TypeError(f"scaler must be True or False, got {scaler!r}")
    if not isinstance(overflow, bool):
        raise TypeError(f"overflow must be True or False, got {overflow!r}")
    available = _device.available()
    if device not in ("auto", *available):
        raise ValueError(f"device must be one of {['auto', *available]} on this machine, got {device!r}")
    # Only real choices: "auto" and the device list mean something only with two or more
    # devices; with one, the dropdown shows it and cannot be changed.
    devices = ["auto", *available] if len(available) > 1 else available
    device = _device.pick(device).type if device not in devices else device
    if not (isinstance(loss_scale, int | float) and 1e-8 <= loss_scale <= 1):
        raise ValueError(f"loss_scale must be a number in [1e-8, 1], got {loss_scale!r}")
    controls = {
        "precision": widgets.ToggleButtons(options=list(mp.PRECISIONS), value=precision,
                                           description="precision",
                                           style={"button_width": "4.5em"}),
        "scaler": widgets.Checkbox(value=scaler, description="GradScaler", indent=False),
        "device": widgets.Dropdown(options=devices, value=device, description="device",
                                   disabled=len(devices) == 1, layout=widgets.Layout(width="12em")),
        "loss_scale": grid_slider(loss_scale, log=True, min=-8, max=0, step=0.5,
                                             description="loss ×", continuous_update=False,
                                             readout_format=".0e"),
        "overflow": widgets.Checkbox(
            value=overflow, indent=False,
            description=f"inject an overflow at step {MixedPrecisionExplorer.overflow_step}"),
    }
    return MixedPrecisionExplorer(controls)
