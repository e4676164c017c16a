"""Project-wide pytest set-up: notebooks must run quietly under nbval."""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONHASHSEED", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test's two workers on two cores: one thread each (here, in the kernels and servers
    # they start). With torch's default of one per core, OpenMP threads spin waiting for a core
    # the other worker holds: the op_db test took 143 s beside the browser tests, 28 s alone.
    # The notebooks' checked outputs are the same with one thread.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Fail a notebook cell that writes to stderr (a warning): the notebooks are quiet."""
    outcome = yield
    outputs = getattr(item, "test_outputs", None)  # set by nbval's IPyNbCell.runtest
    if outcome.excinfo is not None or not outputs:
        return
    noise = [o.get("text", "") for o in outputs
             if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    if noise:
        pytest.fail("cell wrote to stderr (notebooks must run without warnings):\n"
                    + "".join(noise)[:2000], pytrace=False)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: only asked when xdist runs
def pytest_xdist_make_scheduler(config, log):
    """``make test``'s two workers (``pytest -n 2 --dist loadfile``): one file at a time, and
    the browser tests (every file in tests/browser/) as one file.

    Whole files, because a notebook's cells share one kernel and run in order, and a test
    module's fixtures (an nbgrader course, a worker launch) are built once. The browser tests
    on one worker, one after another, because each brings a server, its kernels and Chromium,
    and two such sets on two cores time out. (xdist's own ``loadgroup`` would say this with
    marks, but stops grouping under pytest 9.2's node ids: pytest-xdist issue #1386.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    browser = "tests/browser/"
    # Handed out first, longest first: the browser tests (about 250 s, half the run), torch's
    # operator database (30-60 s beside them) and the nbgrader course (35 s). xdist queues
    # the files with most tests first, and these have few: handed out last, the browser
    # tests ended 30-40 s after the other worker had run out of work, and the operator
    # database test, one test, often ran alone at the end.
    first = (browser, "tests/test_gradcheck_opdb.py", "tests/test_assignments.py")

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return browser if path.startswith(browser) else path

        def _assign_work_unit(self, node) -> None:
            for scope in reversed(first):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return FileScheduling(config, log)
