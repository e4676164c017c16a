"""numlab.viz.clipping: plots on returned artists, widgets driven headless."""
import math

import numpy as np
import pytest
import torch

from numlab import clipping
from numlab.viz import new_figure
from numlab.viz.clipping import (
    explore_clipping,
    explore_depth,
    explore_training,
    plot_clip_2d,
    plot_depth,
    plot_threshold_sweep,
    plot_training,
)


def test_plot_depth_draws_measured_and_predicted():
    r = clipping.gradient_norms_by_depth(20, 16, 1.2, "linear", dtype=torch.float64)
    ax = new_figure().add_subplot()
    measured, predicted = plot_depth(ax, r)
    np.testing.assert_allclose(measured.get_ydata(), r.norms.numpy())
    np.testing.assert_allclose(predicted.get_ydata(), r.predicted.numpy())
    assert ax.get_yscale() == "log" and len(measured.get_xdata()) == 21


def test_plot_clip_2d_draws_circle_box_and_three_arrows():
    r = clipping.clip_comparison(torch.tensor([2.0, 1.0]), max_norm=1.5, clip_value=0.5)
    ax = new_figure().add_subplot()
    a = plot_clip_2d(ax, r)
    assert a["circle"].get_radius() == 1.5
    assert a["box"].get_width() == 1.0 and a["box"].get_xy() == (-0.5, -0.5)
    tip = a["norm"].get_path().vertices.max(axis=0)
    assert tip[0] == pytest.approx(1.5 * 2 / math.sqrt(5), abs=0.05)
    with pytest.raises(ValueError, match="2-D"):
        plot_clip_2d(ax, clipping.clip_comparison(torch.ones(3), 1.0))


def test_plot_training_marks_the_non_finite_step_only_when_there_is_one():
    bad = clipping.train_rnn(None, steps=40)
    good = clipping.train_rnn("norm", 1.0, steps=30)
    fig = new_figure()
    a = plot_training(*fig.subplots(2, 1), bad)
    assert a["nonfinite"].get_visible() and a["nonfinite"].get_xdata()[0] == bad.nonfinite_step
    assert not a["threshold"].get_visible()
    assert len(a["spikes"].get_offsets()) == len(bad.spike_steps) > 0
    b = plot_training(*new_figure().subplots(2, 1), good)
    assert not b["nonfinite"].get_visible() and b["threshold"].get_visible()
    labels = [t.get_text() for t in b["norm"].axes.get_legend().get_texts()]
    assert "threshold" in labels and "first non-finite step" not in labels
    bad_labels = [t.get_text() for t in a["norm"].axes.get_legend().get_texts()]
    assert "first non-finite step" in bad_labels and "threshold" not in bad_labels
    np.testing.assert_allclose(b["norm"].get_ydata(), good.grad_norms.numpy())


def test_plot_threshold_sweep():
    s = clipping.threshold_sweep((0.25, 1.0), steps=40)
    line, base, note = plot_threshold_sweep(new_figure().add_subplot(), s)
    np.testing.assert_allclose(line.get_xdata(), [0.25, 1.0])
    np.testing.assert_allclose(line.get_ydata(), s.final_loss.numpy())
    assert "non-finite at step" in note.get_text()
    assert base.get_ydata()[0] == pytest.approx(1 / 6)


def test_explore_depth_responds_to_every_control():
    w = explore_depth(depth=30, gain=1.1)
    assert w.error is None and w.result.depth == 30
    png, y = w.image.value, w.measured.get_ydata().copy()
    w.controls["gain"].value = 0.9
    assert w.error is None and w.result.gain == pytest.approx(0.9)
    assert w.result.input_norm == pytest.approx(0.9**30, rel=1e-4)
    assert not np.allclose(w.measured.get_ydata(), y) and w.image.value != png
    w.controls["depth"].value = 80
    assert len(w.measured.get_xdata()) == 81 and w.ax.get_xlim()[1] == pytest.approx(100.5)
    lo, hi = w.ax.get_ylim()
    assert lo <= float(w.result.norms.min()) and hi >= float(w.result.norms.max())
    w.controls["depth"].value = 200
    w.controls["gain"].value = 0.5  # 0.5**200 is below float32's smallest subnormal
    assert w.result.norms[0] == 0 and "underflow" in w.status.value
    w.controls["gain"].value = 1.0
    assert "underflow" not in w.status.value
    w.controls["nonlinearity"].value = "relu"
    assert w.result.nonlinearity == "relu" and "mean-field" in w.status.value
    assert "fitted rate" in w.status.value


