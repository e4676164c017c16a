"""Every figure readable by everyone in the room: colour-vision deficiency, contrast, text size.

Each ``plot_*`` and ``explore_*`` figure is drawn here from a small result, then:

- every pair of series colours on one axes stays apart under simulated deuteranopia,
  protanopia and tritanopia (Machado, Oliveira & Fernandes 2009 at full severity, as
  implemented by colour-science), by CIEDE2000 >= ``MIN_DELTA_E``; transparent fills are
  composited over the axes background first;
- every pair of labelled lines on one axes differs in line style or marker as well, so
  no meaning rests on colour alone;
- every text has 4.5:1 contrast against the background (WCAG AA) and is at least 12 px
  tall as displayed: a static figure at its size (no wider than a JupyterLab cell at a
  1280 px window, ``MAX_STATIC_PX``), a widget at the width JupyterLab gives it.
"""
from __future__ import annotations

import inspect
import itertools
import re
import warnings

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

from numlab import clipping, finite_diff, layers, viz
from numlab import debugging as dbg
from numlab import distributed as nd
from numlab import mixed_precision as mp
from numlab import softmax as sm
from numlab.viz import clipping as vc
from numlab.viz import debugging as vdbg
from numlab.viz import distributed as vdist
from numlab.viz import finite_diff as vfd
from numlab.viz import formats as vfmt
from numlab.viz import mixed_precision as vmp
from numlab.viz import new_figure
from numlab.viz import softmax as vsm

with warnings.catch_warnings():  # colour-science notes that scipy is absent: not needed here
    warnings.simplefilter("ignore")
    colour = pytest.importorskip("colour")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # colour-science notes its model limits

from test_viz_distributed import _ddp_like, _fake_sweep  # noqa: E402

MIN_DELTA_E = 10.0  # CIEDE2000; Okabe-Ito's closest pair used here (green, grey) is 10.2
DEFICIENCIES = ("Deuteranomaly", "Protanomaly", "Tritanomaly")
MIN_TEXT_PX = 12.0
MIN_CONTRAST = 4.5
MAX_STATIC_PX = 1008  # a JupyterLab output area at a 1280 px window
WIDGET_PX = 1008  # the width JupyterLab gives a widget's image at that window
MODULES = (vc, vdbg, vdist, vfd, vfmt, vmp, vsm)


def _one(figsize, draw):
    fig = new_figure(figsize)
    draw(fig)
    return fig


def _norms(fig, run):
    for ax, what in zip(fig.subplots(1, 2), ("grad", "ratio"), strict=True):
        vdbg.plot_norms(ax, run.history, what)


