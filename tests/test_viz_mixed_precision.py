"""The mixed-precision plots and explorer, headless (Agg)."""
import numpy as np
import pytest
import torch

from numlab import mixed_precision as mp
from numlab.viz import new_figure
from numlab.viz.mixed_precision import (
    MixedPrecisionExplorer,
    _reference,
    explore_mixed_precision,
    plot_gradient_histogram,
    plot_run,
)


@pytest.fixture(scope="module")
def mags():
    return mp.gradient_magnitudes(loss_scale=1e-5, scale=2.0**15)


@pytest.fixture(scope="module")
def explorer():
    return explore_mixed_precision(precision="fp16", scaler=False, loss_scale=1e-5)


def span_x(patch):
    # axvspan gives a Rectangle in data x (axes y) coordinates
    return patch.get_x(), patch.get_x() + patch.get_width()


# --- plot_gradient_histogram -----------------------------------------------------------------
def test_histogram_shades_the_formats_ranges(mags):
    ax = new_figure().add_subplot()
    artists = plot_gradient_histogram(ax, mags)
    fp16, bf16 = torch.finfo(torch.float16), torch.finfo(torch.bfloat16)
    sub = fp16.smallest_normal * fp16.eps  # smallest subnormal, from torch's own facts
    assert span_x(artists["fp16_subnormal"]) == pytest.approx((sub, fp16.smallest_normal))
    assert span_x(artists["fp16_normal"]) == pytest.approx((fp16.smallest_normal, fp16.max))
    assert span_x(artists["bf16"]) == pytest.approx(
        (bf16.smallest_normal * bf16.eps, bf16.max), rel=1e-6)
    assert artists["flush"].get_xdata()[0] == pytest.approx(sub / 2)
    assert ax.get_xscale() == "log"


def test_histogram_bars_hold_every_entry_before_and_after_scaling(mags):
    ax = new_figure().add_subplot()
    artists = plot_gradient_histogram(ax, mags, bins=40)
    for name, values in (("fp32", mags.fp32), ("scaled", mags.scaled)):
        data = artists[name].get_data()
        heights, edges = data.values, data.edges
        assert len(heights) == 40
        assert heights.sum() == pytest.approx(100.0)
        centre = np.sqrt(edges[:-1] * edges[1:])[np.argmax(heights)]
        assert 0.1 < centre / np.median(values) < 10  # the mode sits near the median
    np.testing.assert_array_equal(artists["scaled"].get_data().edges,
                                  artists["fp32"].get_data().edges)  # same bins for both


def test_histogram_without_scaled_series(mags):
    artists = plot_gradient_histogram(new_figure().add_subplot(), mags, scaled=False)
    assert "scaled" not in artists and "fp32" in artists


def test_histogram_bad_input(mags):
    ax = new_figure().add_subplot()
    with pytest.raises(TypeError, match="mags must be a GradientMagnitudes"):
        plot_gradient_histogram(ax, np.ones(4))
    with pytest.raises(ValueError, match="bins"):
        plot_gradient_histogram(ax, mags, bins=1)


# --- plot_run ------------------------------------------------------------------------------------
def test_plot_run_draws_the_record():
    run = mp.train("fp16", scaler=True, steps=8, overflow_at=(5,), growth_interval=3)
    ref = mp.train("fp32", steps=8)
    axes = new_figure().subplots(1, 3)
    artists = plot_run(axes, run, reference=ref)
    np.testing.assert_array_equal(artists["loss"].get_ydata(), run.loss)
    np.testing.assert_array_equal(artists["reference"].get_ydata(), ref.loss)
    np.testing.assert_array_equal(artists["scale"].get_ydata(), run.scale)
    np.testing.assert_array_equal(artists["skipped"].get_xdata(), [5])
    assert artists["skipped"].get_ydata()[0] == run.scale[5]
    with pytest.raises(TypeError, match="run must be a TrainingRun"):
        plot_run(axes, ref.loss)


# --- the explorer ------------------------------------------------------------------------------
def test_explorer_starts_with_fp16_underflow(explorer):
    assert isinstance(explorer, MixedPrecisionExplorer)
    assert explorer.error is None
    run = explorer.result
    assert (run.precision, run.scaler, run.steps) == ("fp16", False, explorer.steps)
    assert run.zero_fraction[0] > 0.9
    np.testing.assert_allclose(explorer.artists["zero"].get_ydata(), 100 * run.zero_fraction)
    assert explorer.progress.value == explorer.progress.max == explorer.steps
    assert explorer.progress in explorer.children
    assert "flushed to 0" in explorer.status.value


