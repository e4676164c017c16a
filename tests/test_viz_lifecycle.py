"""A widget frees what it holds: close() releases the figure and every child widget, and
re-running a widget cell many times keeps only a few figures alive."""
import gc
import weakref

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")

from numlab.viz.softmax import explore_softmax  # noqa: E402


def _registry() -> dict:
    registry = getattr(widgets.widget, "_instances", None)  # ipywidgets 8
    return widgets.Widget.widgets if registry is None else registry  # ipywidgets 7


def _tree(widget):
    """The widget and every widget inside it (boxes' children, controls, outputs)."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _tree(child)


def test_close_releases_the_figure_and_the_child_widgets():
    # By ids, not by the registry's size: a new explorer also closes the oldest ones beyond
    # max_open, which other tests in this process may have left open.
    w = explore_softmax(scale=3.0)
    fig = weakref.ref(w.fig)
    ids = {child.model_id for child in _tree(w)}
    assert len(ids) > 5 and ids <= set(_registry())
    w.close()
    del w
    gc.collect()
    assert fig() is None, "the figure outlived its closed widget"
    assert not ids & set(_registry()), "closed widgets are still in the registry"


def test_rerunning_a_widget_cell_does_not_accumulate_figures():
    figs = []
    for _ in range(20):
        w = explore_softmax(scale=3.0)
        figs.append(weakref.ref(w.fig))
    gc.collect()
    alive = sum(f() is not None for f in figs)
    assert alive <= type(w).max_open, alive
    assert figs[-1]() is not None and w.fig is not None  # the newest one still works
    w.controls["scale"].value = 10.0
    assert w.error is None
    w.close()


def test_sliders_start_on_their_own_grid():
    import math

    from numlab.viz._explorer import grid_slider

    for value, lo, hi, step, log in [(5.0, -2, 4, 0.01, True), (20.0, -2, 4, 0.01, True),
                                     (0.37, 0.0, 1.0, 0.05, False), (1.0, -2, 1, 0.05, True)]:
        s = grid_slider(value, lo, hi, step, log=log)
        pos = math.log10(value) if log else value
        k = (pos - s.min) / step
        assert abs(k - round(k)) < 1e-9 and s.value == value
        assert lo - 1e-9 <= s.min <= pos <= s.max <= hi + 1e-9


def test_training_explorer_greys_out_the_threshold_without_clipping():
    from numlab.viz.clipping import explore_training

    w = explore_training(clip="none", steps=20)
    assert w.controls["threshold"].disabled
    before = w.result
    w.controls["threshold"].value = 0.5
    assert w.result is before  # nothing retrained
    w.controls["clip"].value = "norm"
    assert not w.controls["threshold"].disabled and "clip by norm at 0.5" in w.status.value
    w.close()
