"""Time a batch whose rows use different LoRA adapters: base, minilora mixed, PEFT mixed, swapping, merged.

GPT-2 small's architecture (transformers' GPT2Config defaults, random weights: latency does not depend on their
values), 8 random adapters with r=8 on ``c_attn``, ``c_proj`` and ``c_fc`` (B nonzero), a batch of 8 rows x 64 tokens
whose row i uses adapter i mod k, for k in {1, 2, 4, 8} distinct adapters. Variants, all timed in one interleaved
schedule (``minilora/lab/timing.py``: warm-up, one call per sample between device synchronisations):

- ``base``: the model without LoRA;
- ``minilora_k<k>``: ``minilora.load_adapters`` (all 8) and ``with minilora.per_row(model, names)``;
- ``peft_k<k>``: PEFT with all 8 adapters loaded, ``model(input_ids, adapter_names=names)``;
- ``swap_k<k>``: one sub-batch per adapter through a single-adapter minilora model, swapping A and B in (copied
  from memory, as ``load_adapter`` does after reading the file) before each;
- ``merged_k1``: one adapter merged into the weights (k = 1 only: a merged model serves one adapter).

Every forward pass is a prefill that returns the last position's logits (``logits_to_keep=1``, as a server needs to
pick the next token; the language-model head is the same for every variant). Overheads are over ``base`` from the
medians, and per round (``paired``: each call against the base call of the same round). One JSON file,
``book/benchmarks/multi_adapter_<device>_<dtype>.json``, chapter 10 plots it.

    python scripts/benchmark_multi_adapter.py                              # CPU, about 5 minutes
    python scripts/benchmark_multi_adapter.py --device cuda --out DIR     # the GPU run (scripts/gpu_measurements.py)
    python scripts/benchmark_multi_adapter.py --dry-run --device cpu --out DIR   # tiny, seconds: a test runs it

It needs only torch, transformers, peft and safetensors: minilora is imported from this checkout.
"""

import argparse
import copy
import importlib.util
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `import minilora` finds this checkout's package
_spec = importlib.util.spec_from_file_location("minilora_lab_timing", ROOT / "minilora" / "lab" / "timing.py")
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)

import minilora  # noqa: E402
from minilora.adapter_io import PREFIX, adapter_config  # noqa: E402

GOAL = "at k=4 and k=8, minilora's overhead over base is at most half of PEFT's"
ROW_KEYS = ("k", "variant", "median_ms", "q1_ms", "q3_ms", "p10_ms", "p90_ms", "n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(timing.DTYPES))
    parser.add_argument("--model", default="gpt2", choices=sorted(timing.MODEL_SHAPES))
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8], help="numbers of distinct adapters")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds before timing")
    parser.add_argument("--budget-s", type=float, help="seconds of timed rounds in all (default 270 cpu, 40 cuda)")
    parser.add_argument("--min-rounds", type=int, default=5)
    parser.add_argument("--max-rounds", type=int, default=300)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU; default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="a tiny model, batch 4 x 8, k 1 2 4, two rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "benchmarks")
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    if args.dry_run:
        args.model, args.ks, args.batch, args.seq_len = "tiny", [1, 2, 4], 4, 8
        args.warmup, args.min_rounds, args.max_rounds, args.budget_s = 0, 2, 2, 0.0
    if args.budget_s is None:
        args.budget_s = 40.0 if cuda else 270.0
    if args.threads is None and not cuda:
        args.threads = 1
    if any(k < 1 or k > args.batch for k in args.ks):
        parser.error(f"every k must be between 1 and the batch ({args.batch}), got {args.ks}")
    return args


def write_random_adapters(base, directory, count, r, seed):
    """``count`` PEFT-format adapters with random A and B (B nonzero) on the three targets: name -> directory."""
    paths = {}
    for i in range(count):
        factors = timing.random_adapter(base, timing.TARGET_MODULES, r=r, seed=seed + 1 + i)
        tensors = {f"{PREFIX}{name}.{part}.weight": t.contiguous()
                   for name, (a, b) in factors.items() for part, t in (("lora_A", a), ("lora_B", b))}
        paths[f"a{i}"] = directory / f"a{i}"
        paths[f"a{i}"].mkdir()
        save_file(tensors, paths[f"a{i}"] / "adapter_model.safetensors", metadata={"format": "pt"})
        config = adapter_config(r, r, 0.0, False, list(timing.TARGET_MODULES), True)
        (paths[f"a{i}"] / "adapter_config.json").write_text(json.dumps(config))
    return paths


