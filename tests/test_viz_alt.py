"""Alt text: read off the figure (titles, axes, series and what they span), and present on
every figure the committed notebooks show."""
import glob
import html
import json
import pathlib
import re

import numpy as np
import pytest

from numlab.viz import new_figure
from numlab.viz.alt import describe
from numlab.viz.formats import explore_format

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_a_figure_is_described_by_its_axes_series_and_their_extremes():
    fig = new_figure((6, 3))
    ax = fig.subplots()
    h = np.logspace(-8, 0, 9)
    ax.loglog(h, h + 1e-8 / h, label="central")
    ax.axvline(1e-4, label="best h")
    ax.axhline(0.5, label="half")
    ax.plot([1e-3], [2e-3], "o", label="marker")
    ax.set(title="error against h", xlabel="h", ylabel="relative error")
    ax.legend()
    text = describe(fig)
    assert text.startswith('Plot, "error against h": relative error (log scale) against h (log scale)')
    assert "central from 2.0e-04 (at h = 1.0e-04) to 1" in text  # minimum and where it is
    assert "best h: a vertical line at h = 1.0e-04" in text
    assert "half: a horizontal line at 0.5" in text
    assert "marker at h = 0.001: 0.002" in text


def test_several_panels_and_an_image_are_counted_and_named():
    fig = new_figure((8, 3))
    left, right = fig.subplots(1, 2)
    image = left.imshow(np.arange(6.0).reshape(2, 3))
    fig.colorbar(image, ax=left, label="abs error")
    right.bar([0, 1, 2], [3, 1, 2])
    text = describe(fig)
    assert text.startswith("2 panels. Panel 1")
    assert "a colour map of abs error from 0.0 to 5" in text
    assert "Panel 2" in text and "3 bars" in text


def test_the_text_follows_the_figure():
    w = explore_format("fp16", 3.0)
    before = w._repr_mimebundle_()[1]["image/png"]["alt"]
    w.controls["dtype"].value = "bf16"
    after = w._repr_mimebundle_()[1]["image/png"]["alt"]
    assert before and after and before != after


def test_describe_rejects_what_is_not_a_figure():
    with pytest.raises(TypeError, match="fig must be a matplotlib Figure"):
        describe("a figure")


NOTEBOOKS = sorted(glob.glob(str(ROOT / "notebooks" / "**" / "*.ipynb"), recursive=True))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: pathlib.Path(p).stem)
def test_every_committed_figure_carries_alt_text(path):
    nb = json.loads(pathlib.Path(path).read_text())
    for index, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            alts = []
            if "image/png" in data:  # a widget's static frame
                alts.append(out.get("metadata", {}).get("image/png", {}).get("alt", ""))
            for tag in re.findall(r"<img [^>]*>", "".join(data.get("text/html", ""))):  # a figure
                found = re.search(r'alt="([^"]*)"', tag)
                alts.append(html.unescape(found.group(1)) if found else "")
            for alt in alts:
                # a sentence naming panels and values, not "image" or "figure"
                assert len(alt) > 60 and any(c.isdigit() for c in alt), \
                    f"cell {index}: alt text {alt!r} does not say what the figure shows"


def test_a_static_figure_is_an_img_with_its_alt_text():
    fig = new_figure((4, 3))
    fig.add_subplot().plot([1, 2, 3], [3, 1, 2], label="a series")
    data, _ = fig._repr_mimebundle_()
    assert set(data) == {"text/html", "text/plain"}
    alt = re.search(r'alt="([^"]*)"', data["text/html"]).group(1)
    assert html.unescape(alt) == describe(fig) and "a series" in alt

