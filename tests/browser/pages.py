"""What the browser tests look for on a page, shared by the JupyterLab and Voila tests."""
from __future__ import annotations

import base64
import json
import pathlib
import re
import time
from urllib.parse import urlparse

STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_FAILURES = ("Error displaying widget", "Loading widget...", "Failed to load model class")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}

# The bytes behind an <img>'s src (a blob: URL for ipywidgets.Image), base64-encoded.
_IMAGE_BYTES_JS = """async (img) => {
    const buf = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let s = "";
    for (let i = 0; i < buf.length; i += 0x8000) {
        s += String.fromCharCode.apply(null, buf.subarray(i, i + 0x8000));
    }
    return btoa(s);
}"""


# Chromium resolves no host name but this machine's: the notebooks must work offline and in
# lecture mode without a CDN, so a page that needs one fails its test instead of fetching it.
# (A resolver rule, not a playwright route: routes are served by the Python side only while
# it is inside a playwright call, which would stall the page whenever a test polls a server.)
OFFLINE_ARGS = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]


def record_external(context) -> list[str]:
    """Record every request that tried to leave this machine (they fail: see OFFLINE_ARGS)."""
    external: list[str] = []

    def seen(request):
        url = request.url
        if not url.startswith(("data:", "blob:")) and urlparse(url).hostname not in LOCAL_HOSTS:
            external.append(url)

    context.on("request", seen)
    return external


def image_bytes(img) -> bytes:
    """PNG bytes the browser shows in ``img`` (a Locator of an <img>)."""
    return base64.b64decode(img.evaluate(_IMAGE_BYTES_JS))


def wait_image_loaded(img, timeout_ms: float) -> None:
    img.page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0 && img.src",
        arg=img.element_handle(), timeout=timeout_ms,
    )


def wait_settled(img, timeout_ms: float) -> str:
    """Wait until ``img`` has shown the same loaded frame for a while; return its src.

    A slow widget moved several times (the keyboard check's three presses) sends its frames
    one after another, each a few hundred ms apart; a test that reads "the figure before"
    while the last of them is still on its way compares that late frame with itself. The
    while: 800 ms for a widget with a progress bar (one that trains), 300 ms for the others."""
    page = img.page
    slow = img.evaluate("(i) => !!i.closest('.numlab-explorer')?.querySelector('.widget-hprogress')")
    quiet_ms = 800 if slow else 300
    deadline = time.monotonic() + timeout_ms / 1000
    src = img.get_attribute("src")
    while True:
        wait_image_loaded(img, timeout_ms)
        page.wait_for_timeout(quiet_ms)
        now = img.get_attribute("src")
        if now == src:
            return src
        if time.monotonic() > deadline:
            raise AssertionError(f"the figure still changed after {timeout_ms / 1000:.0f} s")
        src = now


def screenshot_failure(page, folder: pathlib.Path) -> None:
    """Save the whole page as ``folder/failure.png`` for diagnosis, and say where."""
    shot = folder / "failure.png"
    try:
        page.screenshot(path=shot, full_page=True)
        print(f"page at the failure: {shot}")
    except Exception as err:  # the page may be gone; the failure itself is reported
        print(f"no screenshot of the failed page: {err}")


def error_texts(page) -> list[str]:
    """Error and stderr outputs shown anywhere on the page (tracebacks render as stderr)."""
    return [t.strip()[:1500] for t in page.locator(STDERR).all_inner_texts()]


def widget_failures(page) -> list[str]:
    text = page.locator("body").inner_text()
    return [marker for marker in WIDGET_FAILURES if marker in text]


