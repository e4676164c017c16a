"""Headless tests of the softmax plots and explorers (Agg backend)."""
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from numlab import softmax as sm  # noqa: E402
from numlab.viz import new_figure  # noqa: E402
from numlab.viz.palette import VERMILLION_TEXT  # noqa: E402
from numlab.viz.softmax import (  # noqa: E402
    BAD,
    OK,
    WARN,
    explore_bce,
    explore_softmax,
    plot_breakpoints,
    plot_softplus_error,
    plot_sweep,
)


def _segments(collection):
    return [np.asarray(s) for s in collection.get_segments()]


def test_plot_sweep_marks_the_naive_breakdown():
    sw = sm.sweep_logits(np.logspace(-1, 3, 41), "fp16", 3, "low")
    ax = new_figure().add_subplot()
    art = plot_sweep(ax, sw, "loss")
    x_bad = art["bad"].get_xdata()
    assert len(x_bad) > 0 and x_bad.min() == sw.first_bad["naive loss"]
    np.testing.assert_array_equal(art["stable"].get_ydata(), sw.loss_stable)
    assert np.isnan(art["naive"].get_ydata()[-1])  # non-finite values are not drawn as numbers
    grad = plot_sweep(new_figure().add_subplot(), sw, "grad")
    assert grad["bad"].get_xdata().min() == sw.first_bad["naive grad"]
    with pytest.raises(ValueError, match="quantity must be 'loss' or 'grad'"):
        plot_sweep(ax, sw, "probs")


def test_plot_breakpoints_draws_each_format_at_its_thresholds():
    bps = [sm.breakpoints(d, 2, "low") for d in ("fp16", "fp32")]
    art = plot_breakpoints(new_figure().add_subplot(), bps)
    segs = _segments(art["strip"])
    assert len(segs) == 6  # fine / gradient broken / loss broken, per format
    assert segs[0][1, 0] == bps[0].grad and segs[1][1, 0] == bps[0].loss
    assert segs[3][1, 0] == bps[1].grad and segs[4][1, 0] == bps[1].loss
    np.testing.assert_array_equal(art["overflow"].get_xdata(), [bps[0].softmax, bps[1].softmax])


def test_plot_softplus_error_shows_the_overflow():
    sw = sm.sweep_bce(np.linspace(-200, 200, 81), "fp32")
    art = plot_softplus_error(new_figure().add_subplot(), sw)
    assert art["bad"].get_xdata().min() == sw.first_bad["softplus_naive"] == 90.0
    assert len(art["stable"].get_xdata()) == 81


def test_softmax_explorer_reacts_to_every_control():
    w = explore_softmax(scale=2.0, dtype="fp16", n_classes=3, target="low")
    assert w.error is None and w.result.first_bad is None
    png, segs = w.image.value, _segments(w.bars["p_naive"])
    assert len(segs) == 3
    w.controls["scale"].value = 7.0  # fp16: past the gradient breakpoint 5.5, before the loss one
    r = w.result
    assert r.sweep.scales[0] == 7.0 and r.first_bad.startswith("grad[")
    assert np.isfinite(r.sweep.loss_naive[0]) and not np.isfinite(r.sweep.grad_naive[0]).all()
    assert len(w.g_bad.get_xdata()) > 0 and len(w.p_bad.get_xdata()) == 0
    assert w.image.value != png and "first non-finite: grad[" in w.status.value
    w.controls["scale"].value = 20.0  # past the exp overflow: the probabilities are NaN
    assert w.result.first_bad == "p[0]" and len(w.p_bad.get_xdata()) == 1  # inf/inf; 1/inf = 0
    assert "inf" in w.loss_text.get_text() or "nan" in w.loss_text.get_text()
    w.controls["dtype"].value = "fp32"
    assert w.result.first_bad is None and w.result.sweep.dtype == "fp32"
    assert len(w.p_bad.get_xdata()) == 0
    w.controls["n_classes"].value = 7
    assert len(_segments(w.bars["p_stable"])) == 7 and w.result.sweep.n_classes == 7
    strip_before = _segments(w.strip["strip"])
    w.controls["target"].value = "high"
    assert w.result.sweep.target == 0
    strip_after = _segments(w.strip["strip"])
    # with the top class true, the loss and gradient break only where the sum overflows
    assert any(not np.array_equal(a, b) for a, b in zip(strip_before, strip_after, strict=True))
    fp16 = sm.breakpoints("fp16", 7, "high")
    assert strip_after[0][1, 0] == fp16.grad == fp16.softmax
    assert w.error is None


