"""Get a newer numlab without losing what you did in the notebooks.

usage: python tools/update.py      (or: make update)

Running a notebook changes the file (outputs, execution counts), so a plain ``git pull``
refuses to overwrite it. This script copies every changed notebook to
``my-work/<date-time>/`` (ignored by git), puts the committed versions back, and pulls.
Your copies stay where they are; open them in JupyterLab beside the new versions.
"""
from __future__ import annotations

import datetime
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, text=True, capture_output=True).stdout


def changed_notebooks() -> list[str]:
    out = git("status", "--porcelain", "--", "notebooks")
    return [line[3:].strip() for line in out.splitlines()
            if line[:2].strip() in ("M", "MM", "AM") and line.rstrip().endswith(".ipynb")]


def main() -> int:
    changed = changed_notebooks()
    if changed:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
        keep = ROOT / "my-work" / stamp
        for rel in changed:
            target = keep / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target)
        git("checkout", "--", *changed)
        print(f"saved {len(changed)} notebook(s) you ran or edited to {keep.relative_to(ROOT)}/")
    result = subprocess.run(["git", "pull", "--ff-only"], cwd=ROOT, text=True)
    if result.returncode:
        print("git pull did not succeed; your notebooks are safe in my-work/", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
