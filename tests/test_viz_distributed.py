"""numlab.viz.distributed: plots on their returned artists, widgets headless.

No worker launches here: the DDP plot gets results built from one-process computations,
and the BatchNorm widget a cheap stand-in runner (the launches are tested in
test_distributed.py); what is tested is the drawing and the widgets' caching.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from numlab import distributed as nd
from numlab.distributed import batchnorm, ddp
from numlab.viz import distributed as vd
from numlab.viz import new_figure


def _ddp_like(dtype: str) -> nd.DDPEquivalence:
    """A DDPEquivalence from one process: full-batch vs DDP's order of additions, emulated."""
    kw = ddp._prepare_ddp(2, dtype=dtype, steps=3)
    single = ddp._reference_ddp(**kw, emulate=False)
    emulated = ddp._reference_ddp(**kw, emulate=True)
    return nd.DDPEquivalence(2, str(kw["dtype"]).removeprefix("torch."), kw["global_batch"],
                             (single - emulated).abs().amax(1).double().numpy(),
                             np.zeros(3), float(single.abs().max()),
                             torch.finfo(kw["dtype"]).eps, True)


def test_plot_ddp_differences_draws_each_result_and_its_eps_line():
    fp32, fp64 = _ddp_like("fp32"), _ddp_like("fp64")
    ax = new_figure().add_subplot()
    artists = vd.plot_ddp_differences(ax, fp32, fp64)
    assert len(artists) == 4
    line32, eps32, line64, _ = artists
    shown = np.where(fp32.max_diff > 0, fp32.max_diff, np.nan)
    np.testing.assert_array_equal(line32.get_ydata(), shown)
    np.testing.assert_array_equal(line32.get_xdata(), [1, 2, 3])
    assert eps32.get_ydata()[0] == pytest.approx(fp32.eps * fp32.param_scale)
    assert line64.get_label() == "fp64, 2 workers"
    assert ax.get_yscale() == "log"


def test_plot_stale_curves_and_reuse():
    ax = new_figure().add_subplot()
    run = nd.stale_sgd(2, 0.8, steps=50)
    lines = vd.plot_stale_curves(ax, run)
    np.testing.assert_allclose(lines[0].get_ydata(), run.loss_sync)
    assert np.max(lines[1].get_ydata()) <= 1e30  # overflowed losses clipped, still drawn
    other = nd.stale_sgd(1, 0.3, steps=50)
    again = vd.plot_stale_curves(ax, other, lines)
    assert again == lines
    np.testing.assert_allclose(lines[1].get_ydata(), other.loss_stale)
    assert lines[1].get_label() == "stale, k = 1"


def test_plot_stale_map_shows_divergence_and_theory():
    sweep = nd.stale_sweep(np.geomspace(0.05, 2.5, 30), range(5), steps=100)
    ax = new_figure().add_subplot()
    mesh, theory = vd.plot_stale_map(ax, sweep)
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(30, 5),
                                  sweep.diverged.astype(float))
    assert theory.get_ydata()[0] == pytest.approx(2.0)
    assert theory.get_ydata()[-1] == pytest.approx(nd.critical_lr(4))


def _fake_sweep(world_size, batches, steps=3):
    # local stand-in: one process with batch b; "synchronised": one process with world * b
    local = [batchnorm._bn_train_single(b, steps, 0.05, 0, 100) for b in batches]
    sync = [batchnorm._bn_train_single(world_size * b, steps, 0.05, 0, 100) for b in batches]
    return nd.BatchNormSweep(world_size, tuple(batches), np.array([a for a, _ in local]),
                             np.array([a for a, _ in sync]), np.array([x for _, x in local]),
                             np.array([x for _, x in sync]), steps)


def test_plot_batchnorm_lines():
    sweep = _fake_sweep(2, (2, 4, 8))
    ax = new_figure().add_subplot()
    local, sync = vd.plot_batchnorm(ax, sweep)
    np.testing.assert_allclose(local.get_ydata(), 100 * sweep.acc_local)
    np.testing.assert_allclose(sync.get_xdata(), [2, 4, 8])


@pytest.mark.parametrize("call", [
    lambda ax: vd.plot_ddp_differences(ax),
    lambda ax: vd.plot_ddp_differences(ax, "fp32"),
    lambda ax: vd.plot_stale_curves(ax, None),
    lambda ax: vd.plot_stale_map(ax, nd.stale_sgd(1, 0.1, steps=3)),
    lambda ax: vd.plot_batchnorm(ax, {}),
])
def test_plots_refuse_wrong_results(call):
    with pytest.raises(TypeError, match="must be"):
        call(new_figure().add_subplot())


