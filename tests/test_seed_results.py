"""The committed results of chapters 04 and 06 (scripts/multiple_tasks.py, scripts/low_rank_sweep.py): their
provenance, that they ran the chapters' settings on the book's seeds, and the helpers that shape them."""

import importlib.util
import json
from pathlib import Path

import pytest

from minilora import lab

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "book" / "results"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("file", ["multiple_tasks.json", "low_rank.json"])
def test_committed_results_have_provenance_and_every_seed(file):
    record = json.loads((RESULTS / file).read_text())
    for key in ("processor", "date", "command", "torch", "transformers", "wall_seconds", "threads"):
        assert key in record["provenance"], key
    assert record["complete"] and not record["settings"]["dry_run"]
    assert record["settings"]["seeds"] == list(lab.findings.DEFAULT_SEEDS)
    assert [run["seed"] for run in record["runs"]] == record["settings"]["seeds"]


def test_multiple_tasks_results_match_the_script():
    script = _script("multiple_tasks")
    record = json.loads((RESULTS / "multiple_tasks.json").read_text())
    assert record["settings"]["lora"] == script.LORA
    for run in record["runs"]:
        assert set(run["accuracy"]) == set(script.TASKS)
        assert all(len(h) == record["settings"]["steps"] for h in run["losses"].values())
        smallest = run["mistakes"]["smallest"]
        hits = smallest["hits_by_answer"]
        n = len(lab.get_task("smallest").validation)
        assert sum(k for _, k in hits.values()) == n  # every validation example, once
        right = sum(h for h, _ in hits.values())
        assert right + smallest["wrong"] == n
        assert abs(right / n - run["accuracy"]["smallest"]["smallest"]) < 1e-9


def test_low_rank_results_match_the_script():
    script = _script("low_rank_sweep")
    record = json.loads((RESULTS / "low_rank.json").read_text())
    assert record["settings"]["targets"] == script.TARGETS and record["settings"]["ranks"] == script.RANKS
    for run in record["runs"]:
        assert len(run["matrices"]) == 16  # 4 matrices in each of the 4 blocks of the bundled model
        for m in run["matrices"].values():
            e = m["energy"]
            assert e["r"] == script.sample_points(min(m["shape"]))
            assert e["delta"] == sorted(e["delta"]) and abs(e["delta"][-1] - 1) < 1e-4
            assert e["delta"][0] == m["E_1"] and e["delta"][7] == m["E_8"]


def test_sample_points_and_compact_run():
    script = _script("low_rank_sweep")
    points = script.sample_points(256)
    assert points[:16] == list(range(1, 17)) and points[-1] == 256 and points == sorted(set(points))
    assert script.sample_points(5) == [1, 2, 3, 4, 5]
    curve = [k / 256 for k in range(1, 257)]
    run = {"matrices": {"m": {"E": curve, "E_noise": curve}},
           "spectra_block0": {"m": {"delta": curve, "noise": curve}}}
    once = script.compact_run(json.loads(json.dumps(run)))
    assert once["matrices"]["m"]["energy"]["delta"] == [r / 256 for r in points]
    assert once["matrices"]["m"]["E_8"] == 8 / 256
    assert once["spectra_block0"]["m"]["i"] == points
    assert script.compact_run(json.loads(json.dumps(once))) == once  # idempotent
