"""Lecture mode: each notebook served by ``make present NB=NN`` (Voila), in a real Chromium.

The page must show prose and live widgets and no code, with no error output, and moving a
control of the main widget must redraw its figure. Chromium cannot reach beyond this machine
(see ``pages.OFFLINE_ARGS``), so a page that needs a CDN fails here.
"""
from __future__ import annotations

import sys

import pytest

from .pages import (
    change_and_compare,
    code_lines,
    error_texts,
    markdown_cells,
    wait_image_loaded,
    widget_failures,
)
from .servers import NOTEBOOKS as PROJECT_NOTEBOOKS
from .servers import Server, free_port, make_target, notebooks, private_env

pytestmark = pytest.mark.browser

NOTEBOOKS = notebooks()
RUN_TIMEOUT_MS = 240_000
WIDGET_TIMEOUT_MS = 60_000
VOILA_ERROR = "There was an error when executing cell"
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


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks/NN_*.ipynb to test")
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_voila(notebook, chromium, browser_page, browser_home, record_property):
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

        action, before, after = change_and_compare(explorers.first, WIDGET_TIMEOUT_MS)
        assert before != after, f"{notebook.name}: {action} left the figure unchanged"
        assert not error_texts(page), f"after {action}: {error_texts(page)}"
        # Requests that tried to leave the machine failed, and the page worked regardless.
        record_property("offline_blocked", chromium.external_requests[external_before:])
    finally:
        survivors = server.stop()
    assert not survivors, f"Voila processes still running after stop: {survivors}"
