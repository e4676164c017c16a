"""The widget pattern every ``explore_*`` follows.

An :class:`Explorer` owns a dict of controls, one figure whose artists are created once
(:meth:`setup`) and then only updated (:meth:`draw`), and two visible outputs: a status
line and an error box. Each control change runs :meth:`compute` (which calls the compute
layer), then :meth:`draw`, then renders the figure to PNG into its live view
(:mod:`numlab.viz.figure_view`: an ``<img>`` with alt text, rendered at the size and pixel
ratio the browser shows it).
Errors raised by a callback are shown in the error box (JupyterLab would otherwise swallow
them) and kept in ``.error``; the latest good result is ``.result``.
"""
from __future__ import annotations

import base64
import html
import io
import math
import re
import struct
import time
import traceback
import weakref
import zlib

import ipywidgets as widgets
import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from numlab.device import threads
from numlab.viz.alt import describe
from numlab.viz.figure_view import figure_view, shown_pixels
from numlab.viz.palette import CYCLE

CHEAP_DPI = 80  # what a cheap widget renders at until the browser reports its size
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# Readable on a projector at the back of a room, and by readers with colour-vision
# deficiency (numlab.viz.palette); used for every figure numlab draws.
STYLE = {
    "axes.prop_cycle": CYCLE,
    "font.size": 13,
    "axes.titlesize": 14,
    "axes.labelsize": 13,
    "legend.fontsize": 11,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "lines.linewidth": 2.0,
    "figure.dpi": 100,
}


class NotebookFigure(Figure):
    """A Figure that shows itself, with alt text, when it ends a notebook cell (no pyplot).

    It is an ``<img alt=...>`` in a text/html output rather than an image/png one:
    JupyterLab and Voila put no alt text on an image/png output (they ignore its metadata),
    and axe-core rightly calls an image without one critical. The web book and GitHub show
    the HTML as it is."""

    def _repr_mimebundle_(self, **kwargs):
        buf = io.BytesIO()
        # Fast PNG compression: the image only travels to the browser next door.
        self.savefig(buf, format="png", pil_kwargs={"compress_level": 1})
        png = base64.b64encode(buf.getvalue()).decode("ascii")
        alt = html.escape(describe(self), quote=True)
        tag = f'<img src="data:image/png;base64,{png}" alt="{alt}" style="max-width: 100%">'
        return {"text/html": tag, "text/plain": repr(self)}, {}


