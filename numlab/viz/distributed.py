"""Figures and widgets for ``numlab.distributed``.

* :func:`plot_ddp_differences`: DDP vs one process, largest parameter difference per step.
* :func:`plot_stale_curves`, :func:`plot_stale_map`: loss curves of synchronous vs k-stale
  SGD, and the lr x staleness map of which runs diverge, with the theoretical boundary.
* :func:`plot_batchnorm`: test accuracy with local vs synchronised BatchNorm statistics.
* :func:`explore_staleness` (cheap, one process, the map computed once) and
  :func:`explore_batchnorm` (each worker count trains once, then every answer is cached).
"""
from __future__ import annotations

import concurrent.futures
import functools
import math
import time

import ipywidgets as widgets
import numpy as np
from matplotlib.ticker import NullLocator

from numlab import distributed as nd
from numlab.formats import short_name
from numlab.viz._explorer import Explorer, grid_slider
from numlab.viz.palette import BLUE, DASHES, GREEN, MARKERS, ORANGE, VERMILLION

COLORS = {"sync": BLUE, "stale": VERMILLION, "local": VERMILLION, "fp32": BLUE, "fp64": GREEN}


def plot_ddp_differences(ax, *results: nd.DDPEquivalence):
    """Per step, max |DDP - one process| for each result, with eps x max|w| as a dashed line."""
    if not results or not all(isinstance(r, nd.DDPEquivalence) for r in results):
        raise TypeError("results must be one or more DDPEquivalence (from ddp_equivalence)")
    artists = []
    for r, marker, dash in zip(results, MARKERS, DASHES[1:], strict=False):
        name = short_name(r.dtype)
        color = COLORS.get(name, None)
        steps = np.arange(1, r.steps + 1)
        # exact zeros cannot sit on a log axis: draw them at the bottom of the panel
        shown = np.where(r.max_diff > 0, r.max_diff, np.nan)
        (line,) = ax.semilogy(steps, shown, marker=marker, ls="-", color=color,
                              label=f"{name}, {r.world_size} workers")
        ref = ax.axhline(r.eps * r.param_scale, color=line.get_color(), ls=dash, lw=1.5,
                         label=f"{name}: eps x max|w|")
        artists += [line, ref]
    ax.set_xlabel("training step")
    ax.set_ylabel("max |w_DDP - w_single|")
    ax.set_title("DDP on shards vs one process on the whole batch")
    ax.legend(loc="best")
    return artists


def plot_stale_curves(ax, run: nd.StaleRun, lines=None):
    """Loss curves of the synchronous and the stale run (log scale); reuses ``lines``."""
    if not isinstance(run, nd.StaleRun):
        raise TypeError(f"run must be a StaleRun (from stale_sgd), got {type(run).__name__}")
    steps = np.arange(len(run.loss_sync))
    # Clip overflowed losses so the divergent curve runs off the top instead of vanishing.
    sync, stale = (np.minimum(np.nan_to_num(c, posinf=1e30), 1e30)
                   for c in (run.loss_sync, run.loss_stale))
    if lines is None:
        (a,) = ax.semilogy(steps, sync, color=COLORS["sync"], label="synchronous (k = 0)")
        (b,) = ax.semilogy(steps, stale, "--", color=COLORS["stale"], label=f"stale, k = {run.staleness}")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_ylim(1e-4, 1e4)
        ax.legend(loc="lower right")
        lines = (a, b)
    else:
        lines[0].set_data(steps, sync)
        lines[1].set_data(steps, stale)
        lines[1].set_label(f"stale, k = {run.staleness}")
        ax.legend(loc="lower right")
        ax.set_xlim(0, steps[-1])
    ax.set_title(f"lr = {run.lr:.3g}")
    return list(lines)


def plot_stale_map(ax, sweep: nd.StaleSweep):
    """Diverged (dark) vs converged runs over lr x staleness, and 2 sin(pi/(4k+2)) / lambda_max."""
    if not isinstance(sweep, nd.StaleSweep):
        raise TypeError(f"sweep must be a StaleSweep (from stale_sweep), got {type(sweep).__name__}")
    ks, lrs = sweep.staleness, sweep.lrs
    k_edges = np.concatenate([ks - 0.5, [ks[-1] + 0.5]])
    log_lr = np.log(lrs)
    mids = np.exp((log_lr[1:] + log_lr[:-1]) / 2)
    lr_edges = np.concatenate([[lrs[0] ** 2 / mids[0]], mids, [lrs[-1] ** 2 / mids[-1]]])
    mesh = ax.pcolormesh(k_edges, lr_edges, sweep.diverged.astype(float), cmap="Greys",
                         vmin=0, vmax=1.6, shading="flat")
    fine = np.linspace(ks[0], ks[-1], 200)
    (theory,) = ax.plot(fine, [2 * math.sin(math.pi / (2 * (2 * k + 1))) for k in fine],
                        color=ORANGE, lw=2.5, label="theory: 2 sin(pi/(4k+2))")
    ax.set_yscale("log")
    ax.set_xlabel("staleness k (steps)")
    ax.set_ylabel("learning rate")
    ax.set_title("grey: diverges")
    ax.legend(loc="lower left")
    return [mesh, theory]


