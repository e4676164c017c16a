import math

import matplotlib
import numpy as np

matplotlib.use("Agg")

from numlab import formats  # noqa: E402
from numlab.viz import new_figure  # noqa: E402
from numlab.viz.formats import explore_format, plot_ranges  # noqa: E402


def test_plot_ranges_draws_each_band_at_the_computed_limits():
    ax = new_figure().add_subplot()
    artists = plot_ranges(ax, ("fp16", "bf16"))
    assert len(artists["normal"]) == 2 and len(artists["subnormal"]) == 2 and len(artists["eps"]) == 2
    fp16 = formats.info("fp16")
    bar = artists["normal"][0]
    assert math.isclose(bar.get_x(), math.log10(fp16.tiny))
    assert math.isclose(bar.get_x() + bar.get_width(), math.log10(fp16.max))
    assert math.isclose(artists["eps"][1].get_xdata()[0], math.log10(formats.info("bf16").eps))


def test_explorer_updates_result_artists_and_image():
    w = explore_format("fp16", 0.1)
    assert w.error is None and w.result["d"].stored == formats.round_to(0.1, "fp16")
    png, visible = w.image.value, sum(b.get_visible() for b in w.boxes)
    assert visible == 16
    w.controls["dtype"].value = "fp32"
    assert w.result["d"].format == "fp32"
    assert sum(b.get_visible() for b in w.boxes) == 32
    assert w.image.value != png
    # one digit per bit, at the centre of its box: 0.1 in fp32 is 0 01111011 10011001100...
    zeros, ones = (np.asarray(w.digits[b].get_xdata()) for b in "01")
    assert len(zeros) + len(ones) == 32
    bits = "".join("1" if i + 0.46 in ones else "0" for i in range(32))
    assert bits == "0" + "01111011" + "10011001100110011001101"


def test_negative_fp64_shows_its_sign_bit():
    w = explore_format("fp64", -0.1)
    ones = np.asarray(w.digits["1"].get_xdata())
    assert len(ones) + len(w.digits["0"].get_xdata()) == 64
    assert 0.46 in ones and 1.46 not in ones  # sign 1, then the exponent 01111111011


def test_slider_feeds_the_value_and_overflow_is_shown():
    w = explore_format("fp16", 1.0)
    w.slider.value = 1e5
    assert w.controls["x"].value == 1e5
    assert w.result["d"].kind == "inf"
    assert "past max" in w.note.get_text()
    w.controls["x"].value = 1e-9
    assert w.result["d"].kind == "zero" and w.note.get_text() == ""


def test_callback_errors_are_shown_not_swallowed():
    w = explore_format("fp16", 1.0)
    good = w.result
    w.compute = lambda **v: 1 / 0  # a broken compute step
    w.controls["x"].value = 2.0
    assert isinstance(w.error, ZeroDivisionError)
    assert "ZeroDivisionError" in w.status.value
    assert any("ZeroDivisionError" in o["text"] for o in w.errors.outputs)
    assert w.result is good  # the last good result stays


def test_static_png_is_offered_beside_the_widget():
    w = explore_format("bf16", 3.0)
    bundle = w._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "image/png" in data and "application/vnd.jupyter.widget-view+json" in data


def test_blitted_frames_match_a_plain_redraw():
    w = explore_format("fp16", 0.1)
    draws = []
    draw = w.fig.canvas.draw
    w.fig.canvas.draw = lambda: (draws.append(1), draw())
    for dtype, x in (("fp16", 1e5), ("fp16", 3.0), ("bf16", -2.5e-6), ("fp64", 0.1)):
        w.controls["dtype"].value = dtype  # a new format or value: no full redraw
        w.controls["x"].value = x
        assert w.error is None
    assert draws == []
    fast = np.asarray(w.fig.canvas.buffer_rgba()).copy()
    w._background_key = None  # force a full redraw of the same state
    w.render_png()
    assert draws == [1]
    np.testing.assert_array_equal(np.asarray(w.fig.canvas.buffer_rgba()), fast)
