"""Build the web book: ``make book`` (or ``python tools/book.py [OUT]``, default _build/).

Assembles the book's source folder from book/ (configuration, landing page, teaching
notes), the committed notebooks and solutions, the README (the teaching notes include part
of it) and docs/screenshots, laid out as in the repository so the theme's launch buttons
and every relative link find the same paths; then runs Sphinx into OUT/html. The notebooks
are not executed: the site shows the outputs committed with them.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def assemble(source: pathlib.Path) -> None:
    if source.exists():
        shutil.rmtree(source)
    shutil.copytree(ROOT / "book", source, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "notebooks", source / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    shutil.copytree(ROOT / "docs" / "screenshots", source / "docs" / "screenshots")
    shutil.copy2(ROOT / "README.md", source / "README.md")


def build(out: pathlib.Path) -> pathlib.Path:
    """Build the site into ``out/html`` and return that folder; warnings fail the build."""
    source, html = out / "source", out / "html"
    assemble(source)
    subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going",
                    "-d", str(out / "doctrees"), str(source), str(html)], check=True, cwd=ROOT)
    return html


def main(argv: list[str]) -> int:
    out = pathlib.Path(argv[0]) if argv else ROOT / "_build"
    start = time.perf_counter()
    html = build(out.resolve())
    pages = sorted(html.rglob("*.html"))
    size = sum(p.stat().st_size for p in html.rglob("*") if p.is_file())
    print(f"built {len(pages)} pages into {html} in {time.perf_counter() - start:.1f} s "
          f"({size / 1e6:.1f} MB); open {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
