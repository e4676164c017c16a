"""The project's own machinery: device picking, doctor, check, packaging, import cost."""
import json
import math
import pathlib
import re
import subprocess
import sys

import pytest
import torch

from numlab import check as check_mod
from numlab import device
from numlab.__main__ import doctor
from numlab.check import check, exercises

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = pathlib.Path(__file__).resolve().parent.parent


# --- device ------------------------------------------------------------------------------
def test_auto_picks_the_best_available_and_cpu_is_always_there():
    kinds = device.available()
    assert kinds[-1] == "cpu"
    assert device.pick("auto").type == kinds[0]
    assert device.pick(torch.device("cpu")).type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_an_absent_gpu_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match=r"device='cuda'.*not available.*device='auto'"):
        device.pick("cuda")


@pytest.mark.parametrize("bad", ["gpu", "tpu", 3, None])
def test_unknown_device_names_the_argument(bad):
    with pytest.raises(ValueError, match="device must be one of"):
        device.pick(bad)


def test_capabilities_on_cpu_are_found_by_trying():
    caps = device.capabilities("cpu")
    # torch >= 2.3 supports both autocast dtypes and GradScaler("cpu") on CPU (STACK-NOTES).
    assert caps.autocast_bf16 and caps.autocast_fp16 and caps.grad_scaler
    assert "GradScaler yes" in repr(caps)


def test_doctor_reports_versions_and_device():
    text = doctor()
    assert f"torch       {torch.__version__}" in text
    assert "numlab uses: " + device.pick().type in text
    for name in ("ipywidgets", "jupyterlab", "matplotlib", "python"):
        assert re.search(rf"^{name}\s+\S", text, re.M)
    out = subprocess.run([sys.executable, "-m", "numlab", "doctor"], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert "GradScaler" in out.stdout and out.stderr == ""


# --- import cost ---------------------------------------------------------------------------
def test_import_numlab_pulls_in_no_plotting_or_widgets():
    code = ("import sys, numlab, numlab.formats, numlab.device, numlab.check; "
            "print(sorted(m for m in ('matplotlib', 'ipywidgets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_submodules_and_a_clear_error_for_typos():
    import numlab

    assert numlab.formats.info("fp16").bits == 16
    with pytest.raises(AttributeError, match="no attribute 'fromats'"):
        numlab.fromats  # noqa: B018


# --- check ---------------------------------------------------------------------------------
def test_check_accepts_the_computed_answer_and_rejects_others():
    check_mod._wrong.clear()
    good = check("00.2", 2**24)
    assert good and "correct" in repr(good)
    bad = check("00.2", 2**23)
    assert not bad and "Hint" in repr(bad) and str(2**24) not in repr(bad)


def test_hints_come_in_tiers_nudge_then_method():
    check_mod._wrong.clear()
    nudge, method = exercises("04")["04.1"].hints
    first, second, third = (repr(check("04.1", 0.5)) for _ in range(3))
    assert "Hint 1 of 2" in first and nudge in first and method not in first
    assert "Hint 2 of 2" in second and method in second and nudge not in second
    assert third == second  # the method stays the last word
    assert "Hint 1 of 2" in repr(check("04.2", 1.0))  # each exercise counts its own asks


def _spellings(value) -> set[str]:
    """Ways an answer could be written in a hint: repr, %g forms, 2**k for powers of two."""
    if isinstance(value, bool) or isinstance(value, str):
        return {str(value)}
    if not isinstance(value, int | float) or not math.isfinite(value):
        return set()
    if value == int(value) and abs(value) < 10:
        return set()  # small whole numbers (0..9) occur in any sentence; nothing to look for
    out = {repr(value), f"{value:g}", f"{value:.3g}", f"{value:.4g}"}
    mantissa, exponent = math.frexp(value)
    if mantissa == 0.5:
        out.add(f"2**{exponent - 1}")
    return out


def _calls(fn) -> set[str]:
    """numlab functions the expected-value code calls, directly or through a helper."""
    out = set()
    for name in fn.__code__.co_names:
        target = fn.__globals__.get(name)
        if callable(target) and getattr(target, "__module__", "").startswith("numlab"):
            out.add(name)
            if getattr(target, "__module__", "").startswith("numlab.exercises"):
                out |= _calls(target)
    return out


@pytest.mark.parametrize("nn", ["00", "01", "02", "03", "04", "05", "06"])
def test_hints_do_not_give_the_answer_away(nn):
    for key, item in exercises(nn).items():
        assert len(item.hints) == 2, f"{key}: hints are (nudge, method)"
        expected = item.expected()
        values = expected if isinstance(expected, tuple | list) else [expected]
        for tier, hint in enumerate(item.hints, 1):
            for value in values:
                for spelling in _spellings(value):
                    assert not re.search(rf"(?<![\w.*]){re.escape(spelling)}(?![\w.])", hint), (
                        f"{key} hint {tier} spells the answer {spelling}")
            for name in _calls(item.expected):
                assert f"{name}(" not in hint, f"{key} hint {tier} names the call {name}()"
        assert item.points >= 1


def test_matches_is_the_comparison_the_hidden_tests_use():
    assert check_mod.matches(1.0005, 1.0, rtol=1e-3) and not check_mod.matches(1.01, 1.0, rtol=1e-3)
    assert check_mod.matches(float("nan"), float("nan")) and not check_mod.matches(1.0, float("inf"))
    assert check_mod.matches((1, "MulBackward0"), (1.0, "MulBackward0"), rtol=0)
    for bad in (-1e-3, 1.0, "0.1", True):
        with pytest.raises(ValueError, match="rtol"):
            check_mod.matches(1.0, 1.0, rtol=bad)


def test_check_compares_floats_within_rtol_and_handles_non_numbers():
    assert check_mod._matches(1.0005, 1.0, 1e-3) and not check_mod._matches(1.01, 1.0, 1e-3)
    assert check_mod._matches(torch.tensor(2.0), 2.0, 0) and not check_mod._matches("x", 2.0, 0)
    assert not check("00.2", "a string") and not check("00.2", True)


@pytest.mark.parametrize("bad,match", [("001", "look like"), ("7.1", "two-digit"), ("42.1", "no exercises"),
                                       ("00.9", "unknown exercise")])
def test_check_bad_ids(bad, match):
    with pytest.raises(ValueError, match=match):
        check(bad, 1)


def test_every_notebook_with_exercises_has_solutions_that_compute():
    for module in sorted((ROOT / "numlab" / "exercises").glob("nb*.py")):
        nn = module.stem[2:]
        table = exercises(nn)
        assert table, f"{module} has no exercises"
        for item in table.values():
            item.expected()  # each expected value is computed, and computing it works
        (topic,) = (ROOT / "notebooks").glob(f"{nn}_*.ipynb")
        (solutions,) = (ROOT / "notebooks" / "solutions").glob(f"{nn}_*_solutions.ipynb")
        topic_code, solution_code = (
            "\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"]
                      if c["cell_type"] == "code")
            for p in (topic, solutions))
        for key in table:  # a cell to answer it in, and a worked solution that checks itself
            assert f'check("{key}", my_answer)' in topic_code, f"{topic.name}: no cell for {key}"
            assert f'assert check("{key}", ' in solution_code, f"{solutions.name}: {key}"


