"""The GPU measurement run (scripts/gpu_measurements.py), dry-run on the CPU so that no GPU minute is lost to a bug."""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_part_and_records_it(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_measurements.py"), "--dry-run", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads((tmp_path / "gpu_run.json").read_text())
    assert [p["part"] for p in run["parts"]] == ["inference", "multi_adapter", "memory", "merge_drift"]
    for part in run["parts"]:
        script = ROOT / "scripts" / part["command"].split()[1].split("/")[-1]
        assert part["status"] == ("ok" if script.exists() else "skipped"), part
    assert {"torch", "transformers", "peft", "cuda_available"} <= set(run["versions"])
    assert len(run["files"]) + 1 <= 8  # what the GPU machine sends back
    inference = json.loads((tmp_path / "inference_cpu_bfloat16.json").read_text())
    assert {(r["batch"], r["seq_len"]) for r in inference["rows"]} == {(1, 8), (2, 16)}
    drift = json.loads((tmp_path / "merge_drift_cpu.json").read_text())
    rows = {(r["dtype"], r["library"], r["cycles"]): r for r in drift["rows"]}
    assert set(rows) == {(d, lib, k) for d in ("float32", "bfloat16", "float16") for lib in ("minilora", "peft")
                         for k in (1, 2)}
    # Exact by construction, not by measurement: a round trip in float32 moves a weight by at most a few roundings,
    # and every half-precision one by at most a few of its own (eps of bf16 is 2^-7, of fp16 2^-10).
    for (dtype, _, _), row in rows.items():
        assert 0 <= row["weight_max_rel_in_eps"] <= 4, row


def test_the_real_run_fits_its_budget_and_the_file_limit():
    script = load_script("gpu_measurements")
    real = script.parts("OUT", dry_run=False)
    assert sum(budget for *_, budget in real) <= 8 * 60
    assert [p[0] for p in real] == [p[0] for p in script.parts("OUT", dry_run=True)]
    assert all("--device" in args and args[args.index("--device") + 1] == "cuda" for _, _, args, _ in real)


def test_real_run_refuses_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert load_script("gpu_measurements").main([str(tmp_path)]) == 2


def test_points_are_batch_by_seq_pairs():
    script = load_script("benchmark_inference")
    args = script.parse_args(["--device", "cpu", "--points", "1x128", "16x256"])
    assert args.points == [(1, 128), (16, 256)]
    args = script.parse_args(["--device", "cpu", "--batch", "1", "2", "--seq-len", "8"])
    assert args.points == [(1, 8), (2, 8)]
    cuda = script.GRIDS["cuda"][1]
    assert {(32, 512), (16, 256), (1, 128)} <= set(cuda)  # the LoRA paper's Table 1
    for bad in (["--points", "16by256"], ["--points", "0x8"], ["--batch", "1"],
                ["--points", "1x8", "--batch", "1", "--seq-len", "8"]):
        with pytest.raises(SystemExit):
            script.parse_args(["--device", "cpu", *bad])


@pytest.mark.parametrize("path", ["scripts/gpu_measurements.py", "scripts/merge_drift.py"])
def test_imports_only_what_the_gpu_machine_has(path):
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "peft", "minilora"}
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                assert name.split(".")[0] in allowed and not name.startswith("minilora.lab"), (path, name)
