"""scripts/train_ddp.py: 2 processes under torchrun train exactly what 1 process trains, and all-reduce 4 bytes per
trainable parameter per step; bad launches stop with a message and write nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_ddp.py"
STEPS, GLOBAL_BATCH = 3, 4
# fp32: the two runs add the same numbers in another order (two half-batch sums, padded to the same length).
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5

sys.path.insert(0, str(SCRIPT.parent))
import train_ddp  # noqa: E402


def torchrun(nproc, out, *extra):
    """Launch the script with this interpreter's torch (python -m torch.distributed.run), PYTHONPATH passed on."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(SCRIPT), "--steps", str(STEPS), "--out", str(out), *extra]
    if "--global-batch-size" not in extra:
        command += ["--global-batch-size", str(GLOBAL_BATCH)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    results = {}
    for n in (2, 1):
        done = torchrun(n, root / f"n{n}")
        assert done.returncode == 0, done.stderr[-3000:]
        results[n] = root / f"n{n}"
    return results


def test_two_processes_train_what_one_trains(runs):
    one = json.loads((runs[1] / "run.json").read_text())
    two = json.loads((runs[2] / "run.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["per_process_batch_size"] == GLOBAL_BATCH // 2
    assert len(one["losses"]) == len(two["losses"]) == STEPS
    assert one["losses"][-1] != one["losses"][0]  # it trained
    assert torch.allclose(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=LOSS_RTOL, atol=0)
    a, b = load_file(runs[1] / "adapter_model.safetensors"), load_file(runs[2] / "adapter_model.safetensors")
    assert sorted(a) == sorted(b) and a
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=WEIGHT_ATOL), key
    assert any((a[key] != 0).any() for key in a if "lora_B" in key)  # B moved away from its zero start


def test_bytes_per_step_are_four_per_trainable_parameter(runs):
    for n in (1, 2):
        record = json.loads((runs[n] / "run.json").read_text())
        # One flat fp32 bucket of the LoRA gradients, no padding, no frozen weight: exactly 4 bytes each.
        assert record["allreduce_bytes_per_step"] == 4 * record["trainable_params"]
        assert record["backend"] == "gloo" and record["sharding"] == "ddp"
    assert sorted(p.name for p in runs[2].iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "run.json"]


def test_indivisible_global_batch_stops_and_writes_nothing(tmp_path):
    done = torchrun(2, tmp_path / "out", "--global-batch-size", "3")
    assert done.returncode != 0
    assert "--global-batch-size 3 does not split into 2 equal slices" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_out_folder_of_another_run_is_refused(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    args = train_ddp.parse_args(["--steps", "1", "--global-batch-size", "2", "--out", str(tmp_path)])
    with pytest.raises(train_ddp.LaunchError, match="already holds files"):
        train_ddp.check_launch(args, 1)
    assert train_ddp.main(["--steps", "1", "--global-batch-size", "2", "--out", str(tmp_path)]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"] and (tmp_path / "run.json").read_text() == "{}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="nccl may be available on a CUDA machine")
def test_unavailable_backend_is_refused(tmp_path):
    args = train_ddp.parse_args(["--steps", "1", "--global-batch-size", "2", "--out", str(tmp_path / "o"),
                                 "--backend", "nccl"])
    with pytest.raises(train_ddp.LaunchError, match="backend 'nccl'"):
        train_ddp.check_launch(args, 1)
    assert not (tmp_path / "o").exists()


def test_indivisible_batch_is_checked_before_anything(tmp_path):
    args = train_ddp.parse_args(["--steps", "1", "--global-batch-size", "6", "--out", str(tmp_path / "o")])
    with pytest.raises(train_ddp.LaunchError, match="use a multiple of 4"):
        train_ddp.check_launch(args, 4)
