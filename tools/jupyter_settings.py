"""Write JupyterLab settings overrides into an environment: no news or update toasts.

usage: python tools/jupyter_settings.py PREFIX   (e.g. .venv)
A classroom of students, or a projector, should not be greeted by a "get news?" prompt.
"""
import json
import pathlib
import sys

OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    }
}


def main(prefix: str) -> None:
    path = pathlib.Path(prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(OVERRIDES)
    path.write_text(json.dumps(current, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
