"""Write numlab's front-end settings into an environment.

usage: python tools/jupyter_settings.py PREFIX   (e.g. .venv)
- JupyterLab: no news or update toasts (a classroom, or a projector, should not be greeted
  by a "get news?" prompt);
- Voila: numlab's lecture-mode template (share/jupyter/voila/templates/numlab in this
  repository), copied into the environment and made the default both for ``voila`` itself
  (``make present``) and for the server's ``voila/render`` pages (Binder's lecture links);
  for ``voila`` itself also preheated kernels and culling (below);
- all three (JupyterLab, the server's ``voila/render``, ``voila``): kernel messages go to the
  browser without Nagle's delay (``numlab._websocket``).
"""
import json
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "share" / "jupyter" / "voila" / "templates" / "numlab"
OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    }
}
# jupyter_server_config.d is only read for the extensions it enables: ServerApp's own
# settings go in jupyter_server_config.json, and the server's voila/render takes numlab's
# template from voila.json, which Voila's server extension reads (tests/test_lab_server.py
# asks voila/render for a page). Earlier versions also wrote a VoilaConfiguration into
# jupyter_server_config.d/numlab_voila.json, which nothing read: it is removed.
STALE = "etc/jupyter/jupyter_server_config.d/numlab_voila.json"
NO_DELAY = "numlab._websocket.NoDelayConnection"
SERVER = {"ServerApp": {"kernel_websocket_connection_class": NO_DELAY}}
# `voila` itself (make present): a kernel per notebook is started and runs the notebook ahead
# of the request (preheated), so the page, and a lecturer's reload, comes at once; a kernel
# whose page went away without saying so (a killed tab) is shut down after 40 s idle
# (Voila never culls its preheated kernels). Not for the server's voila/render: there the
# same culling would end JupyterLab kernels of students who closed a tab for a minute.
# The pool's next kernel starts 8 s after a page takes one (Voila's default, 1 s, has it run
# the whole notebook while the first page still draws its widgets on the same cores: first
# page of 03 9.5 s with 1 s, 4.7 s with 8 s; a reload 15 s later came in 0.6-0.9 s either way;
# a longer delay makes an early reload wait for it).
VOILA_APP = {
    "VoilaConfiguration": {"template": "numlab", "preheat_kernel": True, "default_pool_size": 1},
    "VoilaKernelManager": {"fill_delay": 8},
    "MappingKernelManager": {"cull_idle_timeout": 40, "cull_interval": 10},
    "Voila": {"kernel_websocket_connection_class": NO_DELAY},
}


def merge_json(path: pathlib.Path, settings: dict) -> None:
    """Set ``settings`` ({section: {name: value}}) in a JSON config file, keeping the rest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    for section, values in settings.items():
        current[section] = {**current.get(section, {}), **values}
    path.write_text(json.dumps(current, indent=2) + "\n")


def main(prefix: str) -> None:
    prefix = pathlib.Path(prefix)
    merge_json(prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json", OVERRIDES)
    target = prefix / "share" / "jupyter" / "voila" / "templates" / "numlab"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(TEMPLATE, target)
    merge_json(prefix / "etc" / "jupyter" / "voila.json", VOILA_APP)
    (prefix / STALE).unlink(missing_ok=True)
    merge_json(prefix / "etc" / "jupyter" / "jupyter_server_config.json", SERVER)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