STATIC = {  # figure size as the notebooks use it (after this issue: at most 10 in wide)
    "plot_depth": lambda: _one((9, 4), lambda f: vc.plot_depth(
        f.add_subplot(), clipping.gradient_norms_by_depth(20, 16, 1.2, "linear", dtype=torch.float64))),
    "plot_clip_2d": lambda: _one((8, 5), lambda f: vc.plot_clip_2d(
        f.add_subplot(), clipping.clip_comparison(torch.tensor([2.0, 1.0]), max_norm=1.5, clip_value=0.5))),
    "plot_training": lambda: _one((9, 5), lambda f: vc.plot_training(
        *f.subplots(2, 1, sharex=True), clipping.train_rnn(None, steps=40))),
    "plot_threshold_sweep": lambda: _one((8, 4), lambda f: vc.plot_threshold_sweep(
        f.add_subplot(), clipping.threshold_sweep((0.25, 1.0), steps=40))),
    "plot_norms": lambda: _one((10, 4), lambda f: _norms(f, dbg.misinit_run(bad_layer=1, scale=1e-3, steps=12,
                                                                          every=4))),
    "plot_curves": lambda: _one((10, 4), lambda f: vdbg.plot_curves(
        f.add_subplot(), dbg.pathology_run("numerical blow-up"))),
    "plot_ddp_differences": lambda: _one((9, 4), lambda f: vdist.plot_ddp_differences(
        f.add_subplot(), _ddp_like("fp32"), _ddp_like("fp64"))),
    "plot_stale_curves": lambda: _one((9, 4), lambda f: vdist.plot_stale_curves(
        f.add_subplot(), nd.stale_sgd(2, 0.8, steps=50))),
    "plot_stale_map": lambda: _one((7, 4.5), lambda f: vdist.plot_stale_map(
        f.add_subplot(), nd.stale_sweep(np.geomspace(0.05, 2.5, 30), range(5), steps=100))),
    "plot_batchnorm": lambda: _one((8, 4), lambda f: vdist.plot_batchnorm(
        f.add_subplot(), _fake_sweep(2, (2, 4, 8)))),
    "plot_sweep": lambda: _one((10, 4.4), lambda f: vfd.plot_sweep(
        f.add_subplot(), finite_diff.sweep_h("exp", 1.0, "fp64"), h=1e-12, f="exp")),
    "plot_jacobian_error": lambda: _one((10, 4.4), lambda f: vfd.plot_jacobian_error(
        f.add_subplot(), finite_diff.gradcheck(*layers.problem("layer_norm", 6, wrong=True)))),
    "plot_ranges": lambda: _one((9, 3.2), lambda f: vfmt.plot_ranges(
        f.add_subplot(), ("fp16", "bf16", "fp32", "fp64"))),
    "plot_gradient_histogram": lambda: _one((10, 4), lambda f: vmp.plot_gradient_histogram(
        f.add_subplot(), mp.gradient_magnitudes(loss_scale=1e-5, scale=2.0**15))),
    "plot_run": lambda: _one((10, 3.6), lambda f: vmp.plot_run(
        f.subplots(1, 3), mp.train("fp16", scaler=True, steps=8, overflow_at=(5,), growth_interval=3),
        reference=mp.train("fp32", steps=8))),
    "softmax.plot_sweep": lambda: _one((10, 3.8), lambda f: [vsm.plot_sweep(
        ax, sm.sweep_logits(np.logspace(-1, 3, 41), "fp16", 3, "low"), q) for ax, q in zip(
        f.subplots(1, 2), ("loss", "grad"), strict=True)]),
    "plot_breakpoints": lambda: _one((9, 3.6), lambda f: vsm.plot_breakpoints(
        f.add_subplot(), [sm.breakpoints(d, 2, "low") for d in ("fp16", "fp32")])),
    "plot_softplus_error": lambda: _one((9, 3.6), lambda f: vsm.plot_softplus_error(
        f.add_subplot(), sm.sweep_bce(np.linspace(-200, 200, 81), "fp32"))),
}
WIDGETS = {
    "explore_depth": lambda: vc.explore_depth(),
    "explore_clipping": lambda: vc.explore_clipping(),
    "explore_training": lambda: vc.explore_training(steps=40),
    "explore_pathologies": lambda: vdbg.explore_pathologies(),
    "explore_norms": lambda: vdbg.explore_norms(),
    "explore_staleness": lambda: vdist.explore_staleness(steps=50),
    "explore_batchnorm": lambda: vdist.explore_batchnorm(
        precomputed=_fake_sweep(2, (2, 4, 8)), batches=(2, 4, 8), runner=lambda w, b: _fake_sweep(w, b)),
    "explore_step_size": lambda: vfd.explore_step_size(),
    "explore_gradcheck": lambda: vfd.explore_gradcheck(),
    "explore_format": lambda: vfmt.explore_format(),
    "explore_mixed_precision": lambda: vmp.explore_mixed_precision(),
    "explore_softmax": lambda: vsm.explore_softmax(),
    "explore_bce": lambda: vsm.explore_bce(),
}


def test_the_tables_cover_every_plot_and_widget():
    names = set()
    for module in MODULES:
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and name.startswith(("plot_", "explore_")):
                names.add(f"softmax.{name}" if module is vsm and name == "plot_sweep" else name)
    assert names == set(STATIC) | set(WIDGETS)


# --- colour science ----------------------------------------------------------------------------
def _lab(srgb: np.ndarray) -> np.ndarray:
    return colour.XYZ_to_Lab(colour.sRGB_to_XYZ(srgb))


