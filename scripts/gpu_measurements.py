"""Every GPU measurement of the project in one run, each part in its own process with its own time budget.

A GPU is lent to this project only sometimes, for minutes in all, so the whole run is prepared here and dry-run on the
CPU by a test (``tests/test_gpu_measurements.py``): on the GPU machine it is one command, from the repository root,

    bash scripts/gpu_measurements.sh OUT_DIR             # the real run: at most about 8 minutes
    python3 scripts/gpu_measurements.py --dry-run OUT_DIR   # the same parts, tiny, on the CPU (a minute)

The GPU machine has torch, transformers and peft and nothing else, and the project's pins do not apply there: every
part imports only those, and minilora from this checkout. It prints the versions and ``nvidia-smi`` first, then runs
the parts in order. A part that fails or runs out of its budget is recorded as such and the others still run.

Parts (a part whose script is not in this checkout is recorded as skipped):

1. ``inference``: ``scripts/benchmark_inference.py --device cuda``: latency of base, merged, minilora unmerged, PEFT
   unmerged and PEFT merged GPT-2 small and medium, fp32 and bf16, at the LoRA paper's Table 1 points plus batch 1.
2. ``multi_adapter``: ``scripts/benchmark_multi_adapter.py --device cuda``: mixed-adapter batches.
3. ``memory``: ``scripts/memory_benchmark.py --device cuda``: peak training memory and step time.
4. ``merge_drift``: ``scripts/merge_drift.py --device cuda``: merge/unmerge round trips in bf16 and fp16.

Everything lands in OUT_DIR: each part's JSON files and ``gpu_run.json`` (date, device, versions, nvidia-smi, and per
part its command, status, seconds and the tail of its output). At most 8 files come back from the GPU machine, so the
parts together write at most 7.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILES = 8  # what the GPU machine's $OUT returns at most


def parts(out, dry_run):
    """(name, script, arguments, budget in seconds) for each part; the dry run makes each tiny and puts it on the CPU."""
    out = str(out)
    if dry_run:
        return [
            ("inference", "benchmark_inference.py",
             ["--device", "cpu", "--models", "tiny", "--points", "1x8", "2x16", "--dtype", "float32", "bfloat16",
              "--warmup", "0", "--min-rounds", "2", "--max-rounds", "2", "--out", out], 120),
            ("multi_adapter", "benchmark_multi_adapter.py", ["--dry-run", "--device", "cpu", "--out", out], 120),
            ("memory", "memory_benchmark.py", ["--dry-run", "--device", "cpu", "--out", out], 120),
            ("merge_drift", "merge_drift.py", ["--dry-run", "--out", out], 120),
        ]
    return [
        # 2 models x 2 dtypes x 4 points x 5 variants; about 8 s of timed rounds a point, plus building the models.
        ("inference", "benchmark_inference.py",
         ["--device", "cuda", "--budget-s", "8", "--min-rounds", "20", "--max-rounds", "300", "--warmup", "3",
          "--out", out], 260),
        ("multi_adapter", "benchmark_multi_adapter.py", ["--device", "cuda", "--out", out], 90),
        ("memory", "memory_benchmark.py", ["--device", "cuda", "--out", out], 90),
        ("merge_drift", "merge_drift.py", ["--device", "cuda", "--out", out], 40),
    ]


def versions():
    info = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "transformers", "peft"):
        try:
            module = __import__(name)
            info[name] = module.__version__
        except Exception as err:  # a missing library is what this line must report, not a reason to stop
            info[name] = f"unavailable: {err}"
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["cuda"] = torch.version.cuda
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as err:
        info["cuda_available"] = f"unknown: {err}"
    return info


def nvidia_smi():
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi unavailable: {err}"


def run_part(name, script, arguments, budget_s):
    """Run one part as a child process with a time limit; return its record for gpu_run.json."""
    path = ROOT / "scripts" / script
    command = [sys.executable, str(path), *arguments]
    record = {"part": name, "command": shlex.join(["python3", os.path.relpath(path, ROOT), *arguments]),
              "budget_s": budget_s}
    if not path.exists():
        print(f"== {name}: skipped ({path.name} is not in this checkout)", flush=True)
        return {**record, "status": "skipped", "seconds": 0.0, "output_tail": ""}
    print(f"== {name}: {record['command']} (budget {budget_s} s)", flush=True)
    started = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget_s)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        status = f"timed out after {budget_s} s"
        output = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    seconds = round(time.perf_counter() - started, 1)
    print(output[-4000:], flush=True)
    print(f"== {name}: {status} in {seconds} s", flush=True)
    return {**record, "status": status, "seconds": seconds, "output_tail": output[-8000:]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder for every JSON file (created)")
    parser.add_argument("--dry-run", action="store_true", help="every part tiny and on the CPU")
    parser.add_argument("--only", nargs="+", help="run only these parts (by name)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "dry_run": args.dry_run, "versions": versions(), "nvidia_smi": nvidia_smi(), "parts": []}
    print(json.dumps(run["versions"], indent=1), flush=True)
    print(run["nvidia_smi"], flush=True)
    if not args.dry_run and run["versions"].get("cuda_available") is not True:
        print("No CUDA device is visible: the real run needs one (use --dry-run on a CPU).", file=sys.stderr)
        return 2
    for name, script, arguments, budget_s in parts(args.out, args.dry_run):
        if args.only and name not in args.only:
            continue
        run["parts"].append(run_part(name, script, arguments, budget_s))
    run["seconds"] = round(time.perf_counter() - started, 1)
    run["files"] = sorted(p.name for p in args.out.iterdir() if p.is_file() and p.name != "gpu_run.json")
    if len(run["files"]) + 1 > MAX_FILES:
        print(f"warning: {len(run['files']) + 1} files in {args.out}; only {MAX_FILES} come back from the GPU machine",
              flush=True)
    (args.out / "gpu_run.json").write_text(json.dumps(run, indent=1) + "\n")
    summary = ", ".join(f"{p['part']} {p['status']} ({p['seconds']} s)" for p in run["parts"])
    print(f"done in {run['seconds']} s: {summary}", flush=True)
    return 0 if all(p["status"] in ("ok", "skipped") for p in run["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