def test_softmax_explorer_strip_matches_breakpoints_and_marks_the_scale():
    w = explore_softmax(scale=50.0, dtype="bf16", n_classes=2, target="low")
    segs = _segments(w.strip["strip"])
    fp16 = sm.breakpoints("fp16", 2, "low")
    assert segs[0][1, 0] == fp16.grad and segs[1][1, 0] == fp16.loss
    assert list(w.now.get_xdata()) == [50.0, 50.0]
    assert [c for c in w.strip["strip"].get_colors()[:2].tolist()] == [
        list(matplotlib.colors.to_rgba(OK)), list(matplotlib.colors.to_rgba(WARN))]
    # the stable probabilities always sum to one, the shifted sum lies in [1, n]
    assert math.isclose(sum(s[1, 1] for s in _segments(w.bars["p_stable"])), 1.0, rel_tol=1e-2)
    assert 1 <= w.result.sweep.shifted_sum[0] <= 2


def test_bce_explorer_reacts_to_every_control():
    w = explore_bce(magnitude=20.0, sign="+", target=1.0, dtype="fp32")
    assert w.error is None
    p = w.result.point
    assert math.isnan(p.bce_naive[0]) and math.isfinite(p.bce_stable[0])  # 0 * log(0)
    assert w.cells["bce", "naive"].get_text() == "nan"
    assert matplotlib.colors.to_hex(w.cells["bce", "naive"].get_color()) == VERMILLION_TEXT.lower()
    png = w.image.value
    w.controls["sign"].value = "-"
    assert w.result.point.z[0] == -20.0 and math.isfinite(w.result.point.bce_naive[0])
    assert w.image.value != png and list(w.z_line.get_xdata()) == [-20.0, -20.0]
    w.controls["magnitude"].value = 200.0
    assert w.cells["softplus", "naive"].get_text() == "0"  # 1 + e^-200 rounds to 1
    w.controls["sign"].value = "+"
    assert w.cells["softplus", "naive"].get_text() == "inf"
    assert "first non-finite: naive softplus" in w.status.value
    before = w.err_n.get_ydata().copy()
    w.controls["dtype"].value = "fp16"
    assert w.result.curve.dtype == "fp16" and "in fp16:" in w.title.get_text()
    assert len(w.err_n.get_ydata()) != len(before) or not np.array_equal(w.err_n.get_ydata(), before)
    w.controls["target"].value = 0.5
    assert w.result.point.target == 0.5 and w.error is None


def test_bce_strip_is_red_exactly_where_exp_overflows():
    w = explore_bce()
    red = [s for s, c in zip(_segments(w.strip), w.strip.get_colors().tolist(), strict=True)
           if c == list(matplotlib.colors.to_rgba(BAD))]
    assert len(red) == 4  # one overflow run per format, on the positive side
    for row, seg in enumerate(sorted(red, key=lambda s: s[0, 1])):
        name = ("fp16", "bf16", "fp32", "fp64")[row]
        assert seg[0, 0] >= sm.overflow_threshold(name, 2) * 0.9  # first grid point past it
        assert seg[1, 0] == pytest.approx(1e4)


def test_callback_errors_are_shown_and_png_offered():
    w = explore_softmax()
    good = w.result
    w.compute = lambda **v: 1 / 0
    w.controls["scale"].value = 3.0
    assert isinstance(w.error, ZeroDivisionError) and w.result is good
    assert "ZeroDivisionError" in w.status.value
    bundle = explore_bce()._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert data["image/png"] and "application/vnd.jupyter.widget-view+json" in data


def test_explorer_bad_initial_values():
    with pytest.raises(ValueError, match="dtype must be"):
        explore_softmax(dtype="fp12")
    with pytest.raises(ValueError, match="dtype must be"):
        explore_bce(dtype="int8")


def test_repr_is_short_and_readable():
    r = repr(explore_softmax(scale=20.0).result)
    assert r.startswith("SoftmaxView(fp16, s=20") and "first bad: p[0]" in r
    assert repr(explore_bce().result).startswith("BceView(fp32, z=20")
