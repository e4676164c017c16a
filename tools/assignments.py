"""Build an nbgrader course from the notebooks: ``make assignments`` (default OUT _build/course).

usage: python tools/assignments.py [OUT] [--notebooks NN ...]

For each topic notebook, OUT/source/<name>/<name>.ipynb is the notebook with every
exercise cell (``check("04.1", my_answer)``) turned into two nbgrader cells:

- an answer cell whose ``### BEGIN SOLUTION`` region holds the worked solution, taken from
  the solution notebook's cells for that exercise (so there is one copy of each solution);
- an autograded test cell worth ``Exercise.points``, whose ``### BEGIN HIDDEN TESTS`` region
  compares the answer with the value numlab computes now, on this machine, with the
  tolerance ``check`` uses (``numlab.check.matches``). The solutions are never imported.

Then it writes OUT/nbgrader_config.py and runs nbgrader's generate_assignment for each
notebook (through nbgrader's Python API, configured by that file), which creates the
gradebook (OUT/gradebook.db) and the student versions in OUT/release/ (no solutions, no
hidden tests, no outputs). Run the later nbgrader steps (release_assignment, collect,
autograde, generate_feedback) from OUT.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import sys
import time

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from numlab.check import exercises  # noqa: E402

EXERCISE_CELL = re.compile(r'^check\("(\d\d\.\d+)", my_answer\)\s*$', re.M)
SOLUTIONS_LINK = re.compile(r"[^.\n]*\]\(solutions/[^)]*\)[^.\n]*\.\s*")
COURSE = "numlab"


def topic_notebooks(only: list[str] | None = None) -> list[pathlib.Path]:
    found = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = sorted(set(only) - {p.name[:2] for p in found})
        if unknown:
            raise ValueError(f"--notebooks: no notebook {unknown}; there are {[p.name[:2] for p in found]}")
        found = [p for p in found if p.name[:2] in only]
    return found


def literal(value) -> str:
    """``value`` as Python source that evaluates back to it (nan and inf included)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f'float("{value}")'
    if isinstance(value, tuple | list):
        inner = ", ".join(literal(v) for v in value)
        return f"({inner},)" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, bool | int | float | str):
        return repr(value)
    raise TypeError(f"an exercise's expected value must be a number, string or tuple, got {value!r}")


def solution_code(solutions, key: str) -> str:
    """The solution notebook's code for exercise ``key``, ending in ``my_answer = ...``.

    The cells after the markdown cell with a line starting ``**N.**`` (or ``**NN.N**``), up
    to the one that asserts ``check(key, answer)``; that assertion becomes the assignment to
    ``my_answer``.
    """
    number = key.split(".")[1]
    cells = solutions.cells
    heading = re.compile(rf"^\*\*({re.escape(number)}\.|{re.escape(key)})\*\*", re.M)
    start = next((i for i, c in enumerate(cells) if c.cell_type == "markdown" and heading.search(c.source)),
                 None)
    if start is None:
        raise ValueError(f"the solution notebook has no markdown cell starting **{number}.** for {key}")
    assertion = re.compile(rf'^assert check\("{re.escape(key)}", (.+)\)\s*$', re.M)
    parts = []
    for cell in cells[start + 1:]:
        if cell.cell_type != "code":
            continue
        code = "\n".join(line for line in cell.source.splitlines() if not line.startswith("# NBVAL"))
        if assertion.search(code):
            parts.append(assertion.sub(r"my_answer = \1", code))
            return "\n\n".join(parts)
        parts.append(code)
    raise ValueError(f"the solution notebook never asserts check({key!r}, ...)")


def solution_imports(solutions, topic) -> list[str]:
    """Import lines the solutions use that the topic notebook does not already run."""
    have = {line.strip() for c in topic.cells if c.cell_type == "code" for line in c.source.splitlines()}
    lines = [line for c in solutions.cells if c.cell_type == "code"
             for line in c.source.splitlines() if re.match(r"(import|from) \S+", line)]
    return [line for line in dict.fromkeys(lines) if line.strip() not in have]


