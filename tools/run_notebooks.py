"""Re-execute notebooks in place, deterministically, and refuse noisy ones.

usage: python tools/run_notebooks.py [NOTEBOOK ...]   (default: every notebook)

Each notebook runs top to bottom in a fresh kernel from the notebooks/ folder, with
PYTHONHASHSEED fixed (the notebooks seed torch themselves through numlab). Execution
counts are renumbered and the kernel's metadata normalised, so re-running an unchanged
notebook gives an unchanged file. A notebook that writes to stderr (a warning) or raises
is reported and the run fails: the committed notebooks are quiet.
"""
from __future__ import annotations

import os
import pathlib
import sys

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def noisy_outputs(nb) -> list[str]:
    """Stderr streams and errors left in a notebook's outputs, as short strings."""
    found = []
    for index, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {index}: {out['ename']}: {out['evalue']}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                found.append(f"cell {index}: stderr: {out['text'][:300]}")
    return found


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _keep_static_view(output) -> None:
    """Drop a widget's live view (its model id changes every run and its state is not saved)
    and keep the static PNG that numlab's widgets add, so the file is deterministic and the
    figure shows on GitHub and in JupyterLab before the notebook is run."""
    data = output.get("data", {})
    if WIDGET_VIEW in data and "image/png" in data:
        del data[WIDGET_VIEW]
        data["text/plain"] = "[interactive widget: run the notebook to use it]"


def coalesce_streams(outputs: list) -> list:
    """Merge consecutive stream outputs of the same name (stdout, stderr) into one: how the
    kernel chunks a cell's printing varies from run to run, the text does not."""
    merged = []
    for out in outputs:
        if (merged and out.get("output_type") == "stream" and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == out.get("name")):
            merged[-1]["text"] = merged[-1]["text"] + out["text"]
        else:
            merged.append(out)
    return merged


def run(path: pathlib.Path, out_path: pathlib.Path | None = None) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    for count, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        cell.execution_count = count
        for out in cell.get("outputs", []):
            if "execution_count" in out:
                out["execution_count"] = count
        cell.metadata.pop("execution", None)
        cell.outputs = coalesce_streams(cell.get("outputs", []))
        for out in cell.outputs:
            _keep_static_view(out)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.pop("widgets", None)  # widget state changes every run; the PNG stays
    nbformat.write(nb, out_path or path)
    return noisy_outputs(nb)


def main(argv: list[str]) -> int:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    os.environ.setdefault("MPLBACKEND", "Agg")
    paths = [pathlib.Path(a) for a in argv] or sorted(NOTEBOOKS.rglob("*.ipynb"))
    paths = [p for p in paths if ".ipynb_checkpoints" not in p.parts]
    failed = 0
    for path in paths:
        problems = run(path.resolve())
        print(f"{'ok   ' if not problems else 'NOISY'} {path}")
        for problem in problems:
            print(f"      {problem}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
