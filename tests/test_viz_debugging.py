"""numlab.viz.debugging: norm plots and the pathology / norm explorers, headless."""
import numpy as np
import pytest

from numlab import debugging as dbg
from numlab.viz import debugging as vd
from numlab.viz import new_figure


@pytest.fixture(scope="module")
def misinit():
    return dbg.misinit_run(bad_layer=1, scale=1e-3, steps=12, every=4)


def test_plot_norms_draws_one_line_per_layer_and_highlights_the_bad_one(misinit):
    ax = new_figure().add_subplot()
    lines = vd.plot_norms(ax, misinit.history, "ratio")
    assert list(lines) == ["0", "2", "4", "6"]
    assert lines["2"].get_color() == vd.BAD and lines["2"].get_linewidth() == 3.0
    assert all(lines[k].get_color() != vd.BAD for k in ("0", "4", "6"))
    assert np.allclose(lines["4"].get_ydata(), misinit.history.ratio[:, 2])
    assert ax.get_yscale() == "log" and "odd one out" in lines["2"].get_label()
    grad = vd.plot_norms(new_figure().add_subplot(), misinit.history, "grad", highlight=None)
    assert np.allclose(grad["0"].get_ydata(), misinit.history.grad[:, 0])
    assert all(line.get_color() != vd.BAD for line in grad.values())


def test_plot_curves_marks_the_nanguard_stop():
    run = dbg.pathology_run("numerical blow-up")
    ax = new_figure().add_subplot()
    art = vd.plot_curves(ax, run)
    assert art["stop"].get_visible() and art["stop"].get_xdata()[0] == run.stopped_at
    y = art["train"].get_ydata()
    assert np.isnan(y[-1]) and np.allclose(y[:-1], run.train_loss[:-1])  # NaN hidden, not drawn
    quiet = vd.plot_curves(new_figure().add_subplot(), dbg.pathology_run("healthy", steps=30),
                           fresh=False)
    assert not quiet["stop"].get_visible() and not quiet["fresh"].get_visible()


def test_explore_pathologies_switches_runs_and_caches_them():
    w = vd.explore_pathologies("overfitting")
    assert w.error is None and w.result.pathology == "overfitting"
    assert "verdict: overfitting" in w.status.value
    png, val = w.image.value, w.lines["val"].get_ydata().copy()
    w.controls["pathology"].value = "leak between splits"
    assert w.error is None and w.result.diagnosis.verdict == "leak between splits"
    assert not np.array_equal(w.lines["val"].get_ydata(), val)
    assert w.image.value != png and "overlap 100%" in w.status.value
    w.controls["pathology"].value = "numerical blow-up"
    assert w.stop.get_visible() and "NanGuard stopped" in w.status.value
    w.controls["fresh"].value = False
    assert not w.lines["fresh"].get_visible()
    first = w.result
    w.controls["pathology"].value = "healthy"
    w.controls["pathology"].value = "numerical blow-up"
    assert w.result is first  # cached: no second training run
    assert w.controls["seed"].continuous_update is False and w.slow


def test_explore_norms_moves_the_highlight():
    w = vd.explore_norms(bad_layer=2, log_scale=-3.0)
    assert w.error is None and w.result.flagged == "4"
    assert w.lines["ratio"][2].get_color() == vd.BAD and "(the bad one)" in w.status.value
    png = w.image.value
    w.controls["bad_layer"].value = 0
    assert w.result.flagged == "0" and w.lines["ratio"][0].get_color() == vd.BAD
    assert w.lines["ratio"][2].get_color() != vd.BAD and w.image.value != png
    w.controls["log_scale"].value = 0.0
    assert w.result.flagged is None and "no layer" in w.status.value


def test_bad_input(misinit):
    ax = new_figure().add_subplot()
    with pytest.raises(TypeError, match="history"):
        vd.plot_norms(ax, {"grad": [1, 2]})
    with pytest.raises(ValueError, match="what"):
        vd.plot_norms(ax, misinit.history, "bias")
    with pytest.raises(ValueError, match="highlight"):
        vd.plot_norms(ax, misinit.history, highlight="9")
    with pytest.raises(TypeError, match="run"):
        vd.plot_curves(ax, misinit)
    with pytest.raises(ValueError, match="pathology"):
        vd.explore_pathologies("underfitting")
    with pytest.raises(ValueError, match="bad_layer"):
        vd.explore_norms(bad_layer=4)
    with pytest.raises(ValueError, match="log_scale"):
        vd.explore_norms(log_scale=1.0)