def plot_batchnorm(ax, sweep: nd.BatchNormSweep):
    """Test accuracy vs per-device batch, local and synchronised BatchNorm statistics."""
    if not isinstance(sweep, nd.BatchNormSweep):
        raise TypeError(f"sweep must be a BatchNormSweep (from batchnorm_sync), "
                        f"got {type(sweep).__name__}")
    b = np.array(sweep.per_device_batch)
    (local,) = ax.plot(b, 100 * sweep.acc_local, "o-", color=COLORS["local"],
                       label="local BatchNorm (own shard)")
    (sync,) = ax.plot(b, 100 * sweep.acc_sync, "s-", color=COLORS["sync"],
                      label="synchronised BatchNorm")
    ax.set_xscale("log", base=2)
    ax.set_xticks(b, [str(v) for v in b])
    ax.set_xlabel("per-device batch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{sweep.world_size} workers, {sweep.steps} steps")
    ax.legend(loc="lower right")
    return [local, sync]


# --- widgets ---------------------------------------------------------------------------


class StalenessExplorer(Explorer):
    figsize = (11, 4.2)

    def __init__(self, controls, sweep: nd.StaleSweep, steps: int):
        self.sweep = sweep
        self.steps = steps
        super().__init__(controls)
        # Axes limits and tick labels never change after the first render, so the layout
        # computed then is final: skipping constrained layout on every update, and the log
        # axes' minor ticks, cuts the render time about 2.5x (lecture use needs speed).
        self.fig.set_layout_engine("none")

    def setup(self, fig):
        self.ax_curves, self.ax_map = fig.subplots(1, 2, width_ratios=[1.3, 1])
        self.lines = plot_stale_curves(self.ax_curves, nd.stale_sgd(1, 0.1, steps=self.steps))
        self.ax_curves.set_xlim(0, len(self.lines[0].get_xdata()) - 1)  # as an update sets it
        plot_stale_map(self.ax_map, self.sweep)
        (self.marker,) = self.ax_map.plot([], [], "*", ms=18, color=VERMILLION, mec="white")
        for ax in (self.ax_curves, self.ax_map):
            ax.yaxis.set_minor_locator(NullLocator())
        # Blitting: the map, the axes and their ticks never move; the curves, the star, the
        # title (lr) and the legend (k) are redrawn over them on each change.
        self.legend = self.ax_curves.get_legend()
        self.animate(*self.lines, self.marker, self.ax_curves.title, self.legend)

    def background_key(self):
        return (self.ax_curves.get_xlim(), self.ax_curves.get_ylim())

    def compute(self, lr, staleness):
        return nd.stale_sgd(staleness, lr, steps=self.steps)

    def draw(self, r):
        steps = np.arange(len(r.loss_sync))
        # as plot_stale_curves: overflowed losses run off the top instead of vanishing
        for line, loss in zip(self.lines, (r.loss_sync, r.loss_stale), strict=True):
            line.set_data(steps, np.minimum(np.nan_to_num(loss, posinf=1e30), 1e30))
        self.lines[1].set_label(f"stale, k = {r.staleness}")
        self.legend.get_texts()[1].set_text(f"stale, k = {r.staleness}")
        self.ax_curves.set_title(f"lr = {r.lr:.3g}")
        self.marker.set_data([r.staleness], [r.lr])
        verdict = {True: "<b style='color:#c00'>diverges</b>", False: "converges"}
        return (f"k = {r.staleness}: stale {verdict[r.diverged]}, synchronous "
                f"{verdict[r.sync_diverged]}; theory says stale is stable below lr = "
                f"{r.critical_lr:.3f}")


def explore_staleness(lr: float = 0.8, staleness: int = 2, steps: int = 200):
    """Sliders for lr and staleness: loss curves sync vs stale, and the divergence map."""
    sweep = nd.stale_sweep(np.geomspace(0.02, 2.5, 80), range(9), steps=steps)
    return StalenessExplorer({
        "lr": grid_slider(lr, log=True, min=math.log10(0.02),
                                     max=math.log10(2.5), step=0.01, description="lr",
                                     readout_format=".3f"),
        "staleness": widgets.IntSlider(value=staleness, min=0, max=8, description="staleness"),
    }, sweep, steps)