def new_figure(figsize=(9, 4), **kwargs) -> NotebookFigure:
    """A pyplot-free figure with an Agg canvas and numlab's style (for static plots too)."""
    with mpl.rc_context(STYLE):
        fig = NotebookFigure(figsize=figsize, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def grid_slider(value: float, min: float, max: float, step: float, *, log: bool = False, **kwargs):
    """A FloatSlider (or a FloatLogSlider on a log10 grid, ``log=True``; then ``min``, ``max``
    and ``step`` are exponents) whose grid runs through ``value``.

    A slider only stops on ``min + k * step``: started between two stops, it shows (and
    moves to) the nearest one, 5.012 for 5.0, while the widget computed at 5.0. Shifting the
    grid to pass through the start value makes what the reader sees the value computed with.
    """
    pos = math.log10(value) if log else value
    lo = pos - round((pos - min) / step) * step
    lo = lo if lo >= min - 1e-12 else lo + step
    hi = lo + math.floor((max - lo) / step + 1e-9) * step
    if log:
        return widgets.FloatLogSlider(value=value, base=10, min=lo, max=hi, step=step, **kwargs)
    return widgets.FloatSlider(value=value, min=lo, max=hi, step=step, **kwargs)


class Explorer(widgets.VBox):
    """Base class: subclasses define ``setup(fig)``, ``compute(**values)`` and ``draw(result)``.

    Two presets, chosen by ``slow``. A cheap widget (the default) answers a slider within a
    frame: until the browser reports the shown size it renders at 80 dpi (PNG encoding is a
    third of a frame or more), then at the shown size; it computes on one torch thread (on a shared machine,
    waking torch's pool for a few hundred thousand numbers cost 10x the work itself: 16 ms
    against 1.4 ms). A slow widget (``slow = True``: it trains or launches processes on each
    change) keeps the figure's resolution until the size is known, and torch's threads, and
    shows a progress bar under its controls that ``compute`` moves with :meth:`tick`.
    """

    figsize = (9, 4)
    slow = False  # True for widgets that train or launch processes on each change
    moving: tuple = ()  # artists redrawn every frame over a cached background (see animate)

    # Explorers of one class kept open at once: re-running a widget cell (a lecturer does,
    # all hour) closes the oldest beyond this, so figures do not pile up in the kernel.
    max_open = 4

    def __init__(self, controls: dict[str, widgets.Widget], figsize=None):
        _open.setdefault(type(self), []).append(weakref.ref(self))
        self.controls = controls
        self.result = None
        self.error: BaseException | None = None
        self.last_update_s = float("nan")
        self.fig = new_figure(figsize or self.figsize)
        self.figure_dpi = self.fig.dpi
        # As wide as the cell allows, but never taller than 55 % of the window, so controls,
        # figure and status fit a 1366x768 laptop screen together (object_fit keeps the aspect)
        self.image = figure_view(widgets.Layout(
            width="100%", max_width="1100px", max_height="55vh", object_fit="contain"))
        self.status = widgets.HTML(layout=widgets.Layout(min_height="1.6em"))
        self.errors = widgets.Output(layout=widgets.Layout(border="0px"))
        # only slow widgets have a bar: every change of its value is a message to the browser
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="working",
                                            layout=widgets.Layout(width="300px")) if self.slow else None
        with mpl.rc_context(STYLE):
            self.setup(self.fig)
        box = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
        bar = [self.progress] if self.slow else []
        super().__init__([box, *bar, self.image, self.status, self.errors])
        self.add_class("numlab-explorer")
        self.add_class(f"numlab-{type(self).__name__}")  # which one, for tests and benchmarks
        for control in controls.values():
            control.observe(self._on_change, names="value")
            _full_label(control)
        if "width_px" in self.image.trait_names():  # the browser reports the shown size
            self.image.observe(self._on_resize, names=["width_px", "pixel_ratio"])
        self.update()
        live = [r for r in _open[type(self)] if r() is not None and r().fig is not None]
        for old in live[:-self.max_open]:
            old().close()
        _open[type(self)] = live[-self.max_open:]

    def close(self) -> None:
        """Close the widget and everything it holds: its controls and outputs (which the
        widget registry would otherwise keep alive), its figure and cached pixels."""
        if self.fig is None:
            return
        for control in self.controls.values():
            control.unobserve(self._on_change, names="value")
        if "width_px" in self.image.trait_names():
            self.image.unobserve(self._on_resize, names=["width_px", "pixel_ratio"])
        for child in _descendants(self):
            if child is not self.layout:
                child.close()
        self.fig = None  # the explorer held the only reference
        self.__dict__.pop("_background", None)
        self.moving = ()
        super().close()
        self.layout.close()

    # --- what subclasses provide -------------------------------------------------------
    def setup(self, fig: Figure) -> None:
        """Create axes and every artist once."""
        raise NotImplementedError

    def compute(self, **values):
        """Call the compute layer for the current control values; return its result."""
        raise NotImplementedError

    def draw(self, result) -> str | None:
        """Update the artists from ``result``; may return an HTML status line."""
        raise NotImplementedError

    # --- the machinery -------------------------------------------------------------------
    @property
    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def _on_change(self, _change) -> None:
        self.update()

    def _on_resize(self, _change) -> None:
        # Only the pixels change: the same result, drawn again at the shown size.
        if self.result is None or self.fig is None:
            return
        try:
            self._show(self.render_png(), self.status.value)
        except Exception as err:  # shown to the reader, never swallowed
            self.error = err
            self.errors.outputs = ()
            self.errors.append_stderr(_short_traceback(err))

    def _show(self, png: bytes, status: str) -> None:
        # One message for the new frame and its alt text (FigureView), so they never disagree.
        with self.image.hold_sync():
            self.image.value = png
            if "alt" in self.image.trait_names():
                self.image.alt = self.alt_text(status)

    def tick(self, done: int, total: int | None = None) -> None:
        """Called from ``compute`` of a slow widget: ``done`` of ``total`` steps finished.

        The bar moves in steps of at least 1/25 of the run: each move is a message to the
        browser, and a tick per training step cost a quarter of a short run."""
        if total is not None:
            self.progress.max = max(1, int(total))
        done, top = min(int(done), self.progress.max), self.progress.max
        if done == top or done - self.progress.value >= max(1, top // 25):
            self.progress.value = done

    def update(self) -> None:
        """Recompute, redraw and re-render; on error keep the old figure and show why."""
        start = time.perf_counter()
        if self.slow:
            self.progress.value = 0  # each run starts its bar from the left
        try:
            with threads(None if self.slow else 1):
                result = self.compute(**self.values)
            if self.slow:
                self.progress.value = self.progress.max
            with mpl.rc_context(STYLE):
                status = self.draw(result)
            self._show(self.render_png(), status or "")
        except Exception as err:  # shown to the reader, never swallowed
            self.error = err
            self.errors.outputs = ()
            self.errors.append_stderr(_short_traceback(err))
            self.status.value = f"<b style='color:#c00'>Error: {type(err).__name__}: {err}</b>"
        else:
            self.error = None
            self.result = result
            self.errors.outputs = ()
            self.status.value = status or ""
        self.last_update_s = time.perf_counter() - start

    def animate(self, *artists):
        """Mark artists as moving: while ``background_key()`` is unchanged, a frame restores
        the cached background (axes, ticks, legends) and draws only these on top, which is
        matplotlib's blitting. A full Agg draw with tick labels costs 60-100 ms on a laptop
        core; a blitted frame a fraction of that. Returns the first artist."""
        for artist in artists:
            artist.set_animated(True)
        self.moving = (*self.moving, *artists)
        return artists[0]

    def background_key(self):
        """Whatever the static part of the figure depends on (axis limits, a chosen dtype)."""
        return None

    def render_png(self) -> bytes:
        canvas = self.fig.canvas
        shown = shown_pixels(self.image)  # as many pixels as the browser shows, once it says
        if shown:
            dpi = shown / self.fig.get_size_inches()[0]
        else:
            dpi = self.figure_dpi if self.slow else CHEAP_DPI
        if self.fig.dpi != dpi:
            self.fig.set_dpi(dpi)
        if not self.moving:
            canvas.draw()
        else:
            key = (self.background_key(), self.fig.dpi, canvas.get_width_height())
            if getattr(self, "_background_key", _UNSET) == key:
                canvas.restore_region(self._background)
            else:
                canvas.draw()  # everything but the animated artists
                self._background = canvas.copy_from_bbox(self.fig.bbox)
                self._background_key = key
            for artist in self.moving:
                self.fig.draw_artist(artist)
        return _encode_png(canvas)

    def _repr_mimebundle_(self, **kwargs):
        # The live widget for JupyterLab/Voila, plus a static PNG of the current figure so a
        # notebook committed with outputs shows the figure on GitHub and nbviewer.
        parent = getattr(super(), "_repr_mimebundle_", None)
        if parent is not None:  # ipywidgets 8
            bundle = parent(**kwargs)
        else:  # ipywidgets 7 (Colab's front end) displays through _ipython_display_ instead
            bundle = {"text/plain": repr(self), WIDGET_VIEW: {
                "version_major": 2, "version_minor": 0, "model_id": self.model_id}}
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        if data is None:
            return bundle
        data["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        return data, {**(meta or {}), "image/png": {"alt": self.alt_text()}}

    def alt_text(self, status: str | None = None) -> str:
        """What the current frame shows, in words: the figure's description and the status
        line (which states the result drawn)."""
        status = self.status.value if status is None else status
        status = " ".join(re.sub(r"<[^>]+>", "", html.unescape(status)).split())
        return describe(self.fig) + (f" {status}" if status else "")

    if hasattr(widgets.Widget, "_ipython_display_"):  # ipywidgets 7: the same bundle
        def _ipython_display_(self, **kwargs):
            from IPython.display import display

            data, metadata = self._repr_mimebundle_()
            display(data, metadata=metadata, raw=True)
            self._handle_displayed(**kwargs)


_UNSET = object()
_open: dict[type, list] = {}  # class -> weak references to its open explorers, oldest first


def _descendants(box) -> list:
    """Every widget under ``box``: children, and each one's layout and style (widgets too)."""
    out = []
    for child in getattr(box, "children", ()):
        out += [*_descendants(child), child]
    parts = [getattr(box, name, None) for name in ("layout", "style")]
    return out + [p for p in parts if isinstance(p, widgets.Widget)]


def _full_label(control) -> None:
    # ipywidgets cuts a description at a fixed width ("per-devic..."); size it to the text.
    style = getattr(control, "style", None)
    if style is not None and getattr(style, "description_width", None) == "":
        style.description_width = "initial"


def _encode_png(canvas) -> bytes:
    # A minimal PNG writer (RGB, no row filter, zlib level 1): the image only travels to a
    # browser on the same machine or LAN, and skipping Pillow's per-row filter search makes
    # encoding about twice as fast (a few ms a frame). The pixels are exactly the canvas's.
    width, height = canvas.get_width_height()
    rgba = np.asarray(canvas.buffer_rgba())
    rows = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "None" for every row
    rows[:, 1:].reshape(height, width, 3)[...] = rgba[..., :3]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join((b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header),
                     _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)), _chunk(b"IEND", b"")))


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _short_traceback(err: BaseException) -> str:
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return "".join(lines[-4:])
