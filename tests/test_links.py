"""Every launch link and install guard comes from the one setting, numlab.links.REPOSITORY."""
import contextlib
import io
import json
import pathlib
import re
import subprocess
import sys

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from numlab import links

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
    (ROOT / "notebooks/solutions").glob("*.ipynb"))
URL = re.compile(r"https://(?:colab\.research\.google\.com/github|mybinder\.org/v2/gh|github\.com)/([\w.-]+/[\w.-]+)")


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_links_tool_finds_nothing_to_rewrite():
    proc = subprocess.run([sys.executable, str(ROOT / "tools/links.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", NOTEBOOKS + [ROOT / "README.md"], ids=lambda p: p.name)
def test_every_launch_link_names_the_configured_repository(path):
    text = path.read_text()
    found = URL.findall(text)
    assert found, f"{path.name} has no launch link"
    assert set(found) == {links.REPOSITORY}, set(found)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_opens_with_its_own_launch_line_and_the_guard(path):
    cells = _cells(path)
    rel = path.relative_to(ROOT).as_posix()
    first_md = "".join(next(c for c in cells if c["cell_type"] == "markdown")["source"])
    assert links.launch_line(rel) in first_md.splitlines()[:3]
    assert links.colab_url(rel).endswith(rel)
    first_code = next(c for c in cells if c["cell_type"] == "code")
    assert "".join(first_code["source"]) == links.install_guard()
    assert first_code["outputs"] == []  # quiet where numlab imports (nbval, make lab)


class _FakeIPython:
    def __init__(self):
        self.magics = []

    def run_line_magic(self, name, line, _stack_depth=1):
        self.magics.append((name, line))


def _run_guard(find_spec):
    code = TransformerManager().transform_cell(links.install_guard())
    shell, out = _FakeIPython(), io.StringIO()
    import importlib.util as real

    namespace = {"get_ipython": lambda: shell}
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
        mp.setattr(real, "find_spec", find_spec)
        exec(code, namespace)
    return shell.magics, out.getvalue()


def test_the_guard_is_a_no_op_where_numlab_imports_and_installs_elsewhere():
    import importlib.util

    real_find_spec = importlib.util.find_spec
    assert _run_guard(real_find_spec) == ([], "")  # numlab importable: nothing at all
    magics, printed = _run_guard(lambda name, *a: None if name == "numlab" else real_find_spec(name, *a))
    assert magics == [("pip", f'install -q "{links.install_spec()}"')]
    assert "installed it into this kernel" in printed
    assert links.install_spec() == f"numlab @ git+https://github.com/{links.REPOSITORY}@{links.BRANCH}"


def test_links_follow_the_setting(monkeypatch):
    monkeypatch.setattr(links, "REPOSITORY", "someone/else")
    line = links.launch_line("notebooks/03_stable_softmax.ipynb")
    assert set(URL.findall(line)) == {"someone/else"} and "someone/else" in links.install_guard()
    with pytest.raises(ValueError, match="path"):
        links.colab_url("/abs/path.ipynb")