def _simulate(srgb: np.ndarray, deficiency: str) -> np.ndarray:
    linear = colour.cctf_decoding(np.clip(srgb, 0, 1), function="sRGB")
    seen = np.clip(linear @ colour.matrix_cvd_Machado2009(deficiency, 1.0).T, 0, 1)
    return colour.cctf_encoding(seen, function="sRGB")


def delta_e(a, b) -> dict[str, float]:
    """CIEDE2000 between two sRGB colours, as seen with normal vision and each deficiency."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"normal": float(colour.delta_E(_lab(a), _lab(b), method="CIE 2000"))}
    for kind in DEFICIENCIES:
        out[kind] = float(colour.delta_E(_lab(_simulate(a, kind)), _lab(_simulate(b, kind)),
                                         method="CIE 2000"))
    return out


def contrast(a, b) -> float:
    """WCAG 2 contrast ratio of two sRGB colours."""
    def luminance(c):
        c = np.asarray(c, float)
        lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return float(lin @ [0.2126, 0.7152, 0.0722])
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _over(rgba, background) -> np.ndarray:
    rgba = np.asarray(rgba, float)
    return rgba[:3] * rgba[3] + np.asarray(background[:3]) * (1 - rgba[3])


def test_the_colour_measures_agree_with_published_values():
    # WCAG: black on white is 21:1, #767676 on white the AA limit 4.5:1
    assert contrast((0, 0, 0), (1, 1, 1)) == pytest.approx(21.0)
    assert contrast(to_rgba("#767676")[:3], (1, 1, 1)) == pytest.approx(4.54, abs=0.01)
    # Machado 2009: red and green collapse for a deuteranope, not for normal vision
    d = delta_e(to_rgba("#ff0000")[:3], to_rgba("#00ff00")[:3])
    assert d["normal"] > 50 and d["Deuteranomaly"] < d["normal"] / 2


# --- what a figure draws -----------------------------------------------------------------------
def _series(ax) -> list[tuple[str, object, np.ndarray]]:
    """(label, artist, colour over the background) of every labelled series on ``ax``."""
    background = to_rgba(ax.get_facecolor())
    out = []
    for line in ax.get_lines():
        if line.get_visible() and not line.get_label().startswith("_"):
            colour_ = to_rgba(line.get_color(), line.get_alpha())
            out.append((line.get_label(), line, _over(colour_, background)))
    for artist in [*ax.collections, *ax.patches]:
        label = artist.get_label()
        if not artist.get_visible() or not label or label.startswith("_"):
            continue
        face = artist.get_facecolor()
        face = face[0] if np.ndim(face) == 2 and len(face) else face
        if np.ndim(face) == 1 and len(face) == 4 and face[3] > 0:
            out.append((label, artist, _over(face, background)))
        else:
            edge = artist.get_edgecolor()
            edge = edge[0] if np.ndim(edge) == 2 and len(edge) else edge
            if np.ndim(edge) == 1 and len(edge) == 4:
                out.append((label, artist, _over(edge, background)))
    for container in ax.containers:
        label = container.get_label()
        if label and not label.startswith("_") and len(container):
            patch = container[0]
            out.append((label, patch, _over(patch.get_facecolor(), background)))
    return out


def _base(artist) -> tuple:
    """The artist's colour without its transparency."""
    if hasattr(artist, "get_color") and not hasattr(artist, "get_facecolor"):
        rgba = to_rgba(artist.get_color())
    else:
        face = np.atleast_2d(artist.get_facecolor())
        rgba = face[0] if len(face) and face[0][3] > 0 else np.atleast_2d(artist.get_edgecolor())[0]
    return tuple(np.round(rgba[:3], 3))


def _figures():
    for name, make in STATIC.items():
        yield pytest.param(name, make, False, id=name)
    for name, make in WIDGETS.items():
        yield pytest.param(name, make, True, id=name)


