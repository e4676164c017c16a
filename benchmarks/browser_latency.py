"""What a reader feels, in a real Chromium: control change to new figure on screen, per widget
and control, in lecture mode (Voila) and in JupyterLab; Voila's time to a complete first
page (and to a reload, and until the kernel of a closed page has ended) and JupyterLab's Run
All, per notebook.

The peer, same run: the headless update of the same widget at the same figure size (compute,
draw and PNG; no comm, no transfer, no decode), from the widgets this process builds itself.

In the page, a capture listener stamps the input event (key press, option chosen) and the
time ends when the widget's <img> has decoded the frame that followed (``img.decode()``
after its ``load``). Sliders move by ArrowRight steps across their range (then back by
ArrowLeft); dropdowns and toggle buttons go through their options. Slow widgets also report
the time to first visible progress (the bar's first move).

usage: python benchmarks/browser_latency.py [--notebooks 00 03] [--steps 6] [--front voila lab]
Needs Chromium (as the browser tests: NUMLAB_CHROMIUM or /usr/bin/chromium). `make bench`
runs it; `make test` does not.
"""
from __future__ import annotations

import argparse
import pathlib
import secrets
import sys
import time

import psutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _table import markdown, median, p95  # noqa: E402
from widget_latency import explorers, measure  # noqa: E402

from tests.browser.conftest import CHROMIUM_ARGS, VIEWPORT, _system_chromium  # noqa: E402
from tests.browser.pages import OFFLINE_ARGS  # noqa: E402
from tests.browser.servers import make_target, notebooks, start_lab, temp_home  # noqa: E402

# Stamps the input; resolves with the ms from it to the decoded next frame of explorer i.
ARM_JS = """([index, drag]) => {
    const explorer = document.querySelectorAll(".numlab-explorer")[index];
    const img = explorer.querySelector("img.widget-image");
    const state = { t0: null, frame: null, progress: null, frames: 0 };
    window.__numlab = state;
    const stamp = () => { state.t0 = performance.now(); };
    if (drag) {  // a drag ends when the pointer is let go; frames sent during it are counted
        window.addEventListener("pointerup", stamp, { capture: true, once: true });
    } else {
        for (const kind of ["keydown", "change", "click"]) {
            explorer.addEventListener(kind, stamp, { capture: true, once: true });
        }
    }
    const bar = explorer.querySelector(".widget-hprogress .progress-bar");
    if (bar) {
        const seen = new MutationObserver(() => {
            if (state.t0 !== null && state.progress === null) {
                state.progress = performance.now() - state.t0;
                seen.disconnect();
            }
        });
        seen.observe(bar, { attributes: true });
    }
    // The frame that counts is the last one: after the input, a new src, decoded, and no
    // other src for 400 ms (a drag's earlier values may still arrive after the pointer is up).
    let last = img.src, changed = null;
    const check = () => {
        const now = performance.now();
        if (img.src !== last) {
            last = img.src;
            state.frames += 1;
            if (state.t0 !== null) {
                const src = img.src;
                changed = now;
                img.decode().then(() => {
                    if (img.src === src) state.decoded = performance.now() - state.t0;
                }, () => {});
            }
        }
        if (changed !== null && now - changed > 400 && state.decoded !== undefined) {
            state.frame = state.decoded;
            return;
        }
        requestAnimationFrame(check);
    };
    requestAnimationFrame(check);
}"""
DONE_JS = "() => window.__numlab && window.__numlab.frame !== null"


def drag(slider, handle, fraction: float) -> None:
    """Drag a slider's handle by ``fraction`` of its track, in 8 pointer moves."""
    page = slider.page
    track = slider.locator(".noUi-target").first.bounding_box()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    to = min(max(x + fraction * track["width"], track["x"] + 2), track["x"] + track["width"] - 2)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(to, y, steps=8)
    page.mouse.up()


def actions(explorer, steps: int, drags: int = 2):
    """(control label, how, perform) for each control of an explorer on the page: sliders by
    ``steps`` arrow keys each way and ``drags`` drags each way, dropdowns and toggle buttons
    through their options."""
    out = []
    sliders = explorer.locator(".widget-slider")
    for i in range(sliders.count()):
        slider = sliders.nth(i)
        if slider.locator(".noUi-target[disabled]").count():  # off until another control says
            continue
        label = slider.locator(".widget-label").first.inner_text().strip() or f"slider {i}"
        handle = slider.locator(".noUi-handle").first
        keys = ["ArrowRight"] * steps + ["ArrowLeft"] * steps
        out += [(label, "key", lambda h=handle, k=k: (h.focus(), h.press(k))) for k in keys]
        if drags:
            out += [(label, "drag", lambda s=slider, h=handle, d=d: drag(s, h, d))
                    for d in [0.25, -0.25] * drags]
    selects = explorer.locator(".widget-dropdown select")
    for i in range(selects.count()):
        select = selects.nth(i)
        if select.is_disabled():  # e.g. a device list with only the CPU in it
            continue
        label = explorer.locator(".widget-dropdown").nth(i).locator(".widget-label").first \
            .inner_text().strip() or f"dropdown {i}"
        start = select.input_value()
        options = select.locator("option").evaluate_all("(os) => os.map(o => o.value)")
        for value in [o for o in options if o != start] + [start]:
            out.append((label, "option", lambda s=select, v=value: s.select_option(v)))
    toggles = explorer.locator(".widget-toggle-buttons")
    for i in range(toggles.count()):
        buttons = toggles.nth(i).locator("button")
        label = toggles.nth(i).locator(".widget-label").first.inner_text().strip() or f"toggle {i}"
        order = list(range(buttons.count()))
        active = [j for j in order if "mod-active" in (buttons.nth(j).get_attribute("class") or "")]
        for j in [j for j in order if j not in active] + active:
            button = buttons.nth(j)
            out.append((label, "button", lambda b=button: b.click()))
    return out