def build(args, directory):
    """The models, every one sharing the base model's frozen tensors except the merged one."""
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    torch.manual_seed(args.seed)
    base = GPT2LMHeadModel(timing.gpt2_config(args.model)).eval()
    paths = write_random_adapters(base, directory, max(args.ks), args.r, args.seed)
    shared = {id(p): p for p in base.parameters()}
    mixed = minilora.load_adapters(copy.deepcopy(base, memo=dict(shared)), paths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        names = list(paths)
        peft = PeftModel.from_pretrained(copy.deepcopy(base, memo=dict(shared)), paths[names[0]], adapter_name=names[0])
        for name in names[1:]:
            peft.load_adapter(paths[name], adapter_name=name)
    single = minilora.load_adapter(copy.deepcopy(base, memo=dict(shared)), paths[names[0]])
    factors = {}  # name -> [(layer, A, B)]: the adapters in memory, for swapping
    for name, path in paths.items():
        tensors = load_file(path / "adapter_model.safetensors")
        factors[name] = [(layer, tensors[f"{PREFIX}{layer}.lora_A.weight"], tensors[f"{PREFIX}{layer}.lora_B.weight"])
                         for layer, _ in minilora.layer.lora_layers(single)]
    merged = minilora.merge(minilora.load_adapter(copy.deepcopy(base), paths[names[0]])) if 1 in args.ks else None
    device, dtype = torch.device(args.device), timing.DTYPES[args.dtype]
    models = {"base": base, "mixed": mixed, "peft": peft, "single": single, "merged": merged}
    models = {key: m.to(device=device, dtype=dtype).eval() for key, m in models.items() if m is not None}
    layers = dict(minilora.layer.lora_layers(models["single"]))
    factors = {name: [(layers[n], a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))
                      for n, a, b in entries] for name, entries in factors.items()}
    return models, factors, names


def calls(models, factors, names, input_ids, ks):
    """name -> a callable returning the last position's logits (batch, 1, vocab), for every variant and k."""
    batch = input_ids.shape[0]

    def forward(model, ids, **kwargs):
        return model(input_ids=ids, use_cache=False, logits_to_keep=1, **kwargs).logits

    def mixed(row_names):
        with minilora.per_row(models["mixed"], row_names):
            return forward(models["mixed"], input_ids)

    def swap(row_names):
        out = None
        for name in dict.fromkeys(row_names):  # each adapter present, in order of first appearance
            for layer, a, b in factors[name]:
                layer.lora_A.weight.copy_(a)
                layer.lora_B.weight.copy_(b)
            rows = torch.tensor([i for i, n in enumerate(row_names) if n == name], device=input_ids.device)
            logits = forward(models["single"], input_ids[rows])
            out = logits.new_empty((batch, *logits.shape[1:])) if out is None else out
            out[rows] = logits
        return out

    fns = {"base": lambda: forward(models["base"], input_ids)}
    for k in ks:
        row_names = [names[i % k] for i in range(batch)]
        fns[f"minilora_k{k}"] = lambda n=row_names: mixed(n)
        fns[f"peft_k{k}"] = lambda n=row_names: forward(models["peft"], input_ids, adapter_names=n)
        fns[f"swap_k{k}"] = lambda n=row_names: swap(n)
        if k == 1:
            fns["merged_k1"] = lambda: forward(models["merged"], input_ids)
    return fns


def quartiles(values):
    return timing.quantile(values, 0.25), timing.quantile(values, 0.75)


def summarize(times, cpu_ms, ks):
    paired = timing.paired_overheads(times)
    rows = []
    for name, values in times.items():
        variant, _, k = name.rpartition("_k")
        row = {"k": int(k) if variant else None, "variant": variant or name, **timing.summarize(values, cpu_ms.get(name))}
        row["q1_ms"], row["q3_ms"] = quartiles(values)
        if name != "base":
            row["overhead"] = timing.overhead(row["median_ms"], statistics.median(times["base"]))
            row["paired_overhead"] = statistics.median(paired[name])
            row["paired_overhead_q1"], row["paired_overhead_q3"] = quartiles(paired[name])
        rows.append(row)
    return rows, judge(rows, ks)


def judge(rows, ks):
    """The goal per k, judged on the paired wall-time overheads and, on the CPU, on the overheads of CPU time.

    On a shared CPU the wall clock also counts the time other programs held the core (a process given a third of a
    core takes three times as long); ``time.process_time`` counts only this process's own work. Each row gets
    ``cpu_overhead``, from the medians of CPU time.
    """
    by = {(row["variant"], row["k"]): row for row in rows}
    base = by[("base", None)]
    for row in rows:
        if row is not base and "cpu_median_ms" in row:
            row["cpu_overhead"] = timing.overhead(row["cpu_median_ms"], base["cpu_median_ms"])
    goal = {}
    for k in ks:
        goal[str(k)] = {}
        for basis, key in (("wall_paired", "paired_overhead"), ("cpu_time", "cpu_overhead")):
            if key not in by[("minilora", k)]:
                continue
            ours, theirs = by[("minilora", k)][key], by[("peft", k)][key]
            goal[str(k)][basis] = {"minilora_overhead": ours, "peft_overhead": theirs,
                                   "ratio": ours / theirs if theirs > 0 else None,
                                   "met": theirs > 0 and ours <= theirs / 2}
    return goal


