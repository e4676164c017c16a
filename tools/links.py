"""Rewrite every launch link and install guard from numlab.links (the one setting).

usage: python tools/links.py           rewrite the notebooks and the README
       python tools/links.py --check   exit 1 if anything differs from what it would write

Each notebook's first markdown cell starts with its launch line (Colab, Binder JupyterLab,
Binder lecture mode), and its first code cell is the install guard. The README's launch
table sits between two marker comments. Outputs are left as they are.
"""
from __future__ import annotations

import hashlib
import pathlib
import sys

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from numlab import links  # noqa: E402

BEGIN, END = "<!-- launch links: written by tools/links.py -->", "<!-- end of launch links -->"
GUARD_FIRST_LINE = links.install_guard().splitlines()[0]


def notebooks() -> list[pathlib.Path]:
    folder = ROOT / "notebooks"
    return sorted(folder.glob("*.ipynb")) + sorted((folder / "solutions").glob("*.ipynb"))


def fix_notebook(nb, path: str) -> None:
    """Put the launch line for ``path`` (relative to the repository) and the guard into ``nb``."""
    first_md = next(c for c in nb.cells if c.cell_type == "markdown")
    lines = first_md.source.splitlines()
    at = next((i for i, line in enumerate(lines[:3]) if line.startswith("[Open in Colab]")), None)
    if at is not None:  # the old launch line and the blank line after it
        del lines[at:at + 2]
    head = 1 if lines and lines[0].startswith("# ") else 0  # under the title
    first_md.source = "\n".join([*lines[:head], "", links.launch_line(path), *lines[head:]])
    index, cell = next((i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code")
    if cell.source.startswith(GUARD_FIRST_LINE):
        cell.source = links.install_guard()
    else:
        guard = nbformat.v4.new_code_cell(links.install_guard())
        guard.id = hashlib.sha1(f"install-guard:{path}".encode()).hexdigest()[:8]
        nb.cells.insert(index, guard)


def readme_block() -> str:
    rows = ["| notebook | Colab | JupyterLab on Binder | lecture mode on Binder |", "|---|---|---|---|"]
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        rel = p.relative_to(ROOT).as_posix()
        rows.append(
            f"| {p.stem} | [Open in Colab]"
            f"({links.colab_url(rel)}) | [JupyterLab]({links.binder_lab_url(rel)}) | "
            f"[lecture mode]({links.binder_voila_url(rel)}) |")
    return "\n".join([BEGIN, *rows, END])


def fix_readme(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + readme_block() + text[end:]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        fix_notebook(nb, path.relative_to(ROOT).as_posix())
        if nbformat.writes(nb) != before:
            stale.append(path.relative_to(ROOT).as_posix())
            if not check:
                nbformat.write(nb, path)
    readme = ROOT / "README.md"
    text = readme.read_text()
    if fix_readme(text) != text:
        stale.append("README.md")
        if not check:
            readme.write_text(fix_readme(text))
    for name in stale:
        print(("out of date: " if check else "rewrote ") + name)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
