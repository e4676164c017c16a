"""The classroom course: real nbgrader generates, autogrades and records scores in its gradebook.

The course is generated for notebooks 00 and 03 into a temporary folder; three students
submit each release version: one with every answer cell filled from the solution
notebooks, one untouched, one with exactly one wrong answer. The first goes the way a
JupyterHub class does, through an exchange folder (release_assignment, fetch_assignment,
submit, collect); the other two are put into submitted/ as ``zip_collect`` would (the
exchange knows a student only by the login running it, and this test has one login).
nbgrader's autograde grades them and the scores are read back from the gradebook (nbgrader's
SQLite database). Every step runs through nbgrader's own Python API and exchange classes (what
its formgrader and its commands run) in this process: one start-up instead of ten.
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ["00", "03"]
pytest.importorskip("nbgrader")
sys.path.insert(0, str(ROOT / "tools"))

import assignments  # noqa: E402

from numlab.check import exercises  # noqa: E402

# nbgrader 0.9.6's own gradebook code (nbgrader/api.py) trips SQLAlchemy 2's autoflush
# warnings while it records a submission; the scores it records are what the tests read.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")]
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
WRONG = {"00": "00.2", "03": "03.1"}  # the exercise the third student gets wrong


def _student(api, step: str, name: str) -> None:
    """A student's ``nbgrader fetch_assignment`` or ``nbgrader submit``, as the command runs it."""
    from nbgrader.utils import capture_log, temp_attrs

    with temp_attrs(api.coursedir, assignment_id=name):
        app = getattr(api.exchange, step)(coursedir=api.coursedir, authenticator=api.authenticator,
                                          parent=api)
        assignments.succeeded(capture_log(app), f"{step} {name}")


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _solution_region(cell) -> str:
    return re.search(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION\n", cell.source, re.S).group(1)


def _answer(path: pathlib.Path, solved: dict[str, str], wrong: str | None = None) -> None:
    """Fill the answer cells of the notebook at ``path``: the worked solutions, one wrong."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        grade_id = _grade_id(cell)
        if grade_id in solved:
            code = solved[grade_id]
            if grade_id == f"answer_{wrong}".replace(".", "_"):
                code += "my_answer = -12345.0  # a wrong answer\n"
            assert STUB in cell.source
            cell.source = cell.source.replace(STUB, code.rstrip("\n"))
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    from nbgrader.utils import get_username

    out, exchange, home = (tmp_path_factory.mktemp(n) for n in ("course", "exchange", "student"))
    exchange.chmod(0o777)
    assignments.build(out, NOTEBOOKS)
    names = {nn: next(ROOT.glob(f"notebooks/{nn}_*.ipynb")).stem for nn in NOTEBOOKS}
    # nbgrader's own API, as its formgrader and its commands use it (one start-up, not ten)
    teacher = assignments.nbgrader_api(out, **{"Exchange.root": str(exchange)})
    student = assignments.nbgrader_api(out, **{"Exchange.root": str(exchange),
                                               "Exchange.assignment_dir": str(home)})
    students = {"filled": get_username(), "untouched": "untouched", "one_wrong": "one_wrong"}
    for nn, name in names.items():
        source = nbformat.read(out / "source" / name / f"{name}.ipynb", as_version=4)
        solved = {_grade_id(c): _solution_region(c) for c in source.cells
                  if c.metadata.get("nbgrader", {}).get("solution")}
        assignments.succeeded(teacher.release_assignment(name), f"release_assignment {name}")
        _student(student, "FetchAssignment", name)
        _answer(home / name / f"{name}.ipynb", solved)
        _student(student, "Submit", name)
        assignments.succeeded(teacher.collect(name), f"collect {name}")
        release = out / "release" / name / f"{name}.ipynb"
        for login, wrong in (("untouched", None), ("one_wrong", WRONG[nn])):
            folder = out / "submitted" / login / name
            folder.mkdir(parents=True)
            shutil.copy(release, folder)
            if wrong:
                _answer(folder / f"{name}.ipynb", solved, wrong)
        for login in students.values():
            assignments.succeeded(teacher.autograde(name, login), f"autograde {name} {login}")
    return out, names, students


@pytest.mark.parametrize("nn", NOTEBOOKS)
def test_autograde_scores_from_the_gradebook(course, nn):
    from nbgrader.api import Gradebook

    out, names, students = course
    points = json.loads((out / "points.json").read_text())[names[nn]]
    total = sum(points.values())
    assert points == {key: item.points for key, item in exercises(nn).items()}
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gradebook:
        scores = {who: gradebook.find_submission(names[nn], login).score for who, login in students.items()}
        assert gradebook.find_assignment(names[nn]).max_score == total
    print(f"{names[nn]}: {total} points; scores {scores}")
    assert scores == {"filled": total, "untouched": 0, "one_wrong": total - points[WRONG[nn]]}


@pytest.mark.parametrize("nn", NOTEBOOKS)
def test_check_still_gives_feedback_in_the_graded_notebooks(course, nn):
    out, names, students = course
    name = names[nn]

    def shown(login: str) -> str:
        nb = nbformat.read(out / "autograded" / login / name / f"{name}.ipynb", as_version=4)
        return "\n".join(json.dumps(o.get("data", {}).get("text/plain", "")) for c in nb.cells
                         if c.cell_type == "code" for o in c.get("outputs", []))

    assert shown(students["filled"]).count(": correct.") == len(exercises(nn))
    wrong = shown(students["one_wrong"])
    assert f"{WRONG[nn]}: not yet (-12345.0). Hint 1 of 2" in wrong


@pytest.mark.parametrize("nn", NOTEBOOKS)
def test_release_holds_no_solution_and_no_hidden_test(course, nn):
    out, names, _ = course
    name = names[nn]
    release = (out / "release" / name / f"{name}.ipynb").read_text()
    source = nbformat.read(out / "source" / name / f"{name}.ipynb", as_version=4)
    public = (ROOT / "notebooks" / f"{name}.ipynb").read_text()  # what students can read anyway
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "matches(my_answer"):
        assert marker not in release
    for key, item in exercises(nn).items():
        value = assignments.literal(item.expected())
        assert value in "\n".join(c.source for c in source.cells)  # the source version holds it
        if value not in public:
            assert value not in release, f"{key}'s expected value {value} is in the release"
    for cell in source.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            for line in _solution_region(cell).splitlines():
                if len(line.strip()) > 25 and line.strip() not in public:
                    assert line.strip() not in release, f"solution line leaked: {line!r}"
    nb = json.loads(release)
    assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    graded = [c for c in source.cells if "nbgrader" in c.metadata]  # stable ids: reproducible
    assert graded and all(c.id == _grade_id(c) for c in graded)
    assert "](solutions/" not in release  # the course has no solutions folder to link to


def test_unknown_notebook_is_refused():
    with pytest.raises(ValueError, match="--notebooks: no notebook"):
        assignments.topic_notebooks(["42"])
