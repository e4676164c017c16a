"""Where the project lives, and every link built from it: Colab, Binder (JupyterLab and
lecture mode) and the install guard that opens each notebook.

:data:`REPOSITORY` is the one setting. Until the repository is published it holds the
placeholder ``OWNER/numlab``; change it here and run ``python tools/links.py`` to rewrite
every badge, launch link and install guard in the README and the notebooks.
"""
from __future__ import annotations

import posixpath

REPOSITORY = "OWNER/numlab"  # GitHub "owner/name": the one place it is written
BRANCH = "main"


def _notebook(path: str) -> str:
    if not isinstance(path, str) or not path.endswith(".ipynb") or path.startswith("/"):
        raise ValueError(f"path must be a notebook path relative to the repository, such as "
                         f"'notebooks/00_floating_point.ipynb', got {path!r}")
    return posixpath.normpath(path)


def colab_url(path: str) -> str:
    """Colab opens a notebook straight from GitHub."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/{_notebook(path)}"


def binder_lab_url(path: str) -> str:
    return f"https://mybinder.org/v2/gh/{REPOSITORY}/HEAD?urlpath=lab/tree/{_notebook(path)}"


def binder_voila_url(path: str) -> str:
    return f"https://mybinder.org/v2/gh/{REPOSITORY}/HEAD?urlpath=voila/render/{_notebook(path)}"


def install_spec() -> str:
    """What ``pip install`` takes in a kernel without numlab (Colab, a bare JupyterHub)."""
    return f"numlab @ git+https://github.com/{REPOSITORY}@{BRANCH}"


#: The first line of each notebook's first markdown cell. A plain link, not a badge image:
#: an image from the web would be fetched by every offline JupyterLab and lecture room.
LAUNCH_LINE = "[Open in Colab]({colab}) · [JupyterLab on Binder]({lab}) · [lecture mode on Binder]({voila})"


def launch_line(path: str) -> str:
    return LAUNCH_LINE.format(colab=colab_url(path), lab=binder_lab_url(path),
                              voila=binder_voila_url(path))


def install_guard() -> str:
    """The first code cell of every notebook: nothing where numlab imports (``make lab``,
    nbval, Binder); elsewhere it installs numlab into the running kernel, leaving the torch,
    numpy, matplotlib and ipywidgets already there alone (numlab accepts torch >= 2.3 and
    ipywidgets 7.7 or 8), and says so."""
    return (
        "# Colab or a bare kernel: install numlab into it (the torch already there stays).\n"
        "import importlib.util\n"
        "\n"
        'if importlib.util.find_spec("numlab") is None:\n'
        f'    %pip install -q "{install_spec()}"\n'
        '    print("numlab was not installed here: installed it into this kernel")'
    )