def test_toggling_the_scaler_rescues_the_gradients(explorer):
    before_png = explorer.image.value
    before_zero = np.array(explorer.artists["zero"].get_ydata())
    explorer.controls["scaler"].value = True
    run = explorer.result
    assert explorer.error is None and run.scaler
    assert run.zero_fraction.max() < 0.001
    assert not np.array_equal(explorer.artists["zero"].get_ydata(), before_zero)
    np.testing.assert_array_equal(explorer.artists["scale"].get_ydata(), run.scale)
    assert run.scale[-1] > run.scale[0]  # growth_interval is small in the demo
    assert explorer.image.value != before_png


def test_toggling_the_overflow_marks_the_skipped_step(explorer):
    explorer.controls["overflow"].value = True
    run = explorer.result
    assert run.skipped == [explorer.overflow_step]
    np.testing.assert_array_equal(explorer.artists["skipped"].get_xdata(), run.skipped)
    step = explorer.overflow_step
    assert run.scale[step + 1] == run.scale[step] / 2
    explorer.controls["overflow"].value = False
    assert explorer.result.skipped == []


def test_toggling_precision_and_loss_magnitude(explorer):
    explorer.controls["precision"].value = "bf16"
    assert explorer.result.precision == "bf16"
    assert "<b>bf16</b>" in explorer.status.value
    cached = _reference.cache_info().currsize
    explorer.controls["loss_scale"].value = 1e-2
    assert explorer.result.loss_scale == pytest.approx(1e-2)
    assert _reference.cache_info().currsize == cached + 1  # a new fp32 reference for the new loss
    run = explorer.result
    np.testing.assert_allclose(explorer.artists["reference"].get_ydata(),
                               _reference(run.device, run.loss_scale, run.steps).loss)


def test_a_failing_toggle_is_shown_not_swallowed(explorer):
    good = explorer.result
    dropdown = explorer.controls["device"]
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    dropdown.options = [*dropdown.options, "cuda"]
    dropdown.value = "cuda"
    assert isinstance(explorer.error, ValueError)
    assert "not available" in explorer.status.value
    assert explorer.result is good
    dropdown.value = "cpu"
    assert explorer.error is None


def test_the_device_dropdown_offers_only_real_choices():
    from numlab import device

    fresh = explore_mixed_precision(precision="fp32")
    dropdown = fresh.controls["device"]
    if len(device.available()) == 1:
        assert list(dropdown.options) == device.available() and dropdown.disabled
    else:
        assert "auto" in dropdown.options and not dropdown.disabled
    fresh.close()


def test_fp32_alone_draws_one_line_with_one_label(explorer):
    explorer.controls["scaler"].value = False
    explorer.controls["precision"].value = "fp32"
    labels = [t.get_text() for t in explorer.axes[0].get_legend().get_texts()]
    assert labels.count("fp32") == 1 and "fp32 reference" not in labels
    explorer.controls["precision"].value = "fp16"
    labels = [t.get_text() for t in explorer.axes[0].get_legend().get_texts()]
    assert "fp32 reference" in labels and "fp16" in labels


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(precision="fp8"), ValueError, "precision"),
        (dict(scaler=1), TypeError, "scaler"),
        (dict(overflow="no"), TypeError, "overflow"),
        (dict(device="tpu"), ValueError, "device"),
        (dict(loss_scale=10.0), ValueError, "loss_scale"),
    ],
)
def test_explore_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        explore_mixed_precision(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without CUDA")
def test_explore_refuses_an_absent_gpu():
    with pytest.raises(ValueError, match="device"):
        explore_mixed_precision(device="cuda")


def test_progress_bar_starts_from_zero_with_each_run(explorer):
    seen = []
    explorer.progress.observe(lambda change: seen.append(change["new"]), names="value")
    explorer.controls["scaler"].value = not explorer.controls["scaler"].value
    assert explorer.error is None
    assert seen[0] == 0 and seen[-1] == explorer.steps  # reset, then moved to the end
    assert sorted(seen[1:]) == seen[1:]  # forward only, step by step
    assert 10 <= len(seen) <= 30  # visible progress, without a message per step
