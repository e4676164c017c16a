"""Sphinx configuration of the web book (``make book``, built by tools/book.py).

The pages are the committed notebooks with their outputs as they are: nothing is executed
(``nb_execution_mode = "off"``), so a build needs no kernel and takes seconds. Launch
buttons come from numlab.links.REPOSITORY, the project's one setting for where it lives.
Everything the pages load (theme, fonts, search, MathJax) is copied into the site: it works
without internet.
"""
import base64
import hashlib
import json
import pathlib

from numlab import links

project = "numlab"
author = "the numlab authors"
copyright = "numlab authors, MIT licence"
root_doc = "index"

extensions = ["myst_nb", "sphinx-mathjax-offline"]
nb_execution_mode = "off"  # the committed outputs are the book's outputs
# A widget's live view needs a kernel; the page shows the static figure saved beside it.
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
myst_enable_extensions = ["dollarmath", "amsmath", "substitution"]
myst_substitutions = {"repository": f"[{links.REPOSITORY}](https://github.com/{links.REPOSITORY})"}
myst_heading_anchors = 3
exclude_patterns = ["README.md", "**/.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type"]

html_theme = "sphinx_book_theme"
html_title = "numlab: the numerics of gradient computation"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"  # a nabla; without one every first visit logs a 404
html_context = {"default_mode": "auto"}  # the reader's light/dark preference; "" logs an error
html_last_updated_fmt = None
html_theme_options = {
    "repository_url": f"https://github.com/{links.REPOSITORY}",
    "repository_branch": links.BRANCH,
    "path_to_docs": "",
    "use_repository_button": True,
    "use_download_button": True,  # the .ipynb itself, from _sources/
    "launch_buttons": {
        "binderhub_url": "https://mybinder.org",
        "colab_url": "https://colab.research.google.com",
        "notebook_interface": "jupyterlab",
    },
    "navigation_with_keys": False,
}


def _alt_texts(srcdir: pathlib.Path) -> dict[str, str]:
    """PNG file name as myst-nb writes it (the sha256 of the image) -> the alt text that the
    notebook output's metadata carries."""
    found = {}
    for path in srcdir.rglob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                png = out.get("data", {}).get("image/png")
                alt = out.get("metadata", {}).get("image/png", {}).get("alt")
                if png and alt:
                    digest = hashlib.sha256(base64.b64decode(png)).hexdigest()
                    found[f"{digest}.png"] = alt
    return found


_ALT: dict[str, str] = {}


def _set_alt(app, doctree):
    from docutils import nodes

    texts = _ALT or _ALT.update(_alt_texts(pathlib.Path(app.srcdir))) or _ALT
    for image in doctree.findall(nodes.image):
        name = pathlib.PurePath(image["uri"]).name
        if name in texts and not image.get("alt"):
            image["alt"] = texts[name]


def setup(app):
    app.connect("doctree-read", _set_alt)
