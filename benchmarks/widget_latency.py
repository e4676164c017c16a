"""Latency of every `explore_*` widget: set each control to a series of values, headless, and
time each update including the figure render (peer: rendering the same figure once, alone).

Goal for cheap widgets: median <= 50 ms, p95 <= 100 ms per update. Widgets that train a
model on each change (marked slow) are held to "about a second": median <= 1 s, p95 <= 1.5 s.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import sys
import time

os.environ.setdefault("MPLBACKEND", "Agg")

import ipywidgets as widgets  # noqa: E402
from _table import markdown, median, p95  # noqa: E402

import numlab.viz  # noqa: E402


def values_for(control, n: int = 6) -> list:
    """A series of values that sweeps one control across its range, ending where it began."""
    start = control.value
    if isinstance(control, widgets.FloatLogSlider):
        lo, hi = control.min, control.max
        series = [control.base ** (lo + (hi - lo) * i / (n - 1)) for i in range(n)]
    elif isinstance(control, widgets.FloatSlider | widgets.IntSlider | widgets.FloatRangeSlider):
        lo, hi = control.min, control.max
        series = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        if isinstance(control, widgets.IntSlider):
            series = sorted({int(round(v)) for v in series})
    elif hasattr(control, "options") and control.options:
        opts = control.options
        series = [o[1] if isinstance(o, tuple) else o for o in opts]
    elif isinstance(control, widgets.Checkbox | widgets.ToggleButton):
        series = [not start, start]
    elif isinstance(control, widgets.FloatText | widgets.BoundedFloatText):
        series = [start * f for f in (0.5, 3.0, 1e3, 1e-3)]
    else:
        series = []
    return [v for v in series if v != start] + [start]


def explorers():
    for info in pkgutil.iter_modules(numlab.viz.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"numlab.viz.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("explore_") and fn.__module__ == module.__name__:
                yield f"{info.name}.{name}", fn


class Messages:
    """Counts the comm messages widgets send to the browser, and their bytes (JSON state and
    binary buffers, the PNG among them), while in a ``with`` block. Headless there is no
    browser: the count is of what would go out (a control set from Python sends its own new
    value once, where a browser's change gets one echo back instead)."""

    def __enter__(self):
        self.count, self.bytes, self.png = 0, 0, 0
        self._send = widgets.Widget._send
        counter = self

        def send(widget, msg, buffers=None):
            counter.count += 1
            counter.bytes += len(json.dumps(msg, default=str))
            for buf in buffers or ():
                counter.bytes += memoryview(buf).nbytes
                if bytes(memoryview(buf)[:8]) == b"\x89PNG\r\n\x1a\n":
                    counter.png += memoryview(buf).nbytes
            return counter._send(widget, msg, buffers)

        widgets.Widget._send = send
        return self

    def __exit__(self, *exc):
        widgets.Widget._send = self._send


def measure(fn, width_px: int = 0):
    """Time every control of the widget ``fn()`` builds across its range.

    ``width_px``: the figure's width as a browser shows it (0: before any browser said).
    Returns (slow, {control description: [seconds per change]}, render alone s, errors,
    (messages, bytes, PNG bytes) per change)."""
    w = fn()
    if width_px and "width_px" in w.image.trait_names():
        w.image.width_px = width_px
    # A widget that trains on each change says so (Explorer.slow), or at least does not
    # update while a slider is being dragged.
    sliders = [c for c in w.controls.values()
               if isinstance(c, widgets.FloatSlider | widgets.IntSlider | widgets.FloatLogSlider)]
    slow = w.slow or any(c.continuous_update is False for c in sliders)
    render = []
    for _ in range(5):
        t = time.perf_counter()
        w.render_png()
        render.append(time.perf_counter() - t)
    by_control, errors, changes = {}, 0, 0
    with Messages() as sent:
        for name, control in w.controls.items():
            times = by_control.setdefault(control.description or name, [])
            for value in values_for(control):
                t = time.perf_counter()
                control.value = value  # the observer runs compute + draw + render synchronously
                times.append(time.perf_counter() - t)
                errors += w.error is not None
                changes += 1
    w.close()
    per = max(changes, 1)
    return slow, by_control, median(render), errors, (sent.count / per, sent.bytes / per,
                                                       sent.png / per)


def main(selected: list[str]) -> None:
    rows = []
    for label, fn in explorers():
        if selected and not any(s in label for s in selected):
            continue
        slow, by_control, render, errors, (messages, size, png) = measure(fn)
        times = [t for ts in by_control.values() for t in ts]
        if not times:
            continue
        med, hi = median(times) * 1e3, p95(times) * 1e3
        target = "1000 / 1500 ms" if slow else "50 / 100 ms"
        ok = (med <= 1000 and hi <= 1500) if slow else (med <= 50 and hi <= 100)
        rows.append([label, "slow" if slow else "cheap", len(times), f"{med:.0f}", f"{hi:.0f}",
                     f"{render * 1e3:.0f}", f"{med / (render * 1e3):.1f}x", f"{messages:.1f}",
                     f"{size / 1e3:.0f} ({png / 1e3:.0f})", target, "yes" if ok else "no", errors])
    print("### Widget latency (headless, per control change, including the PNG render)\n")
    print(markdown(["widget", "kind", "updates", "median ms", "p95 ms", "render alone ms",
                    "update / render", "messages / change", "kB / change (PNG)",
                    "goal (median / p95)", "met", "errors"], rows))


if __name__ == "__main__":
    main(sys.argv[1:])
