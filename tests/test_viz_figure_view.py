"""The live figure: alt text that follows the frame, and as many pixels as the browser shows.

Under ipywidgets 8 with anywidget an explorer draws into a FigureView; under ipywidgets 7
(make test-widgets7 runs this file there too) and in Colab it keeps the plain Image."""
import struct
import sys

import ipywidgets as widgets
import matplotlib
import pytest

matplotlib.use("Agg")

from numlab.viz import figure_view as fv  # noqa: E402
from numlab.viz.softmax import explore_softmax  # noqa: E402

MODERN = not widgets.__version__.startswith("7.") and fv.anywidget is not None


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


@pytest.mark.skipif(not MODERN, reason="ipywidgets 7 or no anywidget: the plain Image")
def test_alt_text_follows_every_frame():
    w = explore_softmax(scale=3.0)
    try:
        assert isinstance(w.image, fv.FigureView)
        first = w.image.alt
        assert first == w.alt_text() and "logits" in first, first
        w.controls["n_classes"].value = 9
        assert w.image.alt != first, "the alt text kept describing the old frame"
        assert w.image.alt == w.alt_text()
    finally:
        w.close()


@pytest.mark.skipif(not MODERN, reason="ipywidgets 7 or no anywidget: the plain Image")
@pytest.mark.parametrize("width, ratio, expected", [
    (1000, 1.0, 1000),   # a projector
    (1008, 2.0, 2016),   # a HiDPI laptop: twice the pixels across
    (640, 3.0, 1280),    # a phone at 3x gets 2x (MAX_PIXEL_RATIO)
    (700, 0.5, 700),     # zoomed out below 1x: never fewer pixels than CSS pixels
])
def test_frames_are_rendered_at_the_shown_size(width, ratio, expected):
    w = explore_softmax(scale=3.0)
    try:
        default = _png_size(w.image.value)[0]
        w.image.pixel_ratio = ratio  # the browser's report: ratio, then width
        w.image.width_px = width
        got, _ = _png_size(w.image.value)
        assert abs(got - expected) <= 1, (default, got, expected)
        w.controls["scale"].value = 10.0  # later frames keep the size
        assert abs(_png_size(w.image.value)[0] - expected) <= 1
    finally:
        w.close()


@pytest.mark.skipif(not MODERN, reason="ipywidgets 7 or no anywidget: the plain Image")
def test_slow_widget_also_follows_the_size():
    from numlab.viz.mixed_precision import explore_mixed_precision

    w = explore_mixed_precision()
    try:
        w.image.width_px = 900
        assert abs(_png_size(w.image.value)[0] - 900) <= 1
    finally:
        w.close()


def test_front_ends_without_anywidget_support_get_the_plain_image(monkeypatch):
    layout = widgets.Layout(width="100%")
    monkeypatch.setitem(sys.modules, "google.colab", object())
    view = fv.figure_view(layout)
    assert type(view) is widgets.Image
    assert fv.shown_pixels(view) == 0  # renders at the preset dpi, as before
    view.close()
    if not MODERN:  # ipywidgets 7 (Colab's front end): the Image without Colab too
        monkeypatch.delitem(sys.modules, "google.colab")
        view = fv.figure_view(layout)
        assert type(view) is widgets.Image
        view.close()
