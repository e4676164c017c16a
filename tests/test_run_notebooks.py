"""make notebooks: re-running an unchanged notebook leaves the file byte for byte unchanged."""
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import run_notebooks  # noqa: E402


def test_consecutive_stream_chunks_are_merged():
    outs = [{"output_type": "stream", "name": "stdout", "text": "a\n"},
            {"output_type": "stream", "name": "stdout", "text": "b\n"},
            {"output_type": "stream", "name": "stderr", "text": "w\n"},
            {"output_type": "display_data", "data": {}},
            {"output_type": "stream", "name": "stdout", "text": "c\n"}]
    got = run_notebooks.coalesce_streams(outs)
    assert [o.get("text") for o in got] == ["a\nb\n", "w\n", None, "c\n"]


@pytest.mark.slow
def test_running_a_notebook_twice_gives_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    source = ROOT / "notebooks" / "03_stable_softmax.ipynb"
    first, second = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    assert run_notebooks.run(source, first) == []
    assert run_notebooks.run(first, second) == []
    assert first.read_bytes() == second.read_bytes()