def test_explore_clipping_moves_the_arrows_and_the_threshold_shapes():
    w = explore_clipping(gx=2.0, gy=1.0, threshold=1.0)
    assert w.error is None and w.result.cos_by_norm == pytest.approx(1.0)
    png = w.image.value
    tip = w.artists["value"].get_path().vertices.max(axis=0).copy()
    w.controls["threshold"].value = 0.5
    assert w.artists["circle"].get_radius() == 0.5
    assert w.artists["box"].get_width() == pytest.approx(1.0)
    assert w.result.norm_by_norm == pytest.approx(0.5, rel=1e-5)
    assert not np.allclose(w.artists["value"].get_path().vertices.max(axis=0), tip)
    assert "threshold 0.50" in w.status.value
    assert w.image.value != png
    w.controls["gy"].value = -2.0
    assert w.result.original.tolist() == [2.0, -2.0]
    assert w.result.cos_by_value == pytest.approx(1.0)  # on the diagonal both clips agree
    assert "cos" in w.status.value


def test_explore_training_retrains_on_change_and_reports_progress():
    w = explore_training(steps=40)
    assert all(not w.controls[k].continuous_update for k in ("threshold", "lr"))
    assert w.error is None and w.result.diverged
    assert w.artists["nonfinite"].get_visible()
    assert len(w.ax_norm.get_legend().get_texts()) == 3  # every entry, shown or not
    assert w.progress.value == 40 and w.progress in w.children
    png = w.image.value
    w.controls["clip"].value = "norm"
    assert w.error is None and w.result.clip == "norm" and not w.result.diverged
    assert not w.artists["nonfinite"].get_visible() and w.artists["threshold"].get_visible()
    assert "final loss" in w.status.value and w.image.value != png
    w.controls["threshold"].value = 0.25
    assert w.result.max_norm == pytest.approx(0.25)
    assert w.artists["threshold"].get_ydata()[0] == pytest.approx(0.25)
    w.controls["clip"].value = "value"
    assert w.result.clip == "value"


def test_explore_training_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="clip"):
        explore_training(clip="max")


def _pixels(w):
    return np.asarray(w.fig.canvas.buffer_rgba()).copy()


def _redrawn_plainly(w):
    """The current frame drawn from scratch: no kept background."""
    w._background_key = None
    w.render_png()
    return _pixels(w)


def test_explore_depth_fast_frames_match_a_plain_redraw():
    w = explore_depth(depth=30, gain=1.1)
    full_draws = []
    draw = w.fig.canvas.draw
    w.fig.canvas.draw = lambda: (full_draws.append(1), draw())
    w.controls["gain"].value = 0.5  # another y range: the y axis is redrawn, blitted
    w.controls["nonlinearity"].value = "tanh"
    assert full_draws == []
    np.testing.assert_array_equal(_pixels(w), _redrawn_plainly(w))
    full_draws.clear()
    w.controls["depth"].value = 120  # another x band: one full redraw, then blitted frames
    w.controls["gain"].value = 0.8
    assert len(full_draws) == 1
    np.testing.assert_array_equal(_pixels(w), _redrawn_plainly(w))


def test_explore_depth_computes_with_one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        w = explore_depth(depth=20)
        seen, compute = [], w.compute
        w.compute = lambda **v: (seen.append(torch.get_num_threads()), compute(**v))[1]
        w.controls["gain"].value = 0.9
        assert w.error is None and seen == [1]
        assert torch.get_num_threads() == 2  # restored after the update
    finally:
        torch.set_num_threads(before)
