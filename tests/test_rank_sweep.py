"""scripts/rank_sweep.py --dry-run: a tiny grid whose JSON has the provenance and one record per grid point."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_writes_one_record_per_grid_point_with_provenance(tmp_path):
    out = tmp_path / "sweep.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINILORA_SEEDS": "7"}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "rank_sweep.py"), "--dry-run", "--out", str(out)],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    provenance = result["provenance"]
    for field in ("processor", "platform", "torch", "transformers", "threads", "date", "command"):
        assert provenance[field], field
    assert provenance["threads"] == 1 and "--dry-run" in provenance["command"]
    settings = result["settings"]
    assert settings["seeds"] == [7] and settings["dry_run"]
    grid = {(r, lr, c, s) for r in settings["ranks"] for lr in settings["lrs"]
            for c in settings["conventions"] for s in settings["seeds"]}
    records = {(run["r"], run["lr"], run["convention"], run["seed"]) for run in result["runs"]}
    assert records == grid and len(result["runs"]) == len(grid) == result["grid_points"]
    assert result["complete"]
    for run in result["runs"]:
        assert 0 <= run["accuracy"] <= 1 and run["val_loss"] > 0 and run["first_step_change"] > 0
        assert run["stalled"] == (run["top_answer_share"] >= settings["stall_share"])
        assert len(run["train_loss_blocks"]) == -(-settings["steps"] // 10)
        expected = run["alpha"] / (run["r"] ** 0.5 if run["use_rslora"] else run["r"])
        assert abs(run["scaling"] - expected) < 1e-12