def code_cells(path: pathlib.Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def markdown_cells(path: pathlib.Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


def code_lines(path: pathlib.Path, min_len: int = 12) -> list[str]:
    """Distinctive source lines (code, not comments) that lecture mode must not show."""
    lines = []
    for source in code_cells(path):
        for line in source.splitlines():
            line = line.strip()
            if len(line) >= min_len and not line.startswith("#") and re.search(r"[=(]", line):
                lines.append(line)
    return lines


def interact(explorer) -> str:
    """Change one control of a numlab Explorer the way a person would; say what was done.

    A slider gets one ArrowRight (ArrowLeft when at its maximum); otherwise an unselected
    toggle button is clicked, a dropdown set to another option, or a checkbox clicked.
    """
    handle = explorer.locator(".noUi-handle")
    if handle.count():
        handle = handle.first
        slider = explorer.locator(".widget-slider").first
        label = slider.locator(".widget-label").first.inner_text().strip() or "slider"
        now, top = (handle.get_attribute(a) for a in ("aria-valuenow", "aria-valuemax"))
        key = "ArrowLeft" if now is not None and top is not None and float(now) >= float(top) \
            else "ArrowRight"
        handle.focus()
        handle.press(key)
        return f"slider {label!r}: {key}"
    toggle = explorer.locator(".widget-toggle-buttons button:not(.mod-active)")
    if toggle.count():
        text = toggle.first.inner_text().strip()
        toggle.first.click()
        return f"toggle button {text!r}"
    select = explorer.locator(".widget-dropdown select")
    if select.count():
        select = select.first
        current = select.input_value()
        options = [o for o in select.locator("option").evaluate_all(
            "(os) => os.map(o => o.value)") if o != current]
        if options:
            select.select_option(options[0])
            return f"dropdown: {current!r} -> {options[0]!r}"
    checkbox = explorer.locator(".widget-checkbox input, .widget-toggle-button")
    if checkbox.count():
        checkbox.first.click()
        return "checkbox/toggle"
    raise AssertionError("the main widget has no slider, toggle, dropdown or checkbox to move")


def change_and_compare(explorer, timeout_ms: float) -> tuple[str, bytes, bytes]:
    """Move a control of ``explorer``; wait for its figure to be replaced; return both PNGs."""
    img = explorer.locator("img.widget-image").first
    before_src = wait_settled(img, timeout_ms)
    before = image_bytes(img)
    action = interact(explorer)
    try:
        img.page.wait_for_function(
            "([img, old]) => img.src !== old && img.complete && img.naturalWidth > 0",
            arg=[img.element_handle(), before_src], timeout=timeout_ms,
        )
    except Exception as err:  # playwright's TimeoutError: say what was tried
        shown = explorer.inner_text().strip()[-800:]
        raise AssertionError(
            f"after {action} the figure did not change within {timeout_ms / 1000:.0f} s "
            f"(not redrawn, or redrawn identical); the widget shows:\n{shown}"
        ) from err
    return action, before, image_bytes(img)


# --- accessibility ---------------------------------------------------------------------
BLOCKING = ("serious", "critical")
REPORTS = pathlib.Path(__file__).resolve().parents[2] / "_build" / "accessibility"  # axe's findings
# A sharp figure has as many pixels across as the screen shows (numlab.viz.figure_view).
SHOWN_SIZE_JS = """(img) => Math.abs(img.naturalWidth
    - img.getBoundingClientRect().width * window.devicePixelRatio) <= 2"""
# Where a node sits decides whose it is: numlab writes the prose, the widgets (their
# controls included) and the figures; everything else on the page is the front end's.
_OWNER_JS = """(targets) => targets.map((target) => {
    const selector = Array.isArray(target) ? target[target.length - 1] : target;
    const node = document.querySelector(selector);
    if (!node) return "front end";
    return node.closest(".numlab-explorer, .jp-RenderedMarkdown, .jp-OutputArea-output")
        ? "numlab" : "front end";
})"""


def axe_audit(page) -> list[dict]:
    """axe-core's violations on the page, one entry per rule and owner (numlab or the front
    end): rule id, impact, help text, how many nodes and the first node's HTML."""
    from axe_playwright_python.sync_playwright import Axe

    found: dict[tuple[str, str], dict] = {}
    for violation in Axe().run(page).response["violations"]:
        nodes = violation["nodes"]
        owners = page.evaluate(_OWNER_JS, [node["target"] for node in nodes])
        for node, owner in zip(nodes, owners, strict=True):
            entry = found.setdefault((violation["id"], owner), {
                "rule": violation["id"], "owner": owner, "impact": violation["impact"],
                "help": violation["help"], "nodes": 0, "example": node["html"][:200]})
            entry["nodes"] += 1
    return sorted(found.values(), key=lambda v: (v["owner"], v["rule"]))


def tab_to(page, selector: str, max_presses: int = 150) -> int:
    """Press Tab from the top of the page until the focused element matches ``selector``;
    return how many presses it took."""
    page.evaluate("() => { document.activeElement?.blur(); window.scrollTo(0, 0); }")
    for presses in range(1, max_presses + 1):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => !!document.activeElement?.matches(s)", selector):
            return presses
    raise AssertionError(f"{max_presses} presses of Tab never reached {selector}")


def focus_ring(page) -> str:
    """The focused element's outline (or box shadow): what shows a keyboard user where they
    are; '' when there is none."""
    return page.evaluate("""() => {
        const s = getComputedStyle(document.activeElement);
        if (s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2) {
            return `outline ${s.outlineWidth} ${s.outlineStyle} ${s.outlineColor}`;
        }
        return s.boxShadow !== "none" ? `box-shadow ${s.boxShadow}` : "";
    }""")
