"""scripts/rank_sweep.py: a tiny grid whose JSON has the provenance and one record per grid point; --resume runs only
the missing points; --merge joins parts run with the same settings, and refuses parts that do not fit together."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "rank_sweep.py"


def sweep_module():
    spec = importlib.util.spec_from_file_location("rank_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINILORA_SEEDS": "7"}
    subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)


def test_dry_run_writes_one_record_per_grid_point_with_provenance_and_resumes(tmp_path):
    out = tmp_path / "sweep.json"
    run_script("--dry-run", "--out", out)
    result = json.loads(out.read_text())
    provenance = result["provenance"]
    for field in ("processor", "platform", "torch", "transformers", "threads", "date", "command", "cpu_seconds"):
        assert provenance[field], field
    assert provenance["threads"] == 1 and "--dry-run" in provenance["command"]
    settings = result["settings"]
    assert settings["seeds"] == [7] and settings["dry_run"]
    module = sweep_module()
    grid = set(module.grid_of(settings["ranks"], settings["lrs"], settings["conventions"], settings["seeds"]))
    records = {(run["r"], run["lr"], run["convention"], run["seed"]) for run in result["runs"]}
    assert records == grid and len(result["runs"]) == len(grid) == result["grid_points"]
    full = {(r, lr, c, s) for r in settings["ranks"] for lr in settings["lrs"]
            for c in settings["conventions"] for s in settings["seeds"]}
    # r = 8: every convention gives scaling 1, so the grid trains it once, under the first convention
    assert 8 in settings["ranks"] and len(full) - len(grid) == len(settings["conventions"]) - 1
    assert result["complete"]
    for run in result["runs"]:
        assert 0 <= run["accuracy"] <= 1 and run["val_loss"] > 0 and run["first_step_change"] > 0
        assert run["stalled"] == (run["top_answer_share"] >= settings["stall_share"])
        assert len(run["train_loss_blocks"]) == -(-settings["steps"] // 10)
        expected = run["alpha"] / (run["r"] ** 0.5 if run["use_rslora"] else run["r"])
        assert abs(run["scaling"] - expected) < 1e-12
        assert run["conventions"] == (list(module.CONVENTIONS) if run["r"] == 8 else [run["convention"]])
        assert run["cpu_seconds"] > 0

    # drop the last run: --resume runs it again and keeps the others as they were
    kept, dropped = result["runs"][:-1], result["runs"][-1]
    out.write_text(json.dumps({**result, "runs": kept, "complete": False}))
    run_script("--dry-run", "--resume", "--out", out)
    resumed = json.loads(out.read_text())
    assert resumed["complete"] and resumed["runs"][:-1] == kept
    assert module.key(resumed["runs"][-1]) == module.key(dropped)


def fake_part(module, seeds, lrs=(0.01,), complete=True):
    settings = {"task": "largest", "targets": ["c_attn"], "ranks": [1, 8], "lrs": list(lrs),
                "conventions": ["fixed", "rslora"], "seeds": list(seeds), "steps": 2}
    grid = module.grid_of(settings["ranks"], settings["lrs"], settings["conventions"], settings["seeds"])
    runs = [{"r": r, "lr": lr, "convention": c, "seed": s, "cpu_seconds": 1.0} for r, lr, c, s in grid]
    if not complete:
        runs = runs[:-1]
    provenance = {"date": f"2026-12-03T1{seeds[0]}:00:00+00:00", "wall_seconds": 10.0 * len(seeds),
                  "command": f"python scripts/rank_sweep.py --seeds {' '.join(map(str, seeds))}"}
    return {"what": "test", "provenance": provenance, "settings": settings, "complete": complete,
            "grid_points": len(grid), "runs": runs}


def test_merge_joins_parts_and_rejects_parts_that_do_not_fit():
    module = sweep_module()
    a, b = fake_part(module, [0]), fake_part(module, [1, 2])
    merged = module.merge([a, b], ["a.json", "b.json"])
    assert merged["settings"]["seeds"] == [0, 1, 2] and merged["complete"]
    assert merged["grid_points"] == len(a["runs"]) + len(b["runs"]) == 3 * 3  # (1, fixed), (1, rslora), (8, any)
    assert merged["provenance"]["parts"] == [a["provenance"], b["provenance"]]
    assert merged["provenance"]["cpu_seconds"] == 9.0 and merged["provenance"]["wall_seconds"] == 20.0
    assert "--merge a.json b.json" in merged["provenance"]["command"]
    # an incomplete part leaves the merge incomplete
    assert not module.merge([a, fake_part(module, [1], complete=False)], ["a", "c"])["complete"]
    with pytest.raises(ValueError, match="repeats the run"):
        module.merge([a, a], ["a", "again"])
    other = fake_part(module, [1])
    other["settings"]["steps"] = 3
    with pytest.raises(ValueError, match="other settings"):
        module.merge([a, other], ["a", "other"])
