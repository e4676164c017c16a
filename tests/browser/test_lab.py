"""Every notebook as a reader meets it: JupyterLab in a real Chromium.

For each ``notebooks/NN_*.ipynb``: open it, wait for the kernel, clear the committed outputs,
Run > Run All Cells, then check that no cell raised or wrote to stderr, that every widget the
kernel sent is rendered live (no "Error displaying widget", no fallback PNG), and that moving
one control of the main widget redraws its figure. The main widget is saved as
``docs/screenshots/NN_topic.png`` (the README shows these).
"""
from __future__ import annotations

import json
import time

import pytest

from .pages import (
    REPORTS,
    SHOWN_SIZE_JS,
    STDERR,
    WIDGET_MIME,
    axe_audit,
    change_and_compare,
    error_texts,
    focus_ring,
    screenshot_failure,
    wait_image_loaded,
    widget_failures,
)
from .servers import notebooks

pytestmark = pytest.mark.browser

NOTEBOOKS = notebooks()
LAPTOP = {"width": 1366, "height": 768 - 110}  # 1366x768 less the browser's tab and address bars
# Every explorer (controls, figure, status) that does not fit in the notebook panel, with its
# size and its parts' heights top to bottom; an empty list when all fit.
MISFITS_JS = """() => {
  const panel = document.querySelector(".jp-NotebookPanel-notebook").getBoundingClientRect();
  const parts = (e) => [...e.children].map(c =>
    `${c.className.split(" ").filter(n => n.startsWith("widget-") || n.startsWith("numlab-")).join(".")
     || c.tagName} ${Math.round(c.getBoundingClientRect().height)} px`).join(", ");
  return [...document.querySelectorAll(".numlab-explorer")].flatMap((e, index) => {
    const box = e.getBoundingClientRect();
    if (box.height <= panel.height && box.width <= panel.width + 1) return [];
    return [`explorer ${index}: ${Math.round(box.width)}x${Math.round(box.height)} px in a ` +
            `${Math.round(panel.width)}x${Math.round(panel.height)} panel (${parts(e)})`];
  });
}"""
# window.jupyterapp (--LabApp.expose_app_in_browser): open a notebook in the loaded tab, and
# close every document without the "save changes?" dialog (autosave is off in the tests).
APP_READY_JS = "() => window.jupyterapp?.shell?.isAttached && !!document.querySelector('.jp-LabShell')"
OPEN_JS = """async (path) => {
  await window.jupyterapp.restored;
  await window.jupyterapp.commands.execute("docmanager:open", {path, factory: "Notebook"});
}"""
CLOSE_ALL_JS = """() => {
  for (const widget of Array.from(window.jupyterapp.shell.widgets("main"))) {
    if (widget.context) widget.context.model.dirty = false;
    widget.dispose();
  }
}"""
RUN_TIMEOUT_MS = 240_000  # the slowest notebook, run all, on a busy 2-core machine
WIDGET_TIMEOUT_MS = 60_000  # one redraw of a slow (training) widget
TOP_OUTPUTS = ".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output"

# What the kernel sent, read from the notebook model (window.jupyterapp), per code cell.
MODEL_OUTPUTS_JS = """() => {
    const model = window.jupyterapp.shell.currentWidget.content.model;
    const cells = [];
    for (let i = 0; i < model.cells.length; i++) {
        const cell = model.cells.get(i);
        if (cell.type === "code") cells.push(cell.outputs.toJSON());
    }
    return cells;
}"""
PROMPTS_JS = """() => [...document.querySelectorAll(
    ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt")].map(p => p.textContent.trim())"""
RUN_FINISHED_JS = """([stderr]) => {
    const prompts = [...document.querySelectorAll(
        ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt")].map(p => p.textContent.trim());
    if (prompts.length === 0 || prompts.some(p => p === "[*]:")) return false;
    // all cells ran, or Run All stopped at an error (the test then reports it)
    return prompts.every(p => /^\\[\\d+\\]:$/.test(p)) || document.querySelector(stderr) !== null;
}"""
# Control labels cut off ("per-devic…"): unreadable on a projector; reported, not failed.
TRUNCATED_LABELS_JS = """() => [...document.querySelectorAll(".numlab-explorer .widget-label")]
    .filter(l => l.offsetParent !== null && l.scrollWidth > l.clientWidth)
    .map(l => l.textContent)"""
