"""numlab: the numerics of gradient computation, measured.

Topic modules (``numlab.formats``, ``numlab.finite_diff``, ...) are imported on first
use, so ``import numlab`` costs little beyond ``import torch`` and never pulls in
matplotlib or ipywidgets (those live in ``numlab.viz``).
"""
import importlib

__version__ = "0.1.0"


def __getattr__(name):
    # PEP 562: `numlab.formats` works without importing every topic up front.
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module 'numlab' has no attribute {name!r}") from None
