"""`make lab` starts JupyterLab serving the notebooks (no browser needed for this one).

The test runs the Makefile's own ``lab`` recipe (so ``--allow-root`` when root, the
``notebooks/`` root and the port variable are what a person gets), on a free port, with this
environment's tools, a private Jupyter config (no browser is opened) and a token. It checks
that ``/api/status`` answers, that every notebook opens (as a document and in the JupyterLab
page; the first also gets a kernel, which imports numlab from ``notebooks/``), and that
stopping it leaves no process. The kernel's websocket answers a burst of small messages
without Nagle's 40 ms hold-up (``numlab._websocket``), and the server's ``voila/render``
(Binder's lecture links) shows numlab's lecture template.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import shutil
import socket
import time
import uuid
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


def _held_back(server, kernel: str, requests: int = 20, hold_ms: float = 30.0) -> int:
    """How many of ``requests`` executions of ``pass`` had their "idle" status reach a
    websocket client ``hold_ms`` or more after their "busy" one (JSON protocol, as JupyterLab's
    earlier front ends speak). With Nagle's algorithm on the server's socket, 5 of 12 and 10 of
    20 waited for the client's delayed acknowledgement here (40 ms on Linux); without it none
    did, the gap being about 2 ms."""
    from tornado.websocket import websocket_connect

    url = f"{server.url.replace('http', 'ws', 1)}/api/kernels/{kernel}/channels?token={server.token}"

    async def run() -> int:
        ws = await websocket_connect(url)
        held = 0
        try:
            for _ in range(requests):
                msg_id = uuid.uuid4().hex
                ws.write_message(json.dumps({
                    "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "",
                               "session": "test", "version": "5.3", "date": ""},
                    "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                    "content": {"code": "pass", "silent": False, "store_history": False,
                                "user_expressions": {}, "allow_stdin": False}}))
                seen = {}
                while len(seen) < 2:
                    reply = json.loads(await asyncio.wait_for(ws.read_message(), 30))
                    if reply["msg_type"] == "status" and reply["parent_header"].get("msg_id") == msg_id:
                        seen[reply["content"]["execution_state"]] = time.perf_counter()
                held += (seen["idle"] - seen["busy"]) * 1e3 >= hold_ms
                await asyncio.sleep(0.05)
        finally:
            ws.close()
        return held

    # In a thread of its own: in a pytest process where the browser tests ran, playwright's
    # event loop is still running in this thread, and asyncio.run() refuses to start there.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run()).result()


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
            held = _held_back(server, kernel)
            assert held <= 2, f"{held} of 20 kernel replies held back by Nagle's algorithm"

            # Binder's lecture links: the server's voila/render shows numlab's lecture
            # template (20 px prose, no Font Awesome from a CDN), not Voila's lab template.
            code, page = server.get(f"/voila/render/{expected[0].name}", timeout=120)
            server.remember_children()
            assert code == 200, f"voila/render: {code} {page[:300]!r}"
            assert b"--jp-content-font-size1: 20px" in page, "voila/render: not numlab's template"
            assert b"cdn.jsdelivr.net" not in page, "voila/render links a CDN"
    finally:
        survivors = server.stop()
    assert not survivors, f"processes left running: {survivors}"
    assert server.proc.returncode is not None
    with socket.socket() as sock:  # the port is free again
        assert sock.connect_ex(("127.0.0.1", urlparse(server.url).port)) != 0
