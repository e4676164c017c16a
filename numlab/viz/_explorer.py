"""The widget pattern every ``explore_*`` follows.

An :class:`Explorer` owns a dict of controls, one figure whose artists are created once
(:meth:`setup`) and then only updated (:meth:`draw`), and two visible outputs: a status
line and an error box. Each control change runs :meth:`compute` (which calls the compute
layer), then :meth:`draw`, then renders the figure to PNG into an ``ipywidgets.Image``.
Errors raised by a callback are shown in the error box (JupyterLab would otherwise swallow
them) and kept in ``.error``; the latest good result is ``.result``.
"""
from __future__ import annotations

import io
import math
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

# Readable on a projector at the back of a room; used for every figure numlab draws.
STYLE = {
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
    """A Figure that shows itself as a PNG when it ends a notebook cell (no pyplot needed)."""

    def _repr_png_(self):
        buf = io.BytesIO()
        # Fast PNG compression: the image only travels to the browser next door.
        self.savefig(buf, format="png", pil_kwargs={"compress_level": 1})
        return buf.getvalue()


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
    """Base class: subclasses define ``setup(fig)``, ``compute(**values)`` and ``draw(result)``."""

    figsize = (9, 4)
    slow = False  # True for widgets that train or launch processes on each change
    dpi = None  # render resolution; None keeps the figure's own
    moving: tuple = ()  # artists redrawn every frame over a cached background (see animate)
    frozen: tuple = ()  # artists drawn once, then pasted as pixels (see freeze)
    # How many backgrounds (one per background_key) to keep: more than one suits a widget
    # whose background depends only on its key, so a slider dragged back reuses them.
    backgrounds_kept = 1
    # torch intra-op threads while compute runs (None: leave torch's setting alone). 1 suits
    # small sweeps: on a shared machine with busy cores, waking torch's pool for a few
    # hundred thousand numbers cost 10x the work itself (16 ms against 1.4 ms).
    compute_threads: int | None = None

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
        # As wide as the cell allows, but never taller than 55 % of the window, so controls,
        # figure and status fit a 1366x768 laptop screen together (object_fit keeps the aspect)
        self.image = widgets.Image(format="png", layout=widgets.Layout(
            width="100%", max_width="1100px", max_height="55vh", object_fit="contain"))
        self.status = widgets.HTML(layout=widgets.Layout(min_height="1.6em"))
        self.errors = widgets.Output(layout=widgets.Layout(border="0px"))
        with mpl.rc_context(STYLE):
            self.setup(self.fig)
        box = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([box, self.image, self.status, self.errors])
        self.add_class("numlab-explorer")
        for control in controls.values():
            control.observe(self._on_change, names="value")
            _full_label(control)
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
        for child in _descendants(self):
            if child is not self.layout:
                child.close()
        self.fig = None  # the explorer held the only reference
        for name in ("_background", "_backgrounds", "_frozen_pixels"):
            self.__dict__.pop(name, None)
        self.moving = self.frozen = ()
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

    def update(self) -> None:
        """Recompute, redraw and re-render; on error keep the old figure and show why."""
        start = time.perf_counter()
        try:
            with threads(self.compute_threads):
                result = self.compute(**self.values)
            with mpl.rc_context(STYLE):
                status = self.draw(result)
            self.image.value = self.render_png()
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

    def freeze(self, *artists, pad: float = 2):
        """Mark artists whose look and place never change (a legend outside the axes, an
        x-axis label) on a plain background that nothing else draws on: they are drawn once,
        and each later full redraw pastes their pixels instead of laying out and rendering
        the text again (each text costs about a millisecond). Needs a fixed layout (no
        layout engine after the first render). The pixels kept are the artist's window
        extent plus ``pad`` pixels each side: enough to cover what sticks out of it (a
        legend's large markers), not so much that it covers anything that moves. Returns
        the first artist."""
        self._frozen_pad = {**getattr(self, "_frozen_pad", {}), **{id(a): pad for a in artists}}
        self.frozen = (*self.frozen, *artists)
        self._frozen_pixels = None
        return artists[0]

    def background_key(self):
        """Whatever the static part of the figure depends on (axis limits, a chosen dtype)."""
        return None

    def render_png(self) -> bytes:
        canvas = self.fig.canvas
        if self.dpi and self.fig.dpi != self.dpi:
            self.fig.set_dpi(self.dpi)
        if not self.moving:
            self._draw_full()
        else:
            key = (self.background_key(), self.fig.dpi, canvas.get_width_height())
            # (keys need to be hashable only where more than one background is kept)
            kept = self.__dict__.setdefault("_backgrounds", {}) if self.backgrounds_kept > 1 else {}
            if getattr(self, "_background_key", _UNSET) == key:
                canvas.restore_region(self._background)
            elif self.backgrounds_kept > 1 and key in kept:  # seen before: pixels still hold
                self._background = kept.pop(key)
                kept[key] = self._background  # most recently used last
                self._background_key = key
                canvas.restore_region(self._background)
            else:
                self._draw_full()  # everything but the animated artists
                self._background = canvas.copy_from_bbox(self.fig.bbox)
                self._background_key = key
                if self.backgrounds_kept > 1:
                    kept[key] = self._background
                    while len(kept) > self.backgrounds_kept:
                        del kept[next(iter(kept))]  # the least recently used
            for artist in self.moving:
                self.fig.draw_artist(artist)
        return _encode_png(canvas)

    def _draw_full(self) -> None:
        canvas = self.fig.canvas
        if not self.frozen:
            canvas.draw()
            return
        stamp = (self.fig.dpi, canvas.get_width_height())
        pixels = getattr(self, "_frozen_pixels", None)
        if pixels is None or pixels[0] != stamp:  # first frame (or a new size): draw them
            canvas.draw()
            renderer = canvas.get_renderer()
            pads = getattr(self, "_frozen_pad", {})
            regions = [canvas.copy_from_bbox(a.get_window_extent(renderer).padded(pads.get(id(a), 2)))
                       for a in self.frozen if a.get_visible()]
            self._frozen_pixels = (stamp, regions)
            return
        shown = [a for a in self.frozen if a.get_visible()]
        for artist in shown:
            artist.set_visible(False)
        try:
            canvas.draw()
        finally:
            for artist in shown:
                artist.set_visible(True)
        for region in pixels[1]:
            canvas.restore_region(region)

    def _repr_mimebundle_(self, **kwargs):
        # The live widget for JupyterLab/Voila, plus a static PNG of the current figure so a
        # notebook committed with outputs shows the figure on GitHub and nbviewer.
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if data is not None:
            import base64

            data["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        return bundle


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
