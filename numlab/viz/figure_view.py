"""The live figure of a widget: a PNG the browser shows with alt text, at its own pixel size.

``ipywidgets.Image`` draws an ``<img>`` with no alt text (a screen reader announces
"image", axe-core calls it critical) and shows whatever pixel size it was sent, stretched to
the cell: a figure rendered 720 px wide looks soft at 1008 px, and softer on a HiDPI screen.
:class:`FigureView` is the same ``<img>`` with two additions, in a dozen lines of JavaScript
(anywidget, so no build step and no extension of our own): ``alt`` follows the figure, and
the browser reports the box's width in CSS pixels and the screen's device pixel ratio, so the
kernel renders exactly as many pixels as are shown.

Colab renders only ipywidgets' own controls unless a notebook enables its custom widget
manager, and ipywidgets 7 front ends predate anywidget's protocol; there (and where anywidget
is not installed) :func:`figure_view` returns a plain ``ipywidgets.Image``, as before.
"""
from __future__ import annotations

import sys

import ipywidgets as widgets

try:
    import anywidget
    import traitlets
except ImportError:  # numlab still works without it: the plain Image below
    anywidget = None

MAX_PIXEL_RATIO = 2  # a 3x phone screen gets 2x: sharper than 1x, and 2.25x fewer pixels

# The <img> keeps ipywidgets' class name, so styles and tests that know the Image widget
# find it. Reports are debounced: dragging a window edge sends one, not one per pixel.
# ipywidgets 8 gives a slider's handle (role="slider") no accessible name: its description
# is a <label> tied to nothing, so a screen reader says "slider" and axe-core calls it
# serious. Once the figure is on the page, its view names the handles of its own explorer.
ESM = """
function nameSliders(el) {
  const explorer = el.closest(".numlab-explorer");
  if (!explorer) return;
  for (const slider of explorer.querySelectorAll(".widget-slider")) {
    const label = slider.querySelector(".widget-label")?.textContent.trim();
    for (const handle of slider.querySelectorAll(".noUi-handle")) {
      if (label && !handle.hasAttribute("aria-label")) handle.setAttribute("aria-label", label);
    }
  }
}

// A data: URL, not a blob: one (as ipywidgets.Image uses): Chromium loads a blob URL through
// its browser process, 5-11 ms for a frame of 50-60 kB on a 2-core machine, and decodes a data
// URL of the same PNG, base64 encoding included, in about 1 ms.
function dataUrl(bytes) {
  const u8 = ArrayBuffer.isView(bytes)  // a DataView from ipywidgets' buffers
    ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) : new Uint8Array(bytes);
  let text = "";
  for (let i = 0; i < u8.length; i += 0x8000) {  // in chunks: apply() takes only so many arguments
    text += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
  }
  return "data:image/png;base64," + btoa(text);
}

function render({ model, el }) {
  const img = document.createElement("img");
  img.className = "widget-image numlab-figure";
  const show = () => {
    const bytes = model.get("value");
    if (bytes && bytes.byteLength) img.src = dataUrl(bytes);
  };
  const label = () => { img.alt = model.get("alt"); };
  model.on("change:value", show);
  model.on("change:alt", label);
  label();
  show();
  el.appendChild(img);
  let timer = null;
  const report = () => {
    nameSliders(el);
    const width = Math.round(el.getBoundingClientRect().width);
    const ratio = window.devicePixelRatio || 1;
    if (width > 0 && (width !== model.get("width_px") || ratio !== model.get("pixel_ratio"))) {
      model.set({ width_px: width, pixel_ratio: ratio });
      model.save_changes();
    }
  };
  const observer = new ResizeObserver(() => { clearTimeout(timer); timer = setTimeout(report, 120); });
  observer.observe(el);
  return () => {
    observer.disconnect();
    clearTimeout(timer);
    model.off("change:value", show);
    model.off("change:alt", label);
  };
}
export default { render };
"""
# anywidget puts this style on the page (JupyterLab and Voila alike). Besides the figure's
# box: ipywidgets draws no focus ring on a slider handle, so a keyboard user cannot see
# which control the arrow keys move; numlab's explorers get one.
CSS = """
.numlab-figure { display: block; width: 100%; height: auto; max-height: 55vh; object-fit: contain; }
.numlab-explorer .noUi-handle:focus-visible, .numlab-explorer select:focus-visible,
.numlab-explorer button:focus-visible, .numlab-explorer input:focus-visible {
  outline: 3px solid #0072B2 !important; outline-offset: 2px; box-shadow: 0 0 0 5px #ffffff;
}
"""

if anywidget is not None:
    class FigureView(anywidget.AnyWidget):
        """A PNG with alt text; ``width_px`` and ``pixel_ratio`` come from the browser."""

        _esm = ESM
        _css = CSS
        value = traitlets.Bytes(b"").tag(sync=True)
        alt = traitlets.Unicode("").tag(sync=True)
        width_px = traitlets.Int(0).tag(sync=True)  # CSS pixels of the shown box; 0: not shown
        pixel_ratio = traitlets.Float(1.0).tag(sync=True)


def figure_view(layout: widgets.Layout):
    """The live figure widget for this front end: a :class:`FigureView` where it can be
    drawn (JupyterLab, Voila, Notebook 7 under ipywidgets 8), else an ``ipywidgets.Image``."""
    modern = widgets.__version__.split(".")[0] not in ("7",)
    if anywidget is not None and modern and "google.colab" not in sys.modules:
        return FigureView(layout=layout)
    return widgets.Image(format="png", layout=layout)


def shown_pixels(view) -> int:
    """Device pixels across the shown figure (0 while no browser has reported a size)."""
    width = getattr(view, "width_px", 0)
    ratio = min(max(float(getattr(view, "pixel_ratio", 1.0)), 1.0), MAX_PIXEL_RATIO)
    return round(width * ratio)