# --- packaging -----------------------------------------------------------------------------
def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!\[;:]", requirement.strip(), maxsplit=1)[0].lower()


CONDA_NAMES = {"pytorch": "torch", "matplotlib-base": "matplotlib"}


def _requirements(project) -> list[str]:
    """The dependencies and every extra's requirements, without numlab's own extras."""
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs]
    return project["dependencies"] + [r for r in extras if _name(r) != "numlab"]


def test_environment_yml_and_pyproject_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(r) for r in _requirements(project)}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("dependencies:")
    conda = [ln.strip()[2:] for ln in lines[start + 1:] if ln.strip().startswith("- ")]
    conda_names = {CONDA_NAMES.get(_name(c), _name(c)) for c in conda} - {"python", "pip"}
    assert conda_names == pip_names


def test_environment_yml_bounds_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = _requirements(project)
    env = (ROOT / "environment.yml").read_text()
    for req in reqs:
        bound = req[len(_name(req)):]
        assert bound in env, f"{req}: bound {bound!r} missing from environment.yml"


def test_a_kernel_install_pulls_no_front_end_and_both_widget_lines():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    kernel = {_name(r) for r in project["dependencies"]}
    # anywidget brings the live figure's alt text; it needs ipywidgets, psygnal and
    # typing_extensions, no front end (Colab and ipywidgets 7 fall back to ipywidgets.Image)
    assert kernel == {"torch", "numpy", "matplotlib", "ipywidgets", "anywidget"}
    assert "ipywidgets>=7.7,<9" in project["dependencies"]  # Colab's front end renders 7.x
    lab = {_name(r) for r in project["optional-dependencies"]["lab"]}
    assert {"jupyterlab", "voila"} <= lab and not lab & kernel
    assert "numlab[lab,test,book,course]" in project["optional-dependencies"]["dev"]


