"""Execute the book's notebooks in place, as `make notebooks` does, and tidy their outputs for committing.

    python scripts/execute_notebooks.py book/02_lora_from_scratch.ipynb ...   # no arguments: every book/*.ipynb

Each notebook runs top to bottom with nbclient in its own folder (`book/`), with the project's kernel, like nbval runs
it in `make test`; a cell tagged `raises-exception` may raise, any other error stops the run. Then the outputs are
tidied the way a terminal shows them, so that a progress bar is one line and not hundreds:

- consecutive stream outputs of a cell (stdout after stdout, stderr after stderr) become one output;
- a line that a carriage return rewrote keeps only its last version (tqdm redraws its bar with `\\r`);
- a progress bar's last line is then dropped from stderr: a reader running the notebook sees the bar live, but the
  page shows no elapsed times and rates, which are one machine's timing noise, not a result. A cell that prints a
  bar is a training or timing cell, tagged `nbval-ignore-output`, so nbval does not miss the line.

Why re-execute at all: the numbers a training run prints depend on the floating-point kernels of the processor (sums
rounded in another order, amplified by hundreds of optimiser steps: chapter 2 executed on an Intel Xeon and on an AMD
EPYC ended its training at different losses), so nbval compares bit for bit only on the kind of machine that executed
the notebooks. CI runs on the session's own machine: when it
changes, run `make notebooks`, look at what moved, and commit.
"""

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def rewritten_lines(text):
    """The text as a terminal leaves it: on each line, only what follows the last carriage return."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in re.split(r"\r?\n", text))


# tqdm's line: "desc: 100%|#####| 300/300 [00:12<00:00, 24.1it/s, loss=0.123]" (the bar's characters vary).
PROGRESS_LINE = re.compile(r"^.*\d+%\|.*\| *[\d.]+[kMG]?/[\d.]+[kMG]? \[.*\]\s*$")


def without_progress_bars(text):
    """The text less tqdm's progress lines."""
    return "\n".join(line for line in text.split("\n") if not PROGRESS_LINE.match(line))


def coalesce_streams(outputs):
    """Merge consecutive stream outputs of the same name and resolve carriage returns; other outputs are kept."""
    merged = []
    for output in outputs:
        if output.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" \
                and merged[-1]["name"] == output["name"]:
            merged[-1]["text"] += output["text"]
        else:
            merged.append(output)
    for output in merged:
        if output.get("output_type") == "stream":
            output["text"] = rewritten_lines(output["text"])
            if output["name"] == "stderr":
                output["text"] = without_progress_bars(output["text"])
    return [o for o in merged if o.get("output_type") != "stream" or o["text"].strip()]


def execute(path, timeout):
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
            cell.metadata.pop("execution", None)  # timestamps would change the file on every run
    nbformat.write(notebook, path)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    for path in args.notebooks or sorted((ROOT / "book").glob("*.ipynb")):
        print(f"{path}: executing...", flush=True)
        print(f"{path}: done in {execute(path.resolve(), args.timeout):.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