@pytest.fixture(scope="module")
def drawn():
    cache = {}

    def get(name, make, widget):
        if name not in cache:
            thing = make()
            fig = thing.fig if widget else thing
            fig.canvas.draw()
            cache[name] = (fig, thing)
        return cache[name][0]
    yield get
    for _, thing in cache.values():
        if hasattr(thing, "close"):
            thing.close()


@pytest.mark.parametrize("name,make,widget", list(_figures()))
def test_series_colours_stay_apart_under_colour_vision_deficiency(drawn, name, make, widget):
    fig = drawn(name, make, widget)
    for ax in fig.axes:
        series = _series(ax)
        for (la, pa, ca), (lb, pb, cb) in itertools.combinations(series, 2):
            if _base(pa) == _base(pb):  # one colour on purpose (a series and its model, its
                continue  # marker): told apart by style, the next test
            worst = min(delta_e(ca, cb).items(), key=lambda kv: kv[1])
            assert worst[1] >= MIN_DELTA_E, (
                f"{name}: {la!r} and {lb!r} are only dE2000 {worst[1]:.1f} apart for {worst[0]}")


@pytest.mark.parametrize("name,make,widget", list(_figures()))
def test_labelled_lines_differ_in_style_as_well_as_colour(drawn, name, make, widget):
    fig = drawn(name, make, widget)
    for ax in fig.axes:
        lines = [a for _, a, _ in _series(ax) if hasattr(a, "get_linestyle") and hasattr(a, "get_marker")]
        for a, b in itertools.combinations(lines, 2):
            look = [(line.get_linestyle(), line.get_marker() or "None") for line in (a, b)]
            assert look[0] != look[1], (
                f"{name}: {a.get_label()!r} and {b.get_label()!r} differ by colour alone ({look[0]})")


@pytest.mark.parametrize("name,make,widget", list(_figures()))
def test_text_is_large_and_dark_enough(drawn, name, make, widget):
    fig = drawn(name, make, widget)
    width_px = fig.get_figwidth() * fig.dpi
    if widget:
        scale = WIDGET_PX / (fig.get_figwidth() * fig.dpi)  # the image is stretched to the cell
    else:
        assert width_px <= MAX_STATIC_PX, f"{name}: {width_px:.0f} px wide, shrunk in a 1008 px cell"
        scale = 1.0
    background = to_rgba(fig.get_facecolor())
    for text in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text")):
        if not text.get_visible() or not text.get_text().strip() or not text.get_figure():
            continue
        px = text.get_fontsize() * fig.dpi / 72 * scale
        assert px >= MIN_TEXT_PX, f"{name}: {text.get_text()[:40]!r} is {px:.1f} px as displayed"
        ratio = contrast(_over(to_rgba(text.get_color(), text.get_alpha()), background)[:3], background[:3])
        assert ratio >= MIN_CONTRAST, f"{name}: {text.get_text()[:40]!r} has contrast {ratio:.2f}:1"


def test_the_style_is_set_once_in_numlab_viz():
    assert viz.STYLE["axes.prop_cycle"] is not None
    from numlab.viz import palette
    assert len(set(palette.SERIES)) == len(palette.SERIES) == len(palette.DASHES)
    for a, b in itertools.combinations(palette.SERIES, 2):  # the palette itself passes
        assert min(delta_e(to_rgba(a)[:3], to_rgba(b)[:3]).values()) >= MIN_DELTA_E


def _png_width(b64: str) -> int:
    import base64
    import struct

    return struct.unpack(">I", base64.b64decode(b64[:64])[16:20])[0]


def test_committed_figures_fit_a_jupyterlab_cell_unshrunk():
    """A static figure wider than the cell is scaled down, and its 12 px text with it."""
    import json
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
    wide = []
    for path in sorted(root.glob("*.ipynb")) + sorted(root.glob("solutions/*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                pngs = [data["image/png"]] if "image/png" in data else []
                html = "".join(data.get("text/html", ""))
                pngs += re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
                for png in pngs:
                    if _png_width(png) > MAX_STATIC_PX:
                        wide.append(f"{path.name} cell {i}: {_png_width(png)} px")
    assert not wide, wide