def test_torch_pinned_for_installs_and_cpu_on_conda():
    assert "torch==" in (ROOT / "constraints.txt").read_text()
    assert 'build="cpu*"' in (ROOT / "environment.yml").read_text()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_readme_names_the_two_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_jupyter_settings_turn_off_news(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "jupyter_settings.py"), str(tmp_path)], check=True)
    data = json.loads((tmp_path / "share/jupyter/lab/settings/overrides.json").read_text())
    assert data["@jupyterlab/apputils-extension:notification"]["checkForUpdates"] is False
    # lecture mode's template, the default for `voila` and for the server's voila/render
    template = tmp_path / "share/jupyter/voila/templates/numlab"
    assert json.loads((template / "conf.json").read_text())["base_template"] == "lab"
    voila_json = json.loads((tmp_path / "etc/jupyter/voila.json").read_text())
    assert voila_json["VoilaConfiguration"]["template"] == "numlab"
    assert not (tmp_path / "etc/jupyter/jupyter_server_config.d/numlab_voila.json").exists()
    # make present's pool: traitlets ignores a misspelt class or trait, so ask Voila's own class
    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
    from voila.voila_kernel_manager import voila_kernel_manager_factory

    pool = json.loads((tmp_path / "etc/jupyter/voila.json").read_text())["VoilaKernelManager"]
    manager = voila_kernel_manager_factory(AsyncMappingKernelManager, True, 1)
    assert manager.__name__ == "VoilaKernelManager"
    assert pool == {"fill_delay": 8} and "fill_delay" in manager.class_trait_names(config=True)
    # kernel messages without Nagle's delay, in JupyterLab (and voila/render) and in `voila`
    from jupyter_server.serverapp import ServerApp
    from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
    from voila.app import Voila

    from numlab._websocket import NoDelayConnection

    assert issubclass(NoDelayConnection, ZMQChannelsWebsocketConnection)
    server = json.loads((tmp_path / "etc/jupyter/jupyter_server_config.json").read_text())
    voila = json.loads((tmp_path / "etc/jupyter/voila.json").read_text())
    for app, config in [(ServerApp, server["ServerApp"]), (Voila, voila["Voila"])]:
        assert "kernel_websocket_connection_class" in app.class_trait_names(config=True)
        assert config["kernel_websocket_connection_class"] == "numlab._websocket.NoDelayConnection"


def test_notebook_runner_flags_stderr_and_errors():
    sys.path.insert(0, str(ROOT / "tools"))
    from run_notebooks import noisy_outputs

    nb = {"cells": [{"outputs": [{"output_type": "stream", "name": "stderr", "text": "UserWarning: x"}]},
                    {"outputs": [{"output_type": "error", "ename": "ValueError", "evalue": "bad"}]},
                    {"outputs": [{"output_type": "stream", "name": "stdout", "text": "fine"}]}]}
    found = noisy_outputs(nb)
    assert len(found) == 2 and "UserWarning" in found[0] and "ValueError" in found[1]


def test_threads_context_sets_and_restores():
    before = torch.get_num_threads()
    with device.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with device.threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be a positive int"):
        with device.threads(0):
            pass


def test_shared_argument_checks_name_the_argument():
    import numpy as np

    from numlab._checks import int_at_least, positive_number

    assert int_at_least("steps", np.int64(3)) == 3 and positive_number("lr", 2) == 2.0
    for bad, err in [(True, TypeError), (1.5, TypeError), (0, ValueError)]:
        with pytest.raises(err, match=r"steps must be an int >= 1"):
            int_at_least("steps", bad)
    for bad, err in [("1", TypeError), (0.0, ValueError), (float("inf"), ValueError), (-1, ValueError)]:
        with pytest.raises(err, match="lr must be a positive finite number"):
            positive_number("lr", bad)
    with pytest.raises(ValueError, match="flips"):
        positive_number("max_norm", -1.0, " (a negative one flips signs)")
