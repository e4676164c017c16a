"""The one palette of every figure: Okabe and Ito's colours, and a dash or marker per series.

Okabe & Ito (2008) chose eight colours that stay apart for the common colour-vision
deficiencies. numlab uses seven of them for series (yellow is too faint as a line on white)
and a grey that still reads as text on white (4.5:1, WCAG AA). No figure tells two series
apart by colour alone: each module pairs its colours with distinct line styles or markers,
and ``tests/test_viz_palette.py`` checks both on every figure, under simulated deuteranopia,
protanopia and tritanopia.
"""
from __future__ import annotations

from cycler import cycler

BLACK = "#000000"
ORANGE = "#E69F00"
SKY = "#56B4E9"
GREEN = "#009E73"
YELLOW = "#F0E442"  # shading only: too light for a line on white
BLUE = "#0072B2"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
GREY = "#767676"  # reference lines and secondary text: 4.5:1 on white
# For text: vermillion and green themselves are too light on white (3.8:1, 3.3:1)
VERMILLION_TEXT = "#B34500"  # 5.6:1
GREEN_TEXT = "#00734F"  # 5.9:1

SERIES = (BLUE, VERMILLION, GREEN, ORANGE, PURPLE, SKY, BLACK)
DASHES = ("-", "--", "-.", ":", (0, (6, 2, 1, 2, 1, 2)), (0, (1, 1)), (0, (8, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X")

# matplotlib's default cycle, for the figures that do not pick their own
CYCLE = cycler(color=SERIES) + cycler(linestyle=DASHES)
