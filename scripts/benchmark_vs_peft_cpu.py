"""minilora against PEFT on the CPU, side by side: unmerged inference and a training step.

Same GPT-2, same adapter (LoRA r=8 on ``c_attn``, ``c_proj``, ``c_fc``, B nonzero), timed interleaved with the method
of ``minilora/lab/timing.py``:

- ``inference``: a forward pass in eval mode under ``torch.inference_mode()``, for ``base``, ``minilora_unmerged`` and
  ``peft_unmerged`` (the base model gives the overhead of each);
- ``train_step``: train mode (GPT-2's dropout on), forward with the language-modelling loss, backward, ``AdamW.step()``
  and ``zero_grad()``, for ``minilora_unmerged`` and ``peft_unmerged``.

Writes ``book/benchmarks/cpu_vs_peft_<dtype>.json``: the agreed results schema, each row with an extra ``mode``.

    python scripts/benchmark_vs_peft_cpu.py

It needs only torch, transformers and peft: minilora is imported from this checkout, not from an installed package.
"""

import argparse
import importlib.util
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `import minilora` finds this checkout's package
# minilora/lab/__init__.py imports the book's helpers (tqdm, matplotlib); the timing module needs torch alone, so load
# that one file by its path.
_spec = importlib.util.spec_from_file_location("minilora_lab_timing", ROOT / "minilora" / "lab" / "timing.py")
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)

ADAPTED = ["minilora_unmerged", "peft_unmerged"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(timing.MODEL_SHAPES), default=["gpt2"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--seq-len", nargs="+", type=int, default=[128])
    parser.add_argument("--modes", nargs="+", choices=["inference", "train_step"], default=["inference", "train_step"])
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=2, help="discarded rounds before timing")
    parser.add_argument("--budget-s", type=float, default=20.0, help="seconds of timed rounds per grid point")
    parser.add_argument("--min-rounds", type=int, default=20)
    parser.add_argument("--max-rounds", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "benchmarks")
    return parser.parse_args(argv)


def train_step(model, optimizer, input_ids):
    loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_point(fns, args, **point):
    """Time ``fns`` interleaved; return one row per function: wall-clock and CPU-time statistics."""
    cpu_ms = {}
    times = timing.time_interleaved(fns, device="cpu", warmup=args.warmup, budget_s=args.budget_s,
                                    min_rounds=args.min_rounds, max_rounds=args.max_rounds, cpu_ms=cpu_ms)
    rows = [{**point, "variant": name, **timing.summarize(times[name], cpu_ms[name])} for name in fns]
    # a check on the ratio of medians: the median over rounds of minilora's time over PEFT's in the same round
    paired = timing.paired_overheads(times, "peft_unmerged")["minilora_unmerged"]
    rows[list(fns).index("minilora_unmerged")]["paired_ratio_to_peft"] = 1 + statistics.median(paired)
    report(rows)
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = timing.environment("cpu")
    print(f"{env['device']} | torch {env['torch']} | transformers {env['transformers']} | peft {env['peft']} | "
          f"threads {env['torch_threads']} | load {env['loadavg_start']}", flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    rows, checks, started = [], {}, time.perf_counter()
    for model_name in args.models:
        models = timing.build_variants(model_name, ["base", *ADAPTED], r=args.r, alpha=args.r, seed=args.seed)
        vocab = models["base"].config.vocab_size
        probe = torch.randint(0, vocab, (2, 32), generator=generator)
        checks[model_name] = {"reference": "minilora_unmerged",
                              "max_abs_diff": timing.max_differences(models, probe, "minilora_unmerged"),
                              "trainable": {name: sum(p.numel() for p in models[name].parameters() if p.requires_grad)
                                            for name in ADAPTED}}
        print(f"  {model_name}: {checks[model_name]}", flush=True)
        assert len(set(checks[model_name]["trainable"].values())) == 1, "minilora and PEFT train different counts"
        for batch in args.batch:
            for seq_len in args.seq_len:
                input_ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
                point = {"model": model_name, "batch": batch, "seq_len": seq_len}
                if "inference" in args.modes:
                    for model in models.values():
                        model.eval()
                    fns = {name: (lambda m=m: m(input_ids=input_ids, use_cache=False)) for name, m in models.items()}
                    with torch.inference_mode():
                        rows += time_point(fns, args, **point, mode="inference")
                if "train_step" in args.modes:
                    fns = {}
                    for name in ADAPTED:
                        model = models[name].train()
                        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
                        fns[name] = lambda m=model, o=optimizer: train_step(m, o, input_ids)
                    rows += time_point(fns, args, **point, mode="train_step")
        del models
    results = {
        **env,
        "dtype": "float32",
        "benchmark": "cpu_vs_peft",
        "command": "python " + shlex.join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "settings": {
            "r": args.r, "lora_alpha": args.r, "target_modules": list(timing.TARGET_MODULES), "lora_dropout": 0.0,
            "model_class": "GPT2LMHeadModel (random weights, use_cache=False)",
            "inference": "eval mode, torch.inference_mode()",
            "train_step": f"train mode, forward with labels, backward, AdamW(lr={args.lr}).step(), zero_grad",
            "peft_timed": "PeftModel.get_base_model(): PEFT's LoRA layers without the PeftModel wrapper",
            "warmup_rounds": args.warmup, "budget_s": args.budget_s,
            "min_rounds": args.min_rounds, "max_rounds": args.max_rounds, "seed": args.seed,
            "timer": "time.perf_counter (median_ms...) and time.process_time (cpu_median_ms...), one call per sample, "
                     "variants interleaved; paired_ratio_to_peft: median over rounds of minilora / PEFT within a round",
        },
        "check": checks,
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    path = timing.write_results(results, args.out / "cpu_vs_peft_float32.json")
    print(f"wrote {path}", flush=True)
    return results


def report(rows):
    """Print one grid point: each variant's median, and minilora's time over PEFT's."""
    median = {row["variant"]: row["median_ms"] for row in rows}
    cpu = {row["variant"]: row["cpu_median_ms"] for row in rows}
    line = ", ".join(f"{name} {ms:.1f}" for name, ms in median.items())
    ratio = median["minilora_unmerged"] / median["peft_unmerged"]
    cpu_ratio = cpu["minilora_unmerged"] / cpu["peft_unmerged"]
    first = rows[0]
    print(f"  {first['mode']} {first['model']} batch {first['batch']} seq {first['seq_len']} (n={first['n']}): "
          f"{line} ms; minilora/peft {ratio:.3f} (CPU time {cpu_ratio:.3f})", flush=True)


if __name__ == "__main__":
    main()
