"""Everything that draws. One module per topic: ``plot_*(ax, result)`` and ``explore_*()``.

matplotlib and ipywidgets are imported here and only here; the compute modules never
import them. Figures are plain ``matplotlib.figure.Figure`` objects rendered with Agg, so
the widgets work the same in JupyterLab, Voila, nbval and headless tests, with no
``%matplotlib`` magic and no pyplot state.
"""
from numlab.viz._explorer import STYLE, Explorer, new_figure

__all__ = ["Explorer", "STYLE", "new_figure"]
