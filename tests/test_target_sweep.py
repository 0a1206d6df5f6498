"""scripts/target_sweep.py: the budget arithmetic, and a dry run that writes its JSON with provenance."""

import importlib.util
import json
from pathlib import Path

import pytest
from transformers import GPT2Config

import minilora
from core_helpers import tiny_gpt2

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("target_sweep", ROOT / "scripts" / "target_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


@pytest.mark.parametrize("row", list(sweep.ROWS))
def test_cost_per_rank_is_what_adapt_trains(row):
    model = tiny_gpt2()
    sweep.adapt(model, row, r=3, alpha=3)
    assert minilora.count_parameters(model)[0] == 3 * sweep.cost_per_rank(model.config, row)


def test_plan_of_gpt2_small_is_the_nearest_whole_rank():
    config = GPT2Config()  # 768 wide, 12 blocks, MLP 4 × 768
    budget, rows = sweep.plan(config, single_rank=8)
    assert budget == 12 * 8 * (768 + 768)
    assert rows["q"]["r"] == 8 and rows["q+v"]["r"] == 4 and rows["attention"]["r"] == 2
    for row, entry in rows.items():
        cost = sweep.cost_per_rank(config, row)
        assert entry["trainable"] == entry["r"] * cost
        assert all(abs(entry["r"] * cost - budget) <= abs(other * cost - budget) for other in range(1, 20))


def test_dry_run_writes_results_with_provenance(tmp_path):
    out = tmp_path / "sweep.json"
    sweep.main(["--dry-run", "--out", str(out)])
    record = json.loads(out.read_text())
    for key in ("command", "date", "processor", "cpu_model", "torch", "transformers", "wall_seconds"):
        assert key in record["provenance"]
    assert record["settings"]["dry_run"] is True
    assert record["complete"] is True  # written after every row, complete after the last
    assert record["settings"]["seeds"] == [0, 1]
    assert [(r["task"], r["row"]) for r in record["results"]] == [("largest", "q"), ("largest", "q+v")]
    for result in record["results"]:
        assert [run["seed"] for run in result["runs"]] == [0, 1]
        assert result["best_lr"] in record["settings"]["lrs"]
        best = min(result["tuning"], key=lambda t: t["validation_loss"])
        assert best["lr"] == result["best_lr"]
        assert all(run["trainable"] == record["plan"][result["row"]]["trainable"] for run in result["runs"])
        assert all(0 <= run["accuracy"] <= 1 for run in result["runs"])
