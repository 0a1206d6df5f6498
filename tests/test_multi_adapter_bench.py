"""scripts/benchmark_multi_adapter.py: its dry run (tiny, CPU; the same command the GPU run dry-runs) and the
committed results file's shape and settings."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "book" / "benchmarks" / "multi_adapter_cpu_float32.json"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_multi_adapter",
                                                  ROOT / "scripts" / "benchmark_multi_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_multi_adapter.py"), "--dry-run",
                           "--device", "cpu", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [path] = tmp_path.iterdir()
    assert path.name == "multi_adapter_cpu_float32.json"
    results = load_script().validate(json.loads(path.read_text()))
    found = {(row["variant"], row["k"]) for row in results["rows"]}
    ks = results["settings"]["ks"]
    assert found == {("base", None), ("merged", 1)} | {(v, k) for v in ("minilora", "peft", "swap") for k in ks}
    diffs = results["check"]["max_abs_diff_vs_peft"]
    assert diffs["base"] > 1e-3  # the adapters change the output
    assert all(diff < 1e-4 for name, diff in diffs.items() if name != "base"), diffs  # every variant computes PEFT's
    assert set(results["goal"]["by_k"]) == {str(k) for k in ks}
    assert all(set(by) == {"wall_paired", "cpu_time"} for by in results["goal"]["by_k"].values())


def test_committed_results_have_the_issues_settings():
    if not COMMITTED.exists():
        pytest.skip("no committed CPU results yet")
    results = load_script().validate(json.loads(COMMITTED.read_text()))
    settings = results["settings"]
    assert (settings["model"], settings["batch"], settings["seq_len"], settings["ks"], settings["r"]) == (
        "gpt2", 8, 64, [1, 2, 4, 8], 8)
    assert settings["target_modules"] == ["c_attn", "c_proj", "c_fc"] and not settings["dry_run"]
    assert all(diff < 1e-3 for name, diff in results["check"]["max_abs_diff_vs_peft"].items() if name != "base")
    assert min(row["n"] for row in results["rows"]) >= 5
