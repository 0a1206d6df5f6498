"""The chapter 09 scripts run end to end with --dry-run and write their JSON with provenance."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], check=True, capture_output=True,
                          text=True, timeout=600)


def test_memory_benchmark_dry_run(tmp_path):
    run("memory_benchmark.py", "--dry-run", "--out", str(tmp_path))
    result = json.loads((tmp_path / "memory_cpu.json").read_text())
    assert result["dry_run"] and result["model"] == "tiny" and result["torch"]
    assert {r["method"] for r in result["rows"]} == {"full", "lora", "lora_checkpointing"}
    for row in result["rows"]:
        assert abs(row["peak_bytes"] / row["accounted"]["peak"] - 1) < 0.1
        assert row["median_ms"] > 0 and row["n"] >= 5


def test_memory_benchmark_rejects_bad_sizes(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "memory_benchmark.py"), "--sizes", "8by128",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "BATCHxSEQ" in proc.stderr


def test_forgetting_sweep_dry_run(tmp_path):
    run("forgetting_sweep.py", "--dry-run", "--out", str(tmp_path))
    for name, n in (("forgetting", 2), ("loraplus", 2)):
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["provenance"]["dry_run"] and result["provenance"]["steps"] == 2
        assert len(result["rows"]) == n
        assert all(0 <= r["accuracy"] <= 1 and r["corpus_before"] > 0 for r in result["rows"])
