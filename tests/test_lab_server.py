"""`make lab` starts JupyterLab serving the notebooks (no browser needed for this one).

The test runs the Makefile's own ``lab`` recipe (so ``--allow-root`` when root, the
``notebooks/`` root and the port variable are what a person gets), on a free port, with this
environment's tools, a private Jupyter config (no browser is opened) and a token. It checks
that ``/api/status`` answers, that every notebook opens (as a document and in the JupyterLab
page; the first also gets a kernel, which imports numlab from ``notebooks/``), and that
stopping it leaves no process.
"""
from __future__ import annotations

import json
import secrets
import shutil
import socket
from urllib.parse import urlparse

import pytest
from browser.servers import NOTEBOOKS, make_target, notebooks


def _run_in_kernel(connection_file, code: str, timeout: float = 120.0) -> str:
    """Execute ``code`` in a running kernel; return its stdout (fails on an error)."""
    from jupyter_client import BlockingKernelClient

    client = BlockingKernelClient(connection_file=str(connection_file))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=timeout)
        out = []
        reply = client.execute_interactive(
            code, timeout=timeout,
            output_hook=lambda msg: out.append(msg["content"].get("text", "")),
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(out)
    finally:
        client.stop_channels()


@pytest.mark.skipif(shutil.which("make") is None, reason="`make` is not installed")
def test_make_lab_serves_the_notebooks(tmp_path):
    token = secrets.token_hex(16)
    server = make_target("lab", tmp_path, token=token)
    expected = notebooks(NOTEBOOKS)
    try:
        status = json.loads(server.wait("/api/status", timeout=120))
        assert {"started", "kernels"} <= status.keys(), status
        code, _ = server.request("GET", "/api/status", token_in_header=False)
        assert code == 403, "JupyterLab answered without its token"

        code, body = server.get("/api/contents/")
        assert code == 200, body
        listed = {item["name"] for item in json.loads(body)["content"]}
        assert {p.name for p in expected} <= listed, "JupyterLab does not serve notebooks/"

        for path in expected:
            code, body = server.get(f"/api/contents/{path.name}?content=1&type=notebook")
            assert code == 200, f"{path.name}: {code} {body[:300]!r}"
            model = json.loads(body)
            on_disk = json.loads(path.read_text(encoding="utf-8"))
            assert model["type"] == "notebook"
            assert len(model["content"]["cells"]) == len(on_disk["cells"])
            code, page = server.get(f"/lab/tree/{path.name}")
            assert code == 200 and b"jupyter-config-data" in page, f"{path.name}: {code}"

        if expected:  # the first notebook gets a kernel, as when a reader opens it
            code, body = server.request("POST", "/api/sessions", {
                "path": expected[0].name, "type": "notebook", "name": expected[0].name,
                "kernel": {"name": "python3"}})
            assert code == 201, body
            kernel = json.loads(body)["kernel"]["id"]
            server.remember_children()
            connection = tmp_path / "runtime" / f"kernel-{kernel}.json"
            assert connection.exists(), sorted(p.name for p in connection.parent.iterdir())
            out = _run_in_kernel(connection, "import os, numlab; print(os.getcwd())")
            assert out.strip() == str(expected[0].parent), "kernel not in notebooks/"
    finally:
        survivors = server.stop()
    assert not survivors, f"processes left running: {survivors}"
    assert server.proc.returncode is not None
    with socket.socket() as sock:  # the port is free again
        assert sock.connect_ex(("127.0.0.1", urlparse(server.url).port)) != 0
