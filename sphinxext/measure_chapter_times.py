"""Measure how long chapters take to run, for the "Run it yourself" page: writes sphinxext/chapter_times.json.

    PYTHONPATH=$PWD .venv/bin/python sphinxext/measure_chapter_times.py book/01_theory.ipynb book/02_...ipynb

Each notebook is run once, top to bottom, the way `make check-robust` runs it (nbval in lax mode: every cell
executed, hidden checks included, outputs not compared), one notebook at a time; the wall time includes starting
the kernel. The JSON records the processor, the core count, the load average before and after (on a shared machine
the figures are inflated), the versions, the date and the command. `minilora_site` turns each figure into a MyST
substitution ({{ time_01_theory }}) for book/run_it_yourself.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = Path(__file__).resolve().parent / "chapter_times.json"


def run(notebook: str) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
               notebook]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{notebook} failed (exit {result.returncode}):\n{result.stdout[-3000:]}")
    return {"notebook": notebook, "seconds": round(seconds, 1), "command": " ".join(command[1:])}


def main(notebooks: list[str]) -> None:
    if not notebooks:
        raise SystemExit("name the notebooks to time, for example book/01_theory.ipynb")
    import torch

    from minilora.lab.timing import cpu_model  # run with PYTHONPATH=$PWD, as the docstring says

    record = {
        "what": "wall time of one nbval --nbval-lax run per notebook (kernel start included), one at a time",
        "processor": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "script": "sphinxext/measure_chapter_times.py " + " ".join(notebooks),
        "chapters": [run(notebook) for notebook in notebooks],
    }
    record["load_average_after"] = os.getloadavg()
    OUTPUT.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
