"""make update: a reader who ran the notebooks gets the new version, and keeps a copy of theirs."""
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, text=True, capture_output=True).stdout


def test_update_keeps_the_readers_notebook_and_pulls(tmp_path):
    upstream, reader = tmp_path / "upstream", tmp_path / "reader"
    (upstream / "notebooks").mkdir(parents=True)
    (upstream / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "update.py", upstream / "tools" / "update.py")
    shutil.copy(ROOT / ".gitignore", upstream / ".gitignore")
    nb = upstream / "notebooks" / "00_x.ipynb"
    nb.write_text('{"cells": [], "v": 1}\n')
    _git(upstream, "init", "-q", "-b", "main")
    _git(upstream, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(upstream, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1")
    _git(tmp_path, "clone", "-q", str(upstream), str(reader))
    # the reader runs the notebook (its file changes); upstream publishes a new version
    (reader / "notebooks" / "00_x.ipynb").write_text('{"cells": [], "v": 1, "outputs": "mine"}\n')
    nb.write_text('{"cells": [], "v": 2}\n')
    _git(upstream, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "v2")
    plain = subprocess.run(["git", "pull", "--ff-only"], cwd=reader, capture_output=True, text=True)
    assert plain.returncode != 0  # what a reader meets without the script
    done = subprocess.run([sys.executable, "tools/update.py"], cwd=reader, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '"v": 2' in (reader / "notebooks" / "00_x.ipynb").read_text()
    kept = list((reader / "my-work").rglob("00_x.ipynb"))
    assert len(kept) == 1 and '"mine"' in kept[0].read_text()
    assert _git(reader, "status", "--porcelain") == ""  # my-work/ is ignored
