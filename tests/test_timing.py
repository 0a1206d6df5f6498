"""The benchmark harness (minilora/lab/timing.py) and the scripts' JSON: statistics, order, schema. Nothing here is timed."""

import gc
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from minilora.lab import timing

ROOT = Path(__file__).resolve().parent.parent


def good_results():
    row = {"model": "gpt2", "batch": 1, "seq_len": 128, "variant": "base", "median_ms": 2.0, "p10_ms": 1.5,
           "p90_ms": 3.0, "n": 20}
    return {"device": "CPU: test", "torch": "2", "transformers": "5", "peft": "0", "dtype": "float32", "rows": [row]}


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- statistics -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7, 10, 101])
def test_quantile_matches_numpy(q, n):
    values = list(np.random.default_rng(n).exponential(size=n))
    assert timing.quantile(values, q) == pytest.approx(np.quantile(values, q), rel=1e-12)


def test_summarize_one_to_eleven():
    # 11 values 1..11: the median is 6, the 10th percentile sits at position 1 (value 2), the 90th at 9 (value 10)
    assert timing.summarize(list(range(11, 0, -1))) == {"median_ms": 6, "p10_ms": 2.0, "p90_ms": 10.0, "n": 11}


def test_quantile_rejects_empty_and_out_of_range():
    with pytest.raises(ValueError):
        timing.quantile([], 0.5)
    with pytest.raises(ValueError):
        timing.quantile([1.0], 1.5)


def test_overhead():
    assert timing.overhead(110.0, 100.0) == pytest.approx(0.1)


def test_paired_overheads_compare_within_rounds():
    times = {"base": [10.0, 20.0], "peft_unmerged": [11.0, 24.0]}
    assert timing.paired_overheads(times) == {"peft_unmerged": [pytest.approx(0.1), pytest.approx(0.2)]}


def test_summarize_adds_cpu_statistics():
    stats = timing.summarize([1.0, 2.0, 3.0], cpu_ms=[0.5, 1.0, 1.5])
    assert (stats["median_ms"], stats["cpu_median_ms"], stats["n"]) == (2.0, 1.0, 3)
    assert stats["cpu_p10_ms"] == pytest.approx(0.6) and stats["cpu_p90_ms"] == pytest.approx(1.4)


def test_overhead_table():
    rows = [{"model": "gpt2", "batch": 1, "seq_len": 128, "variant": v, "median_ms": ms, "p10_ms": ms, "p90_ms": ms,
             "n": 5} for v, ms in [("base", 10.0), ("minilora_unmerged", 11.0), ("peft_unmerged", 12.0)]]
    (point,) = timing.overhead_table({"rows": rows})
    assert point["base"] == 10.0 and point["peft_unmerged"] == 12.0
    assert point["overhead_minilora_unmerged"] == pytest.approx(0.1)
    assert point["overhead_peft_unmerged"] == pytest.approx(0.2)
    assert "overhead_base" not in point and "overhead_merged" not in point


# --- interleaving -----------------------------------------------------------------------------------------------------


def test_schedule_interleaves_and_rotates():
    assert timing.interleaved_schedule(["a", "b", "c"], 4) == ["a", "b", "c", "b", "c", "a", "c", "a", "b",
                                                              "a", "b", "c"]
    with pytest.raises(ValueError):
        timing.interleaved_schedule(["a", "a"], 1)


def test_time_interleaved_calls_in_order_with_warmup():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ["base", "merged", "peft_unmerged"]}
    times = timing.time_interleaved(fns, warmup=2, rounds=3)
    names = ["base", "merged", "peft_unmerged"]
    assert calls == names * 2 + timing.interleaved_schedule(names, 3)  # warm-up rounds, then the timed schedule
    assert {name: len(t) for name, t in times.items()} == {"base": 3, "merged": 3, "peft_unmerged": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)


@pytest.mark.parametrize("budget_s, expected", [(0.0, 4), (1e9, 9)])
def test_rounds_from_budget_are_clamped(budget_s, expected):
    fns = {"a": lambda: None, "b": lambda: None}
    times = timing.time_interleaved(fns, warmup=0, rounds=None, budget_s=budget_s, min_rounds=4, max_rounds=9)
    assert [len(t) for t in times.values()] == [expected, expected]


