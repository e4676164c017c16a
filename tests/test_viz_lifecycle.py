"""A widget frees what it holds: close() releases the figure and every child widget, and
re-running a widget cell many times keeps only a few figures alive."""
import gc
import weakref

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")

from numlab.viz.softmax import explore_softmax  # noqa: E402


def _registry_size() -> int:
    registry = getattr(widgets.Widget, "widgets", None)  # ipywidgets 7
    if registry is None:
        registry = widgets.widget._instances  # ipywidgets 8
    return len(registry)


def test_close_releases_the_figure_and_the_child_widgets():
    before = _registry_size()
    w = explore_softmax(scale=3.0)
    fig = weakref.ref(w.fig)
    assert _registry_size() > before
    w.close()
    del w
    gc.collect()
    assert fig() is None, "the figure outlived its closed widget"
    assert _registry_size() <= before


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