def validate(results):
    """Raise ValueError unless ``results`` has this script's shape; return it."""
    missing = [key for key in ("device", "torch", "transformers", "peft", "dtype", "command", "date", "settings",
                               "check", "goal", "rows") if key not in results]
    if missing:
        raise ValueError(f"results lack {missing}")
    for row in results["rows"]:
        if any(key not in row for key in ROW_KEYS):
            raise ValueError(f"row {row} lacks some of {ROW_KEYS}")
        if row["variant"] not in ("base", "minilora", "peft", "swap", "merged"):
            raise ValueError(f"unknown variant in {row}")
        if not 0 < row["p10_ms"] <= row["q1_ms"] <= row["median_ms"] <= row["q3_ms"] <= row["p90_ms"]:
            raise ValueError(f"need 0 < p10 <= q1 <= median <= q3 <= p90 in {row}")
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = timing.environment(device)
    started = time.perf_counter()
    print(f"{env['device']} | torch {env['torch']} | peft {env['peft']} | {args.dtype} | threads "
          f"{env['torch_threads']} | load {env['loadavg_start']}", flush=True)
    with tempfile.TemporaryDirectory() as directory, torch.inference_mode():
        models, factors, names = build(args, Path(directory))
        generator = torch.Generator().manual_seed(args.seed)
        vocab = models["base"].config.vocab_size
        input_ids = torch.randint(0, vocab, (args.batch, args.seq_len), generator=generator).to(device)
        fns = calls(models, factors, names, input_ids, args.ks)
        reference = {k: fns[f"peft_k{k}"]().float() for k in args.ks}
        check = {name: (fn().float() - reference[int(name.rpartition("_k")[2])]).abs().max().item()
                 for name, fn in fns.items() if name != "base"}  # every variant against PEFT's, same k
        check["base"] = (fns["base"]().float() - reference[max(args.ks)]).abs().max().item()
        print(f"max |logits - PEFT's| {check}", flush=True)
        cpu_ms = {}
        times = timing.time_interleaved(fns, device=device, warmup=args.warmup, budget_s=args.budget_s,
                                        min_rounds=args.min_rounds, max_rounds=args.max_rounds, cpu_ms=cpu_ms)
    if device.type != "cpu":
        cpu_ms = {}  # CPU time means something only on the CPU
    rows, goal = summarize(times, cpu_ms, args.ks)
    for row in rows:
        extra = f" overhead {100 * row['paired_overhead']:+.1f}% (paired)" if "paired_overhead" in row else ""
        print(f"  {row['variant']:>8} k={row['k']}: {row['median_ms']:.1f} ms "
              f"[{row['q1_ms']:.1f}, {row['q3_ms']:.1f}] n={row['n']}{extra}", flush=True)
    for k, bases in goal.items():
        for basis, g in bases.items():
            print(f"  k={k} ({basis}): minilora {100 * g['minilora_overhead']:+.1f}%, PEFT "
                  f"{100 * g['peft_overhead']:+.1f}%" + (f", goal met: {g['met']}" if k in ("4", "8") else ""),
                  flush=True)
    results = {
        **env,
        "dtype": args.dtype,
        "benchmark": "multi_adapter",
        "command": "python " + shlex.join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "settings": {
            "model": args.model, "batch": args.batch, "seq_len": args.seq_len, "ks": args.ks, "r": args.r,
            "lora_alpha": args.r, "target_modules": list(timing.TARGET_MODULES), "adapters_loaded": max(args.ks),
            "rows": "row i uses adapter i mod k", "forward": "use_cache=False, logits_to_keep=1, inference_mode",
            "swap": "A and B copied into a single-adapter minilora model before each adapter's sub-batch",
            "merged": "minilora.merge of adapter a0 (k=1 only)",
            "peft_timed": "PeftModel(..., adapter_names=names), PEFT's own mixed-batch path",
            "warmup_rounds": args.warmup, "budget_s": args.budget_s, "min_rounds": args.min_rounds,
            "max_rounds": args.max_rounds, "seed": args.seed, "dry_run": args.dry_run,
            "timer": "time.perf_counter between device synchronisations, one call per sample, all variants and "
                     "k interleaved in one schedule; on the CPU also time.process_time (cpu_*_ms); overhead: "
                     "(median - median of base) / median of base; paired_overhead: median over rounds of "
                     "(call - base call of the same round) / base call, with its quartiles",
        },
        "check": {"max_abs_diff_vs_peft": check},
        "goal": {"statement": GOAL, "by_k": goal,
                 "bases": "wall_paired: median paired wall-time overheads; cpu_time: from the medians of CPU time"},
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    validate(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"multi_adapter_{timing.device_slug(results)}_{args.dtype}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path} in {results['wall_s']} s", flush=True)
    return results


if __name__ == "__main__":
    main()