def test_time_interleaved_reports_cpu_time():
    cpu_ms = {}
    times = timing.time_interleaved({"a": lambda: None, "b": lambda: sum(range(1000))}, warmup=0, rounds=4,
                                    cpu_ms=cpu_ms)
    assert list(cpu_ms) == ["a", "b"] and all(len(cpu_ms[k]) == len(times[k]) == 4 for k in cpu_ms)
    assert all(t >= 0 for ts in cpu_ms.values() for t in ts)


def test_time_interleaved_restores_the_garbage_collector():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        timing.time_interleaved({"boom": lambda: (_ for _ in ()).throw(RuntimeError("boom"))}, warmup=0, rounds=1)
    assert gc.isenabled()


# --- results files ----------------------------------------------------------------------------------------------------


def test_validate_accepts_the_agreed_schema_with_extra_fields():
    results = good_results()
    results["settings"] = {"r": 8}
    results["rows"][0]["mode"] = "inference"
    assert timing.validate_results(results) is results


@pytest.mark.parametrize("break_it", [
    lambda r: r.pop("peft"),
    lambda r: r.update(dtype="float64"),
    lambda r: r.update(rows=[]),
    lambda r: r["rows"][0].pop("p90_ms"),
    lambda r: r["rows"][0].update(variant="lora"),
    lambda r: r["rows"][0].update(batch=0),
    lambda r: r["rows"][0].update(p10_ms=2.5),
])
def test_validate_rejects(break_it):
    results = good_results()
    break_it(results)
    with pytest.raises(ValueError):
        timing.validate_results(results)


def test_write_and_load_round_trip(tmp_path):
    results = good_results()
    timing.write_results(results, tmp_path / "inference_cpu_float32.json")
    (tmp_path / "cpu_vs_peft_float32.json").write_text(json.dumps(results))
    assert timing.load_results(tmp_path) == [results]  # only inference_*.json by default


def test_device_slug():
    assert timing.device_slug({"device_type": "cpu", "device": "CPU: Intel(R) Xeon(R)"}) == "cpu"
    assert timing.device_slug({"device_type": "cuda", "device": "NVIDIA H100 80GB HBM3"}) == "cuda-nvidia-h100-80gb-hbm3"


def test_environment_names_device_and_versions():
    env = timing.environment("cpu")
    assert env["device"].startswith("CPU: ") and env["device_type"] == "cpu"
    assert env["torch"] == torch.__version__ and env["torch_threads"] == torch.get_num_threads()


def test_committed_results_are_valid():
    paths = sorted((ROOT / "book" / "benchmarks").glob("*.json"))
    layer_files = [path for path in paths if path.name.startswith("lora_layer_")]
    memory_files = [path for path in paths if path.name.startswith("memory_")]
    multi_files = [path for path in paths if path.name.startswith("multi_adapter_")]  # tests/test_multi_adapter_bench
    for path in paths:
        if path not in layer_files + memory_files + multi_files:  # whole models: the agreed schema
            timing.validate_results(json.loads(path.read_text()))
    for path in layer_files:  # one matrix at a time: scripts/benchmark_lora_layer.py's own rows
        check_layer_results(json.loads(path.read_text()))
    for path in memory_files:  # peak memory of a training step: scripts/memory_benchmark.py's rows
        check_memory_results(json.loads(path.read_text()))


def check_memory_results(results):
    assert {"device", "torch", "transformers", "command", "date", "model", "rows"} <= results.keys()
    for row in results["rows"]:
        assert row["method"] in {"full", "lora", "lora_checkpointing"}, row["method"]
        assert row["peak_bytes"] > 0 and row["accounted"]["peak"] > 0
        assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]


def check_layer_results(results):
    variants = load_script("benchmark_lora_layer").VARIANTS
    assert {"device", "torch", "transformers", "peft", "dtype", "command", "date"} <= results.keys()
    points = {}
    for row in results["rows"]:
        assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"] and row["n"] >= 1, row
        points.setdefault((row["layer"], row["tokens"]), []).append(row["variant"])
        assert ("paired_overhead" in row) == (row["variant"] != "base"), row
    assert points and all(found == list(variants) for found in points.values()), points


# --- counting operations ----------------------------------------------------------------------------------------------


def test_count_operations():
    x, w = torch.randn(4, 3), torch.randn(3, 2)
    counts = timing.count_operations(lambda: (x @ w).t().mul(2.0).add(1.0))
    assert counts["mul"] == counts["add"] == counts["t"] == 1
    assert "t" in timing.NO_KERNEL_OPS and "mul" not in timing.NO_KERNEL_OPS