SHOWN_JS = """() => [...document.querySelectorAll(".numlab-explorer")].map((e) => ({
    name: [...e.classList].find((c) => c.startsWith("numlab-") && c !== "numlab-explorer"),
    slow: !!e.querySelector(".widget-hprogress"),
    width: Math.round(e.querySelector("img.widget-image").getBoundingClientRect().width),
}))"""


def time_explorers(page, steps):
    """Rows of (explorer, control, how, frame ms, progress ms) for every action, and what
    each explorer on the page is (class name, slow, shown width)."""
    rows = []
    shown = page.evaluate(SHOWN_JS)
    explorers = page.locator(".numlab-explorer")
    for index in range(explorers.count()):
        explorer = explorers.nth(index)
        explorer.scroll_into_view_if_needed()
        slow = shown[index]["slow"]
        name = shown[index]["name"].removeprefix("numlab-")
        for label, how, perform in actions(explorer, 2 if slow else steps, 1 if slow else 2):
            page.evaluate(ARM_JS, [index, how == "drag"])
            try:
                perform()
            except Exception as err:  # a control that cannot be used now: say so, go on
                print(f"skipped {name} {label} {how}: {str(err).splitlines()[0]}", file=sys.stderr)
                continue
            try:
                page.wait_for_function(DONE_JS, timeout=30_000 if slow else 5_000)
            except Exception:  # no new frame: the value did not change (an end of the range)
                continue
            state = page.evaluate("() => window.__numlab")
            rows.append((f"#{index} {name}", label, how, state["frame"], state["progress"],
                         state["frames"]))
    return rows, shown


READY_JS = """() => {
    const imgs = [...document.querySelectorAll(".numlab-explorer img.widget-image")];
    return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


def kernels(server) -> list:
    """The kernel processes under a server."""
    try:
        children = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            pass
    return out


def load(page, url) -> float:
    """Seconds from navigation to every widget's figure decoded."""
    start = time.perf_counter()
    page.goto(url, wait_until="load", timeout=240_000)
    page.wait_for_function(READY_JS, timeout=240_000)
    return time.perf_counter() - start


def voila_page(page, notebook, home):
    """`make present NB=NN`: (server, s to the first complete page, opened as soon as the
    server answers)."""
    server = make_target("present", home, NB=notebook.name[:2])
    try:
        server.wait("/numlab-probe", any_status=True)
        return server, load(page, server.url + "/")
    except BaseException:
        server.stop()
        raise


def leave_and_reload(page, server, limit_s: float = 240.0) -> tuple[float, float, int]:
    """Leave the page (as a closed tab does), then: s until the kernel that served it has
    ended, the page's load time once the server is quiet again (a lecturer's reload), and the
    MB the server's kernels hold once back to rest."""
    before = {k.pid for k in kernels(server)}
    page.goto("about:blank")
    start = time.perf_counter()
    ended = float("nan")
    while time.perf_counter() - start < limit_s:
        alive = {k.pid for k in kernels(server)}
        if len(before & alive) < len(before):
            ended = time.perf_counter() - start
            break
        time.sleep(0.5)
    while time.perf_counter() - start < limit_s:  # a preheating kernel works; then all rest
        if all(k.cpu_percent(0.5) < 5 for k in kernels(server)):
            break
    resident = sum(k.memory_info().rss for k in kernels(server)) >> 20
    return ended, load(page, server.url + "/"), resident


