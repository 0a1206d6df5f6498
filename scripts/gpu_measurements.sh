#!/usr/bin/env bash
# Every GPU measurement of the project in one run (see scripts/gpu_measurements.py), from the repository root:
#     bash scripts/gpu_measurements.sh OUT_DIR
# On the GPU machine: torch, transformers and peft only; minilora comes from this checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" scripts/gpu_measurements.py "$@"
