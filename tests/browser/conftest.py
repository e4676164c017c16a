"""Fixtures for the real-browser tests: one Chromium and one JupyterLab server per session.

Chromium: ``NUMLAB_CHROMIUM`` if set, else Debian's ``/usr/bin/chromium`` (or another
``chromium``/``chrome`` on PATH), else the one ``python -m playwright install chromium``
downloads. Without any, every browser test is skipped with a message saying how to get one.
``NUMLAB_SCREENSHOTS`` redirects the widget screenshots (default ``docs/screenshots``).
"""
from __future__ import annotations

import os
import pathlib
import secrets
import shutil

import pytest

from .pages import OFFLINE_ARGS, record_external, screenshot_failure
from .servers import ROOT, notebooks, start_lab, temp_home

HOW_TO_GET_CHROMIUM = (
    "no Chromium found for the browser tests: install it with `apt-get install -y chromium` "
    "(Debian/Ubuntu; `.ci/run` does this), or `python -m playwright install chromium`, "
    "or point NUMLAB_CHROMIUM at a Chrome/Chromium binary"
)
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
# A 1080p-ish projector/laptop window: the widgets must fit it.
VIEWPORT = {"width": 1400, "height": 1000}


def _system_chromium() -> str | None:
    candidates = [os.environ.get("NUMLAB_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="session")
def browser_home():
    home = temp_home("numlab-browser-")
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def chromium(browser_home):
    """A persistent Chromium context (fresh profile) that cannot reach beyond this machine."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (it is in the dev extra)"
    )
    executable = _system_chromium()
    manager = sync_api.sync_playwright().start()
    try:
        if executable is None:
            bundled = manager.chromium.executable_path
            if not (bundled and os.path.isfile(bundled)):
                pytest.skip(HOW_TO_GET_CHROMIUM)
            executable = bundled
        context = manager.chromium.launch_persistent_context(
            str(browser_home / "chromium-profile"), executable_path=executable, headless=True,
            args=CHROMIUM_ARGS + OFFLINE_ARGS, viewport=VIEWPORT, device_scale_factor=1,
            reduced_motion="reduce",
        )
        context.external_requests = record_external(context)
        try:
            yield context
        finally:
            context.close()
    finally:
        manager.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.browser_call_failed = report.failed


@pytest.fixture
def browser_page(chromium, request, tmp_path):
    """A fresh tab; on a failure the whole page is saved as a screenshot for diagnosis."""
    page = chromium.new_page()
    yield page
    if getattr(request.node, "browser_call_failed", False):
        screenshot_failure(page, tmp_path)
    page.close()


@pytest.fixture(scope="session")
def notebook_dir() -> pathlib.Path:
    return notebooks()[0].parent if notebooks() else ROOT / "notebooks"


@pytest.fixture(scope="session")
def lab(chromium, browser_home, notebook_dir):
    """JupyterLab serving the notebooks, shared by every notebook's test.

    Started after Chromium (no server when the tests skip); stopped with all its kernels at
    the end, also after failures; a process left running fails the session's teardown.
    """
    token = secrets.token_hex(16)
    server = start_lab(browser_home / "lab", notebook_dir, token)
    yield server
    survivors = server.stop()
    assert not survivors, f"JupyterLab processes still running after stop: {survivors}"


@pytest.fixture(scope="session")
def screenshot_dir() -> pathlib.Path:
    folder = pathlib.Path(os.environ.get("NUMLAB_SCREENSHOTS", ROOT / "docs" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
