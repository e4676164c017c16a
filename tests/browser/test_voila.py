"""Lecture mode: each notebook served by ``make present NB=NN`` (Voila), in a real Chromium.

The page must show prose and live widgets and no code, no text-only results and no error
output, and moving a control of the main widget must redraw its figure. Chromium cannot
reach beyond this machine (see ``pages.OFFLINE_ARGS``) and no request may try to.

Accessibility, on the same page: axe-core's audit (written to
``_build/accessibility/voila_NN.json``; numlab's own content, its prose, widgets and
figures, has no serious or critical violation), the keyboard (Tab reaches a slider, which
shows a focus ring; three ArrowRight presses change the figure; PageDown, a clicker's key,
moves to a section heading and leaves the slider alone), and the figure's alt text.
"""
from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from .pages import (
    BLOCKING,
    REPORTS,
    SHOWN_SIZE_JS,
    axe_audit,
    change_and_compare,
    code_lines,
    error_texts,
    focus_ring,
    image_bytes,
    markdown_cells,
    tab_to,
    wait_image_loaded,
    wait_settled,
    widget_failures,
)
from .servers import NOTEBOOKS as PROJECT_NOTEBOOKS
from .servers import Server, free_port, make_target, notebooks, private_env

pytestmark = pytest.mark.browser

NOTEBOOKS = notebooks()
RUN_TIMEOUT_MS = 240_000
WIDGET_TIMEOUT_MS = 60_000
VOILA_ERROR = "There was an error when executing cell"
TEXT_ONLY = ('.jp-OutputArea-output[data-mime-type="text/plain"], '
             '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]')
HANDLE = ".numlab-explorer .noUi-handle"
BARE_TEXT_JS = """() => {
    const page = document.body.cloneNode(true);
    page.querySelectorAll(".jp-OutputArea, .jp-MarkdownCell, .jp-RenderedMarkdown")
        .forEach(e => e.remove());
    return page.innerText;
}"""


def start_voila(notebook, home) -> Server:
    """``make present NB=NN`` for the project's notebooks; the same Voila call for others."""
    home.mkdir(parents=True, exist_ok=True)
    if notebook.parent.resolve() == PROJECT_NOTEBOOKS.resolve():
        return make_target("present", home, NB=notebook.name[:2])
    port = free_port()
    argv = [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
            "--Voila.ip=127.0.0.1"]
    return Server(argv, f"http://127.0.0.1:{port}", private_env(home), notebook.parent,
                  home / "voila.log")


