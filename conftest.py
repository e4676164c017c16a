"""Project-wide pytest set-up: notebooks must run quietly under nbval."""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONHASHSEED", "0")


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
