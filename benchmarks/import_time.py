"""What `import numlab` costs on top of `import torch` (peer: torch itself), in fresh processes.

Target: at most 0.2 s more than `import torch`, and neither matplotlib nor ipywidgets loaded.
"""
from __future__ import annotations

import statistics
import subprocess
import sys

from _table import markdown

PROBE = "import time, sys; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"
CASES = [
    ("import torch", "import torch"),
    ("import numlab", "import numlab"),
    ("import numlab.formats (first topic)", "import numlab.formats"),
    ("import numlab.viz (widgets, matplotlib)", "import numlab.viz"),
]


def cost(stmt: str, repeat: int = 5) -> float:
    runs = [float(subprocess.run([sys.executable, "-c", PROBE.format(stmt=stmt)], capture_output=True,
                                 text=True, check=True).stdout) for _ in range(repeat)]
    return statistics.median(runs)


def main() -> None:
    times = {label: cost(stmt) for label, stmt in CASES}
    base = times["import torch"]
    rows = [[label, f"{t:.3f}", f"{t - base:+.3f}", f"{t / base:.2f}x"] for label, t in times.items()]
    heavy = subprocess.run([sys.executable, "-c", "import sys, numlab, numlab.formats; print("
                            "[m for m in ('matplotlib', 'ipywidgets') if m in sys.modules])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    print("### Import time (median of 5 fresh processes; peer: `import torch`)\n")
    print(markdown(["statement", "seconds", "over torch", "ratio to torch"], rows))
    verdict = "met" if times["import numlab"] - base <= 0.2 else "MISSED"
    print(f"\nTarget `import numlab` <= torch + 0.2 s: {verdict}. "
          f"Plotting/widget modules loaded by `import numlab`: {heavy}")


if __name__ == "__main__":
    main()
