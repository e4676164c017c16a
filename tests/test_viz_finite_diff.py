"""Headless tests of the finite-difference plots and widgets."""
import warnings

import numpy as np
import pytest

from numlab import finite_diff, layers
from numlab.viz import new_figure
from numlab.viz.finite_diff import (
    explore_gradcheck,
    explore_step_size,
    plot_jacobian_error,
    plot_sweep,
)


def test_plot_sweep_draws_the_result():
    r = finite_diff.sweep_h("sin", 0.5, "fp32")
    ax = new_figure().add_subplot()
    art = plot_sweep(ax, r, h=1e-3, f="sin")
    x, y = art["central"].get_data()
    np.testing.assert_allclose(x, r.hs.numpy())
    np.testing.assert_allclose(y, np.maximum(r.central_err.numpy(), 1e-17))
    assert list(art["best"].get_data()[0]) == [r.best_forward_h, r.best_central_h]
    assert art["thumb_central"].get_xdata()[0] == pytest.approx(r.rule_of_thumb[1])
    assert art["points"].get_visible() and art["current"].get_xdata()[0] == pytest.approx(1e-3)
    np.testing.assert_allclose(art["central_model"].get_data()[1], r.model_err("central").numpy())
    with pytest.raises(ValueError, match="f is needed"):
        plot_sweep(new_figure().add_subplot(), r, h=1e-3)


def test_plot_jacobian_error_marks_failing_entries():
    report = finite_diff.gradcheck(*layers.problem("layer_norm", 6, wrong=True))
    art = plot_jacobian_error(new_figure().add_subplot(), report)
    assert art["image"].get_array().shape == (6, 6)
    assert len(art["failed"].get_data()[0]) == report.n_failed == 36
    good = finite_diff.gradcheck(*layers.problem("layer_norm", 6))
    art = plot_jacobian_error(new_figure().add_subplot(), good)
    assert len(art["failed"].get_data()[0]) == 0


def test_step_explorer_follows_its_controls():
    w = explore_step_size("exp", 1.0, "fp32", 1e-4)
    assert w.error is None
    sweep, point = w.result
    assert float(point.hs[0]) == pytest.approx(1e-4, rel=1e-3)
    png = w.image.value
    marker = w.artists.points.get_data()[1].copy()
    w.controls["h"].value = 1e-2
    assert w.error is None and float(w.result[1].hs[0]) == pytest.approx(1e-2, rel=1e-3)
    assert w.image.value != png and not np.array_equal(w.artists.points.get_data()[1], marker)
    assert "h = 1.00e-02" in w.status.value
    w.controls["dtype"].value = "fp64"
    assert w.result[0].dtype.itemsize == 8
    assert w.artists.thumb_central.get_xdata()[0] == pytest.approx(2.220446e-16 ** (1 / 3), rel=1e-5)
    w.controls["func"].value = "layer"
    w.controls["x"].value = -0.5
    assert w.result[0].x == -0.5 and w.error is None


def test_step_explorer_clamps_steps_that_do_not_exist_in_fp16():
    w = explore_step_size("tanh", 0.5, "fp16", 1e-3)
    w.controls["h"].value = 1e-12
    assert w.error is None
    assert float(w.result[1].hs[0]) == pytest.approx(6.1035e-05, rel=1e-3)


def test_gradcheck_explorer_follows_its_controls():
    w = explore_gradcheck("softplus", wrong=True)
    assert w.error is None and not w.result.passed and "FAILED" in w.status.value
    png = w.image.value
    w.controls["layer"].value = ("softplus", False)
    assert w.result.passed and "passed" in w.status.value and w.image.value != png
    assert len(w.artists.failed.get_data()[0]) == 0
    w.controls["layer"].value = ("dense_tanh", True)
    assert w.artists.image.get_array().shape == (16, 12)
    w.controls["eps"].value = 1e-3
    assert w.result.eps == pytest.approx(1e-3)


def test_gradcheck_explorer_shows_the_fp32_warning_instead_of_leaking_it():
    w = explore_gradcheck("tanh", wrong=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w.controls["dtype"].value = "fp32"
    assert w.error is None and "not float64" in w.status.value
    assert not w.result.passed  # eps = 1e-6 in fp32: rounding swamps the difference


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"func": "cosh"}, "func"), ({"dtype": "fp8_e5m2"}, "dtype"), ({"x": 5.0}, "x must"),
     ({"h": 0.0}, "h must")],
)
def test_explore_step_size_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        explore_step_size(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"layer": "relu"}, "layer"), ({"eps": 0.0}, "eps"), ({"eps": 2.0}, "eps"),
     ({"dtype": "int8"}, "dtype")],
)
def test_explore_gradcheck_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        explore_gradcheck(**kwargs)