def headless_peers(seen) -> dict[tuple[str, str], tuple]:
    """Per (explorer class, control label) on the pages: the headless update's median and
    p95 (ms) at the width the browser showed it, over widget_latency's sweep of that control,
    and the explorer's comm messages and kB per change."""
    widths = {}
    for entry in seen:
        widths.setdefault(entry["name"].removeprefix("numlab-"), []).append(entry["width"])
    peers, done = {}, set()
    for _label, fn in explorers():
        w = fn()
        name = type(w).__name__
        w.close()
        if name in widths and name not in done:
            done.add(name)
            _slow, by_control, _render, _errors, (messages, size, _png) = measure(
                fn, width_px=round(median(widths[name])))
            every = [t for ts in by_control.values() for t in ts]
            peers[name, None] = (median(every) * 1e3, p95(every) * 1e3, messages, size / 1e3)
            for control, times in by_control.items():
                if times:
                    peers[name, control] = (median(times) * 1e3, p95(times) * 1e3, messages,
                                            size / 1e3)
    return peers


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebooks", nargs="*", default=None, help="e.g. 00 03 (default all)")
    parser.add_argument("--steps", type=int, default=6, help="arrow steps per slider and way")
    parser.add_argument("--front", nargs="*", default=["voila", "lab"])
    parser.add_argument("--wait", type=float, default=240.0,
                        help="s to wait for a closed page's kernel to end")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    chosen = [nb for nb in notebooks() if args.notebooks is None or nb.name[:2] in args.notebooks]
    home = temp_home("numlab-bench-")
    frames, pages, runs, seen = [], [], [], []
    with sync_playwright() as manager:
        browser = manager.chromium.launch(executable_path=_system_chromium(), headless=True,
                                          args=CHROMIUM_ARGS + OFFLINE_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(10_000)
        if "voila" in args.front:
            for nb in chosen:
                server, first = voila_page(page, nb, home / f"voila-{nb.stem}")
                try:
                    rows, shown = time_explorers(page, args.steps)
                    seen += shown
                    ended, reload, resident = leave_and_reload(page, server, args.wait)
                finally:
                    page.goto("about:blank")
                    server.stop()
                pages.append(("voila", nb.stem, first, reload, ended, resident))
                print(f"voila {nb.stem}: {len(rows)} changes, page {first:.1f} s",
                      file=sys.stderr, flush=True)
                frames += [("voila", nb.stem, *row) for row in rows]
        if "lab" in args.front:
            lab = start_lab(home / "lab", chosen[0].parent, secrets.token_hex(16))
            try:
                for nb in chosen:
                    page.goto(f"{lab.url}/lab/tree/{nb.name}?reset&token={lab.token}")
                    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=90_000)
                    page.wait_for_function("""() => document.querySelector("#jp-main-statusbar")
                        ?.textContent.includes("| Idle")""", timeout=120_000)
                    start = time.perf_counter()
                    page.locator('.lm-MenuBar-itemLabel:text-is("Run")').click()
                    page.locator('.lm-Menu-itemLabel:text-is("Run All Cells")').click()
                    page.wait_for_function("""() => {
                        const p = [...document.querySelectorAll(".jp-CodeCell .jp-InputArea-prompt")]
                            .map(e => e.textContent.trim());
                        return p.length && p.every(t => /^\\[\\d+\\]:$/.test(t));
                    }""", timeout=300_000)
                    page.wait_for_function(READY_JS, timeout=120_000)
                    runs.append((nb.stem, time.perf_counter() - start))
                    rows, shown = time_explorers(page, args.steps)
                    seen += shown
                    frames += [("lab", nb.stem, *row) for row in rows]
                    page.goto("about:blank")
            finally:
                lab.stop()
        browser.close()

    peers = headless_peers(seen)
    groups: dict[tuple, list] = {}
    for front, stem, widget, label, how, frame, progress, count in frames:
        groups.setdefault((front, stem, widget, label, how), []).append((frame, progress, count))
    table = []
    for (front, stem, widget, label, how), got in groups.items():
        ms = [g[0] for g in got]
        prog = [g[1] for g in got if g[1] is not None]
        name = widget.split(" ", 1)[1]  # a control the widget does not own: its mean update
        peer = peers.get((name, label)) or peers.get((name, None))
        table.append([front, f"{stem[:2]} {widget}", label, how, len(ms), f"{median(ms):.0f}",
                      f"{p95(ms):.0f}", f"{median(prog):.0f}" if prog else "-",
                      f"{median([g[2] for g in got]):.0f}",
                      f"{peer[0]:.0f} / {peer[1]:.0f}" if peer else "-",
                      f"{peer[2]:.1f} / {peer[3]:.0f}" if peer else "-"])
    print("### Widget latency in the browser (input event to the last frame decoded)\n")
    print(markdown(["front end", "widget", "control", "how", "n", "median ms", "p95 ms",
                    "first progress ms", "frames shown", "headless peer median / p95 ms",
                    "headless messages / kB per change"], table))
    if pages:
        print("\n### Lecture mode (Voila): page loads and kernels\n")
        print(markdown(["notebook", "first complete page s (server just started)",
                        "reload s (server at rest)", "closed page's kernel ended after s",
                        "kernels' MB at rest"],
                       [[s, f"{f:.1f}", f"{r:.1f}", f"{e:.0f}", m] for _, s, f, r, e, m in pages]))
    if runs:
        print("\n### JupyterLab: Run All (to every figure decoded)\n")
        print(markdown(["notebook", "Run All s"], [[s, f"{t:.1f}"] for s, t in runs]))


if __name__ == "__main__":
    main()
