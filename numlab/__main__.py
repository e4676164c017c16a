"""``python -m numlab doctor``: what this machine has, and what numlab will use."""
from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys

PACKAGES = ("torch", "numpy", "matplotlib", "ipywidgets", "jupyterlab", "nbval", "voila")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def doctor() -> str:
    """The report ``python -m numlab doctor`` prints."""
    from numlab import device

    lines = [f"python      {platform.python_version()} ({sys.executable})"]
    lines += [f"{name:<11} {_version(name)}" for name in PACKAGES]
    chosen = device.pick("auto")
    lines.append(f"devices     {', '.join(device.available())}; numlab uses: {chosen.type}")
    for kind in device.available():
        lines.append(f"            {device.capabilities(kind)!r}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m numlab")
    parser.add_argument("command", choices=["doctor"], help="doctor: versions and device support")
    parser.parse_args(argv)
    print(doctor())
    return 0


if __name__ == "__main__":
    sys.exit(main())