def test_explore_staleness_updates_result_artists_and_image():
    e = vd.explore_staleness(lr=0.8, staleness=2)
    assert e.error is None
    assert e.result.staleness == 2 and e.result.diverged
    assert "diverges" in e.status.value
    png, y_before = e.image.value, e.lines[1].get_ydata().copy()
    e.controls["lr"].value = 0.3
    assert e.error is None and e.result.lr == pytest.approx(0.3)
    assert not e.result.diverged and "stale converges" in e.status.value
    assert not np.array_equal(e.lines[1].get_ydata(), y_before)
    assert e.image.value != png
    e.controls["staleness"].value = 6
    assert e.result.staleness == 6
    assert list(e.marker.get_xdata()) == [6]


def test_explore_batchnorm_trains_each_worker_count_once():
    calls = []

    def runner(world_size, batches):
        calls.append(world_size)
        return _fake_sweep(world_size, batches)

    e = vd.explore_batchnorm(per_device_batch=2, world_size=2, batches=(2, 4, 8), runner=runner)
    assert e.error is None and calls == [2]
    assert e.slow and not vd.explore_staleness().slow
    sweep, i = e.result
    assert sweep.world_size == 2 and i == 0
    assert "per-device batch 2" in e.status.value
    png = e.image.value
    e.controls["per_device_batch"].value = 8
    assert calls == [2] and e.result[1] == 2  # cached: no training
    np.testing.assert_allclose(e.here.get_xdata(), [8, 8])
    e.controls["world_size"].value = 4
    assert calls == [2, 4] and e.result[0].world_size == 4
    e.controls["world_size"].value = 2
    assert calls == [2, 4]
    assert e.image.value != png


def test_explore_batchnorm_trains_ahead_once_a_browser_shows_it():
    # Without a browser nothing starts; once the figure reports its shown size, the worker
    # count not given trains in the background, and a click on it waits for that training
    # (the bar moving) instead of launching a second one.
    calls, release = [], threading.Event()

    def runner(world_size, batches):
        calls.append((world_size, threading.current_thread().name))
        assert release.wait(10)
        return _fake_sweep(world_size, batches)

    e = vd.explore_batchnorm(precomputed=_fake_sweep(2, (2, 4, 8, 32)), runner=runner)
    if "width_px" not in e.image.trait_names():
        pytest.skip("ipywidgets 7 / no anywidget: the plain Image reports no size")
    time.sleep(0.2)
    assert calls == [] and e.ahead == {}
    seen = []
    e.progress.observe(lambda change: seen.append(change["new"]), names="value")
    e.image.width_px = 700  # what the browser's ResizeObserver sends
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [w for w, _ in calls] == [4] and calls[0][1].startswith("numlab-ahead")
    e.expected_s = 0.5
    threading.Timer(0.6, release.set).start()
    e.controls["world_size"].value = 4  # waits for the background run
    assert e.error is None and e.result[0].world_size == 4
    assert [w for w, _ in calls] == [4]  # trained once, in the background
    assert any(0 < v < 100 for v in seen) and seen[-1] == e.progress.max  # it moved, then ended
    e.image.width_px = 800
    assert set(e.ahead) == {4}  # nothing started twice


def test_explore_batchnorm_starts_from_precomputed_without_training():
    def runner(world_size, batches):
        raise AssertionError("should not train")

    e = vd.explore_batchnorm(precomputed=_fake_sweep(2, (2, 4, 8, 32)), runner=runner)
    assert e.error is None and e.result[0].world_size == 2


def test_explore_batchnorm_shows_runner_errors():
    def runner(world_size, batches):
        raise nd.WorkerError(1, "RuntimeError: planted")

    e = vd.explore_batchnorm(runner=runner)
    assert isinstance(e.error, nd.WorkerError) and "planted" in e.status.value


@pytest.mark.parametrize("kwargs, match", [
    ({"per_device_batch": 3}, "per_device_batch"),
    ({"world_size": 3}, "world_size"),
    ({"precomputed": ["x"]}, "precomputed"),
])
def test_explore_batchnorm_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vd.explore_batchnorm(runner=lambda *a: None, **kwargs)
