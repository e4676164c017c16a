"""The web book in a real browser: ``make book`` builds it, a static server on 127.0.0.1
serves it, and Chromium (offline: see pages.OFFLINE_ARGS) opens every page.

Per page: no console error and no request leaving the machine; every ``<img>`` decoded
(naturalWidth > 0) with a non-empty alt text; every internal link (and its #anchor) found;
every launch link on the configured repository. Topic pages carry Binder (JupyterLab and
lecture mode), Colab and .ipynb download links, and link their solutions page without
showing the solutions. Search answers offline, and pages fit a phone's width. Screenshots
of the landing page and one notebook page go to docs/screenshots/.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from urllib.parse import urlparse

import pytest

from numlab import links

from .servers import ROOT, Server, bin_dir, free_port, private_env

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOPICS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
LAUNCH_HOSTS = ("mybinder.org", "colab.research.google.com", "github.com")

# In the page: what the checks read, gathered in one evaluation.
_PAGE_FACTS = """() => ({
  images: [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0,
                                          alt: (i.getAttribute('alt') || '').trim()})),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  overflow: document.scrollingElement.scrollWidth - window.innerWidth,
})"""


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """``make book`` into a temporary folder (timed), served on a free port."""
    out = tmp_path_factory.mktemp("book")
    make = shutil.which("make")
    if make is None:
        pytest.skip("`make` is not installed")
    start = time.perf_counter()
    done = subprocess.run([make, "--no-print-directory", "-o", ".venv/.installed", "book",
                           f"BIN={bin_dir()}", f"BOOK={out}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"make book failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    print(f"make book: {time.perf_counter() - start:.1f} s; {done.stdout.strip().splitlines()[-1]}")
    html = out / "html"
    port = free_port()
    server = Server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                     "--directory", str(html)], f"http://127.0.0.1:{port}", private_env(out),
                    out, out / "server.log")
    try:
        server.wait("/index.html", timeout=30)
        yield html, server
    finally:
        assert not server.stop(), "the book's file server left processes running"


def _visit(page, url: str) -> tuple[dict, list[str]]:
    errors: list[str] = []
    on_console = lambda msg: errors.append(msg.text) if msg.type == "error" else None  # noqa: E731
    on_error = lambda err: errors.append(str(err))  # noqa: E731
    page.on("console", on_console)
    page.on("pageerror", on_error)
    try:
        page.goto(url, wait_until="load")
        # The page's own scripts settle; the images the checks read are waited for below.
        # (On a busy machine "networkidle" once never came within 30 s on a page that had
        # fully loaded: a static server's request stalled, which is no fault of the book.)
        try:
            page.wait_for_load_state("networkidle", timeout=10_000)
        except Exception:  # playwright's TimeoutError
            print(f"{url}: the network was still busy after 10 s; checking the page as it is")
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=30_000)
        return page.evaluate(_PAGE_FACTS), errors
    finally:
        page.remove_listener("console", on_console)
        page.remove_listener("pageerror", on_error)


def test_every_page_loads_offline_with_images_alt_text_and_working_links(book, chromium, browser_page):
    html, server = book
    # every page, not the theme's template fragments in _static/
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                   if not p.relative_to(html).parts[0].startswith("_"))
    assert "index.html" in pages and len(pages) >= 1 + 2 * len(TOPICS) + 1
    base = server.url + "/"
    seen_ids: dict[str, set[str]] = {}
    internal: list[tuple[str, str]] = []  # (page, link)
    problems: list[str] = []
    external_before = len(chromium.external_requests)
    for rel in pages:
        facts, errors = _visit(browser_page, base + rel)
        seen_ids[rel] = set(facts["ids"])
        problems += [f"{rel}: console error: {e}" for e in errors]
        for img in facts["images"]:
            if not img["ok"]:
                problems.append(f"{rel}: image did not load: {img['src'][:120]}")
            if not img["alt"]:
                problems.append(f"{rel}: image without alt text: {img['src'][:120]}")
        for href in facts["links"]:
            parsed = urlparse(href)
            if parsed.hostname in ("127.0.0.1", "localhost"):
                internal.append((rel, href))
            elif parsed.hostname and parsed.hostname.endswith(LAUNCH_HOSTS) and links.REPOSITORY not in href \
                    and "colab-badge" not in href:
                problems.append(f"{rel}: launch link not on {links.REPOSITORY}: {href}")
    problems += [f"request left the machine: {u}" for u in chromium.external_requests[external_before:]]
    for rel, href in internal:
        parsed = urlparse(href)
        target = parsed.path.lstrip("/") or "index.html"
        if target.endswith("/"):
            target += "index.html"
        if not (html / target).is_file():
            problems.append(f"{rel}: broken link {href}")
        elif parsed.fragment and target in seen_ids and parsed.fragment not in seen_ids[target]:
            problems.append(f"{rel}: link to a missing anchor {href}")
    assert not problems, "\n".join(problems[:40])
    print(f"{len(pages)} pages, {len(internal)} internal links checked")


@pytest.mark.parametrize("stem", TOPICS)
def test_a_topic_page_launches_downloads_and_keeps_its_solutions_one_click_away(book, browser_page, stem):
    html, server = book
    facts, _ = _visit(browser_page, f"{server.url}/notebooks/{stem}.html")
    rel = f"notebooks/{stem}.ipynb"
    hrefs = facts["links"]
    for url in (links.binder_voila_url(rel), links.colab_url(rel)):
        assert url in hrefs, f"{stem}: no launch link {url}"
    binder_lab = [h for h in hrefs if h.startswith(f"https://mybinder.org/v2/gh/{links.REPOSITORY}/")
                  and "urlpath=lab" in h and h.endswith(rel)]
    assert binder_lab, f"{stem}: no JupyterLab-on-Binder button"
    downloads = [h for h in hrefs if h.endswith(f"{stem}.ipynb") and urlparse(h).hostname == "127.0.0.1"]
    assert downloads, f"{stem}: no .ipynb download link"
    status, body = server.get(urlparse(downloads[0]).path)
    assert status == 200 and json.loads(body)["cells"], f"{stem}: the .ipynb download is not the notebook"
    solutions = f"/notebooks/solutions/{stem}_solutions.html"
    assert any(urlparse(h).path == solutions for h in hrefs), f"{stem}: no link to its solutions page"
    # The topic page shows none of the worked solutions' code.
    solved = json.loads((ROOT / "notebooks" / "solutions" / f"{stem}_solutions.ipynb").read_text())
    page_text = browser_page.inner_text("main")
    leaked = [line for cell in solved["cells"] if cell["cell_type"] == "code"
              for line in "".join(cell["source"]).splitlines()
              if len(line.strip()) > 30 and "import" not in line and line.strip() in page_text
              and line.strip() not in _topic_code(stem)]
    assert not leaked, f"{stem}: solution code on the topic page: {leaked[:3]}"


def _topic_code(stem: str) -> str:
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def test_search_answers_offline_and_pages_fit_a_phone(book, chromium, screenshot_dir):
    html, server = book
    page = chromium.new_page()
    try:
        page.goto(f"{server.url}/search.html?q=cancellation", wait_until="load")
        page.wait_for_selector("#search-results li", timeout=20_000)
        hits = page.locator("#search-results li").all_inner_texts()
        assert hits, "search found nothing for 'cancellation'"
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(f"{server.url}/index.html", wait_until="networkidle")
        page.screenshot(path=screenshot_dir / "book_landing.png")
        page.goto(f"{server.url}/notebooks/01_gradient_checking.html", wait_until="networkidle")
        page.screenshot(path=screenshot_dir / "book_notebook.png")
        page.set_viewport_size({"width": 390, "height": 844})
        for rel in ("index.html", "notebooks/01_gradient_checking.html", "teaching.html"):
            page.goto(f"{server.url}/{rel}", wait_until="networkidle")
            overflow = page.evaluate(_PAGE_FACTS)["overflow"]
            assert overflow <= 1, f"{rel}: {overflow} px wider than a 390 px phone screen"
    finally:
        page.close()


def test_book_pages_follow_the_notebooks_order(book):
    html, _ = book
    index = (html / "index.html").read_text()
    positions = [index.find(f'href="notebooks/{stem}.html"') for stem in TOPICS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
    assert index.find("notebooks/solutions/") > positions[-1], "solutions come after the topics"
    assert (html / "teaching.html").is_file()
    # built from the committed outputs: the figures come from the notebooks, not a kernel
    assert len(list((html / "_images").glob("*.png"))) >= len(TOPICS)


def test_the_built_site_is_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", "_build/html/index.html"], cwd=ROOT)
    assert ignored.returncode == 0, "_build/ must be git-ignored"