@pytest.fixture(scope="module")
def stop_later():
    """Stop a Voila server in the background; at the end, check that none left a process.

    Voila takes 2-2.5 s to exit once told to (its own shutdown, Ctrl-C alike); waiting for
    each before the next notebook's test added 15 s to the run.
    """
    pool, stopping = ThreadPoolExecutor(max_workers=2), []
    yield lambda name, server: stopping.append((name, pool.submit(server.stop)))
    pool.shutdown(wait=True)
    survivors = {name: left for name, f in stopping if (left := f.result())}
    assert not survivors, f"Voila processes still running after stop: {survivors}"


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks/NN_*.ipynb to test")
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_voila(notebook, chromium, browser_page, browser_home, record_property,
                           stop_later):
    page = browser_page
    server = start_voila(notebook, browser_home / f"voila-{notebook.stem}")
    try:
        server.wait("/numlab-probe", any_status=True)  # up; "/" would already run the notebook
        external_before = len(chromium.external_requests)
        page.goto(server.url + "/", wait_until="load", timeout=RUN_TIMEOUT_MS)
        explorers = page.locator(".numlab-explorer")
        try:
            explorers.first.wait_for(timeout=WIDGET_TIMEOUT_MS)
        except Exception as err:  # playwright's TimeoutError
            raise AssertionError(f"{notebook.name}: Voila shows no numlab widget:\n"
                                 f"{page.locator('body').inner_text()[-1500:]}") from err
        server.remember_children()
        assert notebook.stem in page.title(), f"Voila served {page.title()!r}, not {notebook.stem}"

        text = page.locator("body").inner_text()
        assert page.locator(".jp-CodeCell .jp-InputArea, .cm-editor, .CodeMirror").count() == 0
        # Code lines must not appear outside outputs and prose (which may quote code).
        bare = page.evaluate(BARE_TEXT_JS)
        shown_code = [line for line in code_lines(notebook) if line in bare]
        assert not shown_code, f"lecture mode shows code: {shown_code[:3]}"
        if markdown_cells(notebook):
            assert page.locator(".jp-RenderedMarkdown").count() >= 1, "the prose is missing"

        assert VOILA_ERROR not in text, f"{notebook.name}: a cell failed in Voila"
        assert not error_texts(page), f"{notebook.name}: {error_texts(page)}"
        for index in range(explorers.count()):
            wait_image_loaded(explorers.nth(index).locator("img.widget-image").first,
                              WIDGET_TIMEOUT_MS)
        assert not widget_failures(page), f"{notebook.name}: {widget_failures(page)}"
        assert page.locator(TEXT_ONLY).count() == 0, "lecture mode shows a text-only result"
        alts = explorers.locator("img.widget-image").evaluate_all("(ims) => ims.map(i => i.alt)")
        assert all(alt.strip() for alt in alts), f"a live figure has no alt text: {alts}"
        for index in range(explorers.count()):  # sharp: as many pixels as are shown
            img = explorers.nth(index).locator("img.widget-image").first
            page.wait_for_function(SHOWN_SIZE_JS, arg=img.element_handle(), timeout=20_000)

        audit = axe_audit(page)
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / f"voila_{notebook.name[:2]}.json").write_text(json.dumps(audit, indent=1))
        record_property("axe", audit)
        check_keyboard(page, explorers)

        action, before, after = change_and_compare(explorers.first, WIDGET_TIMEOUT_MS)
        assert before != after, f"{notebook.name}: {action} left the figure unchanged"
        assert not error_texts(page), f"after {action}: {error_texts(page)}"
        # Requests that tried to leave the machine failed, and the page worked regardless.
        external = chromium.external_requests[external_before:]
        assert not external, f"lecture mode tried to leave the machine: {external[:3]}"
        ours = [v for v in audit if v["owner"] == "numlab" and v["impact"] in BLOCKING]
        assert not ours, f"{notebook.name}: axe finds in numlab's content: {ours}"
    finally:
        stop_later(notebook.name, server)


def check_keyboard(page, explorers) -> None:
    """Tab to a slider, see its focus ring, move it with the arrow keys, press PageDown."""
    presses = tab_to(page, HANDLE)
    ring = focus_ring(page)
    assert ring, f"the slider reached after {presses} Tab presses shows no focus ring"
    index = page.evaluate("""() => [...document.querySelectorAll(".numlab-explorer")]
        .findIndex((e) => e.contains(document.activeElement))""")
    img = explorers.nth(index).locator("img.widget-image").first
    handle = page.locator(":focus").element_handle()
    position = handle.evaluate  # (aria-valuenow is rounded: a log slider's 0.699 reads 0.7)
    value, src = position("(h) => h.getAttribute('aria-valuetext')"), img.get_attribute("src")
    before = image_bytes(img)
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    moved = position("(h) => h.getAttribute('aria-valuetext')")
    assert moved != value, f"ArrowRight x3 left the slider at {value}"
    page.wait_for_function(
        "([img, old]) => img.src !== old && img.complete && img.naturalWidth > 0",
        arg=[img.element_handle(), src], timeout=WIDGET_TIMEOUT_MS)
    wait_settled(img, WIDGET_TIMEOUT_MS)  # the last of the three frames
    assert image_bytes(img) != before, "ArrowRight x3 moved the slider, not the figure"

    page.keyboard.press("PageDown")
    assert position("(h) => h.getAttribute('aria-valuetext')") == moved, "PageDown nudged the slider"
    landed = page.evaluate("() => document.activeElement.tagName")
    assert landed in ("H1", "H2"), f"PageDown moved focus to {landed}, not a section heading"