KERNEL_IDLE_JS = """() => {
    const bar = document.querySelector("#jp-main-statusbar");
    return bar !== null && bar.textContent.includes("| Idle");
}"""


def _sessions(lab, name):
    status, body = lab.get("/api/sessions")
    assert status == 200, body
    return [s for s in json.loads(body) if s["path"].endswith(name)]


def _wait_kernel_idle(lab, page, name, timeout_s):
    """The kernel is idle both on the server and as the page sees it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sessions = _sessions(lab, name)
        if sessions and sessions[0]["kernel"]["execution_state"] == "idle":
            break
        dialog = page.locator(".jp-Dialog")
        if dialog.count():  # e.g. "Select Kernel" for a notebook without a kernelspec
            raise AssertionError(f"{name}: JupyterLab asks: {dialog.first.inner_text()[:300]}")
        time.sleep(0.3)
    else:
        raise AssertionError(f"kernel for {name} not idle after {timeout_s} s: {sessions}")
    lab.remember_children()
    page.wait_for_function(KERNEL_IDLE_JS, timeout=timeout_s * 1000)


def _menu(page, menu, item):
    page.locator(f'.lm-MenuBar-itemLabel:text-is("{menu}")').click()
    page.locator(f'.lm-Menu-itemLabel:text-is("{item}")').click()


def _model_problems(cells):
    problems = []
    for index, outputs in enumerate(cells):
        for out in outputs:
            if out["output_type"] == "error":
                problems.append(f"code cell {index}: {out['ename']}: {out['evalue']}")
            elif out["output_type"] == "stream" and out.get("name") == "stderr":
                problems.append(f"code cell {index} wrote to stderr: {str(out['text'])[:500]}")
    return problems


def _widget_outputs(cells):
    return sum(WIDGET_MIME in out.get("data", {}) for outputs in cells for out in outputs)


@pytest.fixture(scope="module")
def lab_tab(chromium, lab):
    """One JupyterLab tab for all the notebooks' tests, as a student keeps one open.

    JupyterLab takes 3-4 s to load in a new tab here, and opens a notebook in one already
    loaded at once. Replaced after a failed test, so a page left in a bad state takes no
    other test with it.
    """
    tab = {"page": None}
    yield tab
    if tab["page"] is not None:
        tab["page"].close()


@pytest.fixture
def lab_page(lab_tab, lab, chromium, request, tmp_path):
    """The shared JupyterLab tab with nothing open; afterwards the test's notebook is closed
    unsaved (the test cleared and re-ran its outputs), or, after a failure, the tab is saved
    as a screenshot and closed."""
    if lab_tab["page"] is None:
        page = chromium.new_page()
        # ?reset: a fresh workspace, so notebooks opened by earlier sessions are not restored.
        page.goto(f"{lab.url}/lab?reset&token={lab.token}")
        page.wait_for_function(APP_READY_JS, timeout=90_000)
        lab_tab["page"] = page
    page = lab_tab["page"]
    yield page
    if getattr(request.node, "browser_call_failed", False):
        screenshot_failure(page, tmp_path)
        page.close()
        lab_tab["page"] = None
    else:
        page.evaluate(CLOSE_ALL_JS)


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks/NN_*.ipynb to test")
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_jupyterlab(notebook, lab, lab_page, screenshot_dir, record_property):
    page, name = lab_page, notebook.name
    page.evaluate(OPEN_JS, name)
    try:
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=90_000)
        _wait_kernel_idle(lab, page, name, timeout_s=120)

        # Start from a blank page, so every output checked below comes from this run.
        _menu(page, "Edit", "Clear Outputs of All Cells")
        page.wait_for_function(
            f"() => ({PROMPTS_JS})().every(p => p === '[ ]:')", timeout=10_000)
        assert page.locator(TOP_OUTPUTS).count() == 0
        _menu(page, "Run", "Run All Cells")
        page.wait_for_function(RUN_FINISHED_JS, arg=[STDERR], timeout=RUN_TIMEOUT_MS)
        _wait_kernel_idle(lab, page, name, timeout_s=RUN_TIMEOUT_MS / 1000)

        cells = page.evaluate(MODEL_OUTPUTS_JS)
        problems = _model_problems(cells) + [f"shown: {t}" for t in error_texts(page)]
        assert not problems, f"{name} has error output:\n" + "\n".join(problems)
        prompts = page.evaluate(PROMPTS_JS)
        assert all(p[1:-2].isdigit() for p in prompts), f"cells not run: {prompts}"

        # Every widget the kernel sent is a live view (a fallback PNG would not count).
        expected = _widget_outputs(cells)
        live = f"{TOP_OUTPUTS}:has(.jupyter-widgets)"
        try:
            page.wait_for_function(
                "([sel, n]) => document.querySelectorAll(sel).length >= n",
                arg=[live, expected], timeout=WIDGET_TIMEOUT_MS)
        except Exception:
            pass  # reported just below, with the numbers
        assert page.locator(live).count() == expected, (
            f"{expected} widget outputs sent, {page.locator(live).count()} rendered live")
        explorers = page.locator(".numlab-explorer")
        assert explorers.count() >= 1, f"{name} shows no numlab widget (Explorer)"
        for index in range(explorers.count()):
            wait_image_loaded(explorers.nth(index).locator("img.widget-image").first,
                              WIDGET_TIMEOUT_MS)
        failures = widget_failures(page)
        assert not failures, f"{name}: widgets failed to render: {failures}"

        truncated = page.evaluate(TRUNCATED_LABELS_JS)
        record_property("truncated_labels", truncated)
        if truncated:
            print(f"{name}: widget labels cut off (set style={{'description_width': "
                  f"'initial'}}): {truncated}")

        # A laptop: 1366x768 less the browser's own bars, JupyterLab's side bar open. Every
        # explorer (controls, figure, status) must fit in the notebook panel at once.
        desktop = page.viewport_size
        page.set_viewport_size(LAPTOP)
        tabs = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab")
        assert tabs.count(), "JupyterLab's left side bar was not found"
        if not page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").count():
            tabs.first.click()  # open the file browser, as a student has it
        # The layout settles (the figures re-render at the new width) in well under a second
        # on a quiet machine; a busy one can take longer, so wait for it, then measure.
        try:
            page.wait_for_function(f"() => ({MISFITS_JS})().length === 0", timeout=10_000)
        except Exception:
            pass  # reported just below, with the sizes
        page.wait_for_timeout(300)
        too_big = page.evaluate(MISFITS_JS)
        page.set_viewport_size(desktop)
        page.wait_for_timeout(300)
        assert not too_big, f"{name}: widgets do not fit a 1366x768 laptop screen: {too_big}"

        main = explorers.first
        main.scroll_into_view_if_needed()
        main.screenshot(path=screenshot_dir / f"{notebook.stem}.png", animations="disabled")

        img = main.locator("img.widget-image").first
        assert img.get_attribute("alt").strip(), f"{name}: the live figure has no alt text"
        # axe-core over the notebook as a student sees it: reported (README), not asserted,
        # since most of what it finds is JupyterLab's own; lecture mode is held to it.
        audit = axe_audit(page)
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / f"lab_{name[:2]}.json").write_text(json.dumps(audit, indent=1))
        record_property("axe", audit)
        page.wait_for_function(SHOWN_SIZE_JS, arg=img.element_handle(), timeout=20_000)

        action, before, after = change_and_compare(main, WIDGET_TIMEOUT_MS)
        assert before[:8] == after[:8] == b"\x89PNG\r\n\x1a\n"
        if action.startswith("slider"):  # moved by a key press: the handle shows its focus
            assert focus_ring(page), f"{name}: the focused slider shows no focus ring"
        assert before != after, f"{name}: {action} left the figure unchanged"
        assert not error_texts(page), f"{name}: after {action}: {error_texts(page)}"
        assert "Error:" not in main.inner_text(), f"{name}: after {action}: {main.inner_text()}"
    finally:
        lab.remember_children()
        for session in _sessions(lab, name):  # its kernel ends now, not at the session's end
            lab.request("DELETE", f"/api/sessions/{session['id']}")