# --- the variants -----------------------------------------------------------------------------------------------------


def test_variants_share_weights_and_adapter():
    models = timing.build_variants("tiny")
    assert list(models) == list(timing.VARIANTS)
    probe = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    diff = timing.max_differences(models, probe)
    assert diff["base"] > 1e-2  # B is nonzero: the adapter changes the output
    for name in ["merged", "peft_unmerged", "peft_merged"]:
        assert diff[name] < 1e-4, name  # every adapted variant computes the same function
    base_state = models["base"].state_dict()
    assert torch.equal(models["peft_unmerged"].state_dict()["transformer.wte.weight"], base_state["transformer.wte.weight"])


def test_unmerged_variants_read_the_base_models_own_weights():
    models = timing.build_variants("tiny")
    base_weight = models["base"].transformer.h[0].attn.c_attn.weight
    assert models["minilora_unmerged"].transformer.h[0].attn.c_attn.base_layer.weight is base_weight
    assert models["peft_unmerged"].transformer.h[0].attn.c_attn.base_layer.weight is base_weight
    assert models["merged"].transformer.h[0].attn.c_attn.base_layer.weight is not base_weight  # holds W0 + ΔW
    assert models["peft_merged"].transformer.h[0].attn.c_attn.base_layer.weight is not base_weight


def test_build_variants_rejects_unknown_names():
    with pytest.raises(ValueError):
        timing.build_variants("tiny", ["base", "lora"])
    with pytest.raises(ValueError):
        timing.gpt2_config("gpt5")


# --- the scripts write the agreed schema ------------------------------------------------------------------------------


def test_inference_script_writes_valid_json(tmp_path):
    script = load_script("benchmark_inference")
    script.main(["--device", "cpu", "--models", "tiny", "--batch", "1", "2", "--seq-len", "8", "--warmup", "0",
                 "--min-rounds", "2", "--max-rounds", "2", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("inference_cpu_float32.json")
    results = timing.validate_results(json.loads(path.read_text()))
    assert [(r["batch"], r["variant"]) for r in results["rows"]] == [(b, v) for b in (1, 2) for v in timing.VARIANTS]
    assert all(r["n"] == 2 for r in results["rows"])
    assert results["check"]["tiny"]["max_abs_diff"]["peft_unmerged"] < 1e-4


def test_vs_peft_script_writes_valid_json(tmp_path):
    script = load_script("benchmark_vs_peft_cpu")
    script.main(["--models", "tiny", "--batch", "1", "--seq-len", "8", "--warmup", "0", "--min-rounds", "2",
                 "--max-rounds", "2", "--out", str(tmp_path)])
    results = timing.validate_results(json.loads((tmp_path / "cpu_vs_peft_float32.json").read_text()))
    modes = [(r["mode"], r["variant"]) for r in results["rows"]]
    assert modes == [("inference", "base"), ("inference", "minilora_unmerged"), ("inference", "peft_unmerged"),
                     ("train_step", "minilora_unmerged"), ("train_step", "peft_unmerged")]


def test_layer_script_writes_its_rows(tmp_path):
    script = load_script("benchmark_lora_layer")
    script.main(["--layers", "attn.c_proj", "--tokens", "1", "4", "--warmup", "0", "--min-rounds", "3",
                 "--max-rounds", "3", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "lora_layer_cpu_float32.json").read_text())
    check_layer_results(results)
    assert [(r["tokens"], r["variant"]) for r in results["rows"]] == [(t, v) for t in (1, 4) for v in script.VARIANTS]
    assert all(r["n"] == 3 for r in results["rows"])


# --- the scripts run on a machine with only torch, transformers and peft ----------------------------------------------


@pytest.mark.parametrize("path", ["minilora/lab/timing.py", "scripts/benchmark_inference.py",
                                  "scripts/benchmark_vs_peft_cpu.py", "scripts/benchmark_lora_layer.py"])
def test_imports_only_torch_transformers_peft_and_minilora_core(path):
    import ast
    import sys

    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "peft", "minilora"}
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in allowed, f"{path} imports {name}"
            assert not name.startswith("minilora.lab"), f"{path} imports {name}, whose package needs the book's extras"
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    for node in top_level:  # transformers, peft and minilora only inside functions, or after sys.path is set
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        assert all(n.split(".")[0] in set(sys.stdlib_module_names) | {"torch"} for n in names), (path, names)
