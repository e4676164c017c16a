"""Start and stop the servers the browser tests talk to: JupyterLab, Voila, ``make`` targets.

No pytest here, so the lab-server test and the browser tests share it. Every server runs in
its own process group with a private Jupyter config/runtime/settings folder; ``stop`` ends
the server and every process it started (kernels included) by PID and reports any survivor.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import psutil  # a dependency of ipykernel, hence of jupyterlab

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
# Settings a fresh JupyterLab user would get from `make` (tools/jupyter_settings.py writes the
# news/update switches as overrides into the environment); the test servers get them as user
# settings in a private folder, so they hold whatever environment runs the tests.
LAB_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    # Every cell in the DOM, so the tests see all outputs without scrolling.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # The tests run notebooks in the browser; they must never write them back to disk.
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def notebooks(folder: pathlib.Path | None = None) -> list[pathlib.Path]:
    """The reader's notebooks, ``NN_topic.ipynb``, in reading order (solutions excluded)."""
    folder = folder or pathlib.Path(os.environ.get("NUMLAB_NOTEBOOKS", NOTEBOOKS))
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bin_dir() -> str:
    """The folder holding this interpreter's scripts (not resolved: a venv's python is a link)."""
    return os.path.dirname(sys.executable)


def private_env(home: pathlib.Path, token: str = "") -> dict[str, str]:
    """Environment for a server isolated from the user's Jupyter config, workspaces and runtime."""
    env = dict(os.environ)
    for name in ("config", "runtime", "data", "settings", "workspaces"):
        (home / name).mkdir(parents=True, exist_ok=True)
    for rel, value in LAB_USER_SETTINGS.items():
        path = home / "settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    # The server must not try to open a browser (`make lab` does, for a person).
    (home / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"open_browser": False}})
    )
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        JUPYTER_TOKEN=token,
        BROWSER="true",  # belt and braces: a `webbrowser.open` runs /bin/true
        PYTHONHASHSEED="0",
        MPLBACKEND="Agg",
        # Kernels import numlab from this checkout even where it is not pip-installed.
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    env.pop("JUPYTER_PATH", None)
    return env


class Server:
    """A server process started in its own session; ``url`` answers once ``wait`` returns."""

    def __init__(self, argv, url: str, env: dict, cwd: pathlib.Path, log: pathlib.Path,
                 token: str = ""):
        self.argv, self.url, self.token, self.log_path = list(argv), url, token, log
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.pid = self.proc.pid
        self.seen: set[int] = set()  # every PID seen under the server, to check they all ended

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        sep = "&" if "?" in path else "?"
        url = self.url + path + (f"{sep}token={self.token}" if self.token else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (localhost)
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def request(self, method: str, path: str, body=None, timeout: float = 30.0,
                token_in_header: bool = True):
        """``method path`` with the token in a header; a JSON ``body``; returns (status, data)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token and token_in_header:
            req.add_header("Authorization", f"token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def remember_children(self) -> None:
        try:
            for child in psutil.Process(self.pid).children(recursive=True):
                self.seen.add(child.pid)
        except psutil.NoSuchProcess:
            pass

    def wait(self, path: str, timeout: float = 90.0, any_status: bool = False) -> bytes:
        """Poll ``path`` until it answers 200 (any HTTP status with ``any_status``).

        Raises with the server's log if the server exits or never answers.
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[:3]} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                status, body = self.get(path, timeout=5)
                if status == 200 or any_status:
                    self.remember_children()
                    return body
                last = status
            except (OSError, urllib.error.URLError) as err:
                last = err
            time.sleep(0.25)
        raise TimeoutError(f"{self.url}{path} did not answer in {timeout:.0f} s ({last}):\n"
                           f"{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> list[int]:
        """End the server and every process under it, by PID. Returns PIDs that survived."""
        self.remember_children()
        self.seen.add(self.pid)
        procs = []
        for pid in self.seen:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        # SIGTERM first: Jupyter servers shut their kernels down cleanly on it.
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs([p for p in procs if p.pid == self.pid], timeout=timeout)
        for proc in procs:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                try:
                    proc.terminate()
                except psutil.NoSuchProcess:
                    pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=5)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return [p.pid for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def start_lab(home: pathlib.Path, root_dir: pathlib.Path, token: str) -> Server:
    """JupyterLab from this interpreter's environment on 127.0.0.1 and a free port."""
    port = free_port()
    argv = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
        f"--port={port}", "--port-retries=0", f"--ServerApp.root_dir={root_dir}",
        f"--IdentityProvider.token={token}",
        # window.jupyterapp: the tests read the notebook model the kernel's outputs went into.
        "--LabApp.expose_app_in_browser=True",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")  # JupyterLab refuses to run as root otherwise
    server = Server(argv, f"http://127.0.0.1:{port}", private_env(home, token), root_dir,
                    home / "lab.log", token)
    server.wait("/api/status")
    return server


def make_target(target: str, home: pathlib.Path, token: str = "", **variables) -> Server:
    """``make TARGET`` as a person types it, on a free port, with this interpreter's tools.

    ``BIN`` points the Makefile at the environment running the tests (under ``make test`` that
    is ``.venv/bin`` anyway) and ``-o .venv/.installed`` keeps make from (re)installing it.
    """
    make = shutil.which("make")
    if make is None:
        raise FileNotFoundError("`make` is not installed")
    port = free_port()
    argv = [make, "--no-print-directory", "-o", ".venv/.installed", target,
            f"BIN={bin_dir()}", f"PORT={port}"]
    argv += [f"{k}={v}" for k, v in variables.items()]
    return Server(argv, f"http://localhost:{port}", private_env(home, token), ROOT,
                  home / f"make-{target}.log", token)


def temp_home(prefix: str) -> pathlib.Path:
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix))
