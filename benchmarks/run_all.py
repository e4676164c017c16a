"""`make bench`: run every benchmark script in this folder, one after another, and print their tables."""
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ORDER = ["import_time.py", "widget_latency.py"]


def main() -> int:
    scripts = [HERE / n for n in ORDER] + sorted(
        p for p in HERE.glob("*.py") if p.name not in ORDER and not p.name.startswith(("_", "run_all"))
    )
    failed = 0
    for script in scripts:
        print(f"\n## {script.name}\n", flush=True)
        failed += subprocess.run([sys.executable, str(script)], cwd=HERE).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