def _meta(grade_id: str, *, solution: bool, grade: bool, points: int = 0) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": not solution, "schema_version": 3,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def exercise_cells(key: str, item, solution: str, imports: list[str], expected) -> list:
    slug = key.replace(".", "_")
    s = "" if item.points == 1 else "s"
    prompt = nbformat.v4.new_markdown_cell(f"**Exercise {key}** ({item.points} point{s}). {item.prompt}")
    prompt.metadata["nbgrader"] = _meta(f"prompt_{slug}", solution=False, grade=False)
    answer = nbformat.v4.new_code_cell("\n".join([
        "my_answer = None  # your answer goes here",
        "### BEGIN SOLUTION", *imports, solution, "### END SOLUTION",
        f'check("{key}", my_answer)',
    ]))
    answer.metadata["nbgrader"] = _meta(f"answer_{slug}", solution=True, grade=False)
    test = nbformat.v4.new_code_cell("\n".join([
        f"# {key}: compared with the value numlab computed when this assignment was made",
        "from numlab.check import matches",
        "",
        f'assert my_answer is not None, "{key}: no answer yet (set my_answer in the cell above)"',
        "### BEGIN HIDDEN TESTS",
        f"assert matches(my_answer, {literal(expected)}, rtol={item.rtol!r})",
        "### END HIDDEN TESTS",
    ]))
    test.metadata["nbgrader"] = _meta(f"test_{slug}", solution=False, grade=True, points=item.points)
    for cell in (prompt, answer, test):  # ids from the grade ids: a regenerated course is the same
        cell.id = cell.metadata["nbgrader"]["grade_id"]
    return [prompt, answer, test]


def source_version(topic_path: pathlib.Path) -> tuple[nbformat.NotebookNode, dict]:
    """The instructor's version of one notebook and its points per exercise."""
    topic = nbformat.read(topic_path, as_version=4)
    solutions_path = ROOT / "notebooks" / "solutions" / f"{topic_path.stem}_solutions.ipynb"
    solutions = nbformat.read(solutions_path, as_version=4)
    table = exercises(topic_path.name[:2])
    imports = solution_imports(solutions, topic)
    cells, points = [], {}
    for cell in topic.cells:
        found = EXERCISE_CELL.search(cell.source) if cell.cell_type == "code" else None
        if found is None:
            if cell.cell_type == "markdown":  # the solutions are not in the course
                cell.source = SOLUTIONS_LINK.sub("", cell.source)
            cells.append(cell)
            continue
        key = found.group(1)
        item = table[key]
        cells += exercise_cells(key, item, solution_code(solutions, key), imports, item.expected())
        points[key] = item.points
    missing = sorted(set(table) - set(points))
    if missing:
        raise ValueError(f"{topic_path.name}: no exercise cell for {missing}")
    topic.cells = cells
    return topic, points


CONFIG = '''# Written by numlab's tools/assignments.py; regenerate it with `make assignments`.
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = {course!r}
c.CourseDirectory.root = {root!r}
# Some notebooks train small models and start worker processes: give each cell time.
c.ExecutePreprocessor.timeout = 600
'''


def nbgrader_api(course: pathlib.Path, **settings):
    """nbgrader's own Python API (what its formgrader runs), set up by the course's
    ``nbgrader_config.py`` plus ``settings`` ({"Exchange.root": ...}): the same steps as the
    ``nbgrader`` commands, without paying their start-up (about 3 s each here) every time."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    for key, value in settings.items():
        section, name = key.split(".")
        setattr(config[section], name, value)
    # a new gradebook asks the alembic command for its schema version
    bin_dir = str(pathlib.Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return NbGraderAPI(config=config)


def succeeded(result: dict, step: str) -> None:
    """Raise a RuntimeError with nbgrader's own log and traceback if an NbGraderAPI step failed."""
    if not result["success"]:
        raise RuntimeError(f"nbgrader {step} failed:\n{result.get('log', '')}{result.get('error', '')}")


def build(out: pathlib.Path, only: list[str] | None = None) -> dict[str, dict]:
    """Write the course into ``out`` and generate the release versions; points per notebook."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "nbgrader_config.py").write_text(CONFIG.format(course=COURSE, root=str(out)))
    table = {}
    for path in topic_notebooks(only):
        nb, points = source_version(path)
        folder = out / "source" / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / path.name)
        table[path.stem] = points
    api = nbgrader_api(out)
    for name in table:
        succeeded(api.generate_assignment(name, force=True), f"generate_assignment {name}")
    (out / "points.json").write_text(json.dumps(table, indent=1) + "\n")
    return table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "_build" / "course"))
    parser.add_argument("--notebooks", nargs="+", metavar="NN", help="only these notebooks (00 03 ...)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    table = build(pathlib.Path(args.out), args.notebooks)
    total = sum(sum(p.values()) for p in table.values())
    for name, points in table.items():
        print(f"{name}: {len(points)} exercises, {sum(points.values())} points")
    print(f"course in {args.out}: {len(table)} assignments, {total} points, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