class BatchNormExplorer(Explorer):
    """Each worker count trains once (a launch of its processes, 10-20 s on a laptop).

    The reader should not wait on that after a click: as soon as a browser shows the widget
    (its figure reports the shown size), the worker counts not yet trained start training one
    after another in a background thread, and a click on one still training waits for it
    with the bar moving and the seconds counted. Without a browser (nbval, a script) nothing
    starts ahead, and a click trains then, as before."""

    figsize = (8, 4.2)
    slow = True  # a worker count not seen before launches processes and trains
    expected_s = 12.0  # what one launch and training of 4 took here; the bar's scale until one ends

    def __init__(self, controls, precomputed: dict, runner, batches):
        self.precomputed = precomputed  # {world_size: BatchNormSweep} the reader passed in
        # memoised like every other numlab cache: each worker count trains once
        self.runner = runner if runner is _train else functools.lru_cache(maxsize=None)(runner)
        self.batches = tuple(batches)
        self.ahead: dict[int, concurrent.futures.Future] = {}  # world_size -> training started
        super().__init__(controls)

    def _on_resize(self, change) -> None:
        super()._on_resize(change)
        self.start_ahead()

    def start_ahead(self) -> None:
        """Start training, in the background, every worker count not trained or started."""
        if self.fig is None:
            return
        for world_size in self.controls["world_size"].options:
            if world_size not in self.precomputed and world_size not in self.ahead:
                self.ahead[world_size] = _AHEAD.submit(self._timed, world_size)

    def _timed(self, world_size: int):
        start = time.perf_counter()
        sweep = self.runner(world_size, self.batches)
        self.expected_s = time.perf_counter() - start
        return sweep

    def _wait(self, future, world_size: int):
        # Visible progress while a background training ends: the bar moves with the time
        # spent against the time one took (never past 95 % before it ends).
        start = time.perf_counter()
        self.progress.max = 100
        while True:
            try:
                return future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                spent = time.perf_counter() - start
                self.progress.description = f"{world_size} workers {spent:.0f} s"
                self.progress.value = min(95, int(100 * spent / max(self.expected_s, 1.0)))

    def setup(self, fig):
        self.ax = fig.add_subplot()
        (self.local,) = self.ax.plot([], [], "o-", color=COLORS["local"],
                                     label="local BatchNorm (own shard)")
        (self.sync,) = self.ax.plot([], [], "s-", color=COLORS["sync"],
                                    label="synchronised BatchNorm")
        (self.here,) = self.ax.plot([], [], "o", ms=16, mfc="none", mec="k", mew=2)
        self.ax.set_xscale("log", base=2)
        self.ax.set_xticks(self.batches, [str(b) for b in self.batches])
        self.ax.set_xlabel("per-device batch")
        self.ax.set_ylabel("test accuracy (%)")
        self.ax.legend(loc="lower right")

    def compute(self, per_device_batch, world_size):
        sweep = self.precomputed.get(world_size)
        if sweep is None:
            self.progress.description = f"{world_size} workers"
            future = self.ahead.get(world_size)
            if future is None:
                sweep = self.runner(world_size, self.batches)
            else:
                sweep = self._wait(future, world_size)
        return sweep, sweep.per_device_batch.index(per_device_batch)

    def draw(self, result):
        sweep, i = result
        b = np.array(sweep.per_device_batch)
        self.local.set_data(b, 100 * sweep.acc_local)
        self.sync.set_data(b, 100 * sweep.acc_sync)
        self.here.set_data([b[i], b[i]], [100 * sweep.acc_local[i], 100 * sweep.acc_sync[i]])
        self.ax.relim()
        self.ax.autoscale_view()
        self.ax.set_title(f"{sweep.world_size} workers, global batch {sweep.world_size * b[i]}")
        gap = 100 * (sweep.acc_sync[i] - sweep.acc_local[i])
        return (f"per-device batch {b[i]}: local {100 * sweep.acc_local[i]:.1f}%, "
                f"synchronised {100 * sweep.acc_sync[i]:.1f}% ({gap:+.1f} points)")


# One background training at a time: two launches at once would share the cores and each
# take twice as long.
_AHEAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="numlab-ahead")


@functools.lru_cache(maxsize=8)
def _train(world_size: int, batches: tuple) -> nd.BatchNormSweep:
    return nd.batchnorm_sync(world_size, batches)


def explore_batchnorm(per_device_batch: int = 2, world_size: int = 2, precomputed=(),
                      batches=(2, 4, 8, 32), runner=None):
    """Per-device batch and worker count -> test accuracy, local vs synchronised BatchNorm.

    Each worker count trains once (one launch, every batch size in it) and is cached;
    pass sweeps you already have (``precomputed``) to start without any launch. Shown in a
    browser, the worker counts not given start training in the background at once.
    ``runner(world_size, batches) -> BatchNormSweep`` replaces the training (tests).
    """
    if isinstance(precomputed, nd.BatchNormSweep):
        precomputed = (precomputed,)
    given = {}
    for sweep in precomputed:
        if not isinstance(sweep, nd.BatchNormSweep) or tuple(sweep.per_device_batch) != tuple(
                batches):
            raise ValueError(f"precomputed must hold BatchNormSweep results for per-device "
                             f"batches {tuple(batches)}")
        given[sweep.world_size] = sweep
    if per_device_batch not in batches:
        raise ValueError(f"per_device_batch must be one of {tuple(batches)}, got "
                         f"{per_device_batch!r}")
    if world_size not in (2, 4):
        raise ValueError(f"world_size must be 2 or 4, got {world_size!r}")
    return BatchNormExplorer({
        "per_device_batch": widgets.SelectionSlider(options=list(batches), value=per_device_batch,
                                                    description="per-device batch",
                                                    continuous_update=False),
        "world_size": widgets.ToggleButtons(options=[2, 4], value=world_size,
                                            description="workers"),
    }, given, runner or _train, batches)
