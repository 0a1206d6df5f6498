"""Time forward passes of GPT-2 carrying a LoRA adapter: base, merged, minilora unmerged, PEFT unmerged, PEFT merged.

LoRA r=8 on ``c_attn``, ``c_proj`` and ``c_fc``, random weights (latency does not depend on their values), B nonzero.
The variants run interleaved after a warm-up; each call is timed between two device synchronisations; we keep the
median and the 10th and 90th percentiles (the method is in ``minilora/lab/timing.py``). One JSON file per dtype goes to
``book/benchmarks/inference_<device>_<dtype>.json``; chapter 7 plots every such file it finds.

    python scripts/benchmark_inference.py                 # CPU: gpt2, batch 1 and 4, seq 128, fp32 (about 5 minutes)
    python scripts/benchmark_inference.py --device cuda   # GPU: the LoRA paper's grid, gpt2 and gpt2-medium, fp32 and bf16
    python scripts/benchmark_inference.py --points 1x128 16x256 32x512   # chosen (batch, seq) points, not a product

On the GPU the default points are the LoRA paper's Table 1, (batch, seq) = (32, 512), (16, 256), (1, 128), plus batch 1
at seq 512; on the CPU, batch 1 and 4 at seq 128.

It needs only torch, transformers and peft: minilora is imported from this checkout, not from an installed package.
"""

import argparse
import gc
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

GRIDS = {  # device type -> defaults for --models, --points (batch, seq_len), --dtype
    "cuda": (["gpt2", "gpt2-medium"], [(1, 128), (1, 512), (16, 256), (32, 512)], ["float32", "bfloat16"]),
    "cpu": (["gpt2"], [(1, 128), (4, 128)], ["float32"]),
}


def grid_point(text):
    """'16x256' -> (16, 256): a (batch, seq_len) grid point."""
    try:
        batch, seq_len = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is BATCHxSEQ, e.g. 16x256; got {text!r}") from None
    if batch < 1 or seq_len < 1:
        raise argparse.ArgumentTypeError(f"batch and seq must be positive; got {text!r}")
    return batch, seq_len


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", choices=sorted(timing.MODEL_SHAPES))
    parser.add_argument("--points", nargs="+", type=grid_point, help="(batch, seq) points as BATCHxSEQ, e.g. 1x128")
    parser.add_argument("--batch", nargs="+", type=int, help="with --seq-len: every batch at every seq (a product)")
    parser.add_argument("--seq-len", nargs="+", type=int)
    parser.add_argument("--dtype", nargs="+", choices=sorted(timing.DTYPES))
    parser.add_argument("--variants", nargs="+", choices=timing.VARIANTS, default=list(timing.VARIANTS))
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="discarded rounds before timing")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds of timed rounds per grid point (default 10 on cuda, 20 on cpu)")
    parser.add_argument("--min-rounds", type=int, default=20)
    parser.add_argument("--max-rounds", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "benchmarks")
    args = parser.parse_args(argv)
    models, points, dtypes = GRIDS["cuda" if torch.device(args.device).type == "cuda" else "cpu"]
    if args.points and (args.batch or args.seq_len):
        parser.error("give --points, or --batch with --seq-len, not both")
    if bool(args.batch) != bool(args.seq_len):
        parser.error("--batch and --seq-len go together (their product is the grid); or give --points")
    if args.batch:
        args.points = [(b, t) for b in args.batch for t in args.seq_len]
    args.points = args.points or points
    args.models = args.models or models
    args.dtype = args.dtype or dtypes
    if args.budget_s is None:
        args.budget_s = 10.0 if torch.device(args.device).type == "cuda" else 20.0
    return args


def forward(model, input_ids):
    return model(input_ids=input_ids, use_cache=False)


def describe(point):
    """One line for the log: each variant's median, its overhead over base, and minilora's overhead over PEFT's."""
    (table,) = timing.overhead_table({"rows": point})
    line = ", ".join(f"{r['variant']} {r['median_ms']:.2f} ms" for r in point)
    if "base" not in table:
        return line
    line += " | overhead " + ", ".join(f"{v} {100 * table['overhead_' + v]:+.1f}%" for v in timing.VARIANTS
                                       if "overhead_" + v in table)
    if table.get("overhead_peft_unmerged") and "overhead_minilora_unmerged" in table:
        line += f" | minilora/peft {table['overhead_minilora_unmerged'] / table['overhead_peft_unmerged']:.2f}"
    return line


def run(args, dtype_name):
    device, dtype = torch.device(args.device), timing.DTYPES[dtype_name]
    env = timing.environment(device)
    print(f"{env['device']} | torch {env['torch']} | transformers {env['transformers']} | peft {env['peft']} | "
          f"{dtype_name} | threads {env['torch_threads']} | load {env['loadavg_start']}", flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    rows, checks, started = [], {}, time.perf_counter()
    for model_name in args.models:
        models = timing.build_variants(model_name, args.variants, r=args.r, alpha=args.r, device=device, dtype=dtype,
                                       seed=args.seed)
        vocab = models[args.variants[0]].config.vocab_size
        probe = torch.randint(0, vocab, (2, 32), generator=generator).to(device)
        reference = "minilora_unmerged" if "minilora_unmerged" in models else args.variants[0]
        checks[model_name] = {"reference": reference, "max_abs_diff": timing.max_differences(models, probe, reference)}
        print(f"  {model_name}: max |logits - {reference}| {checks[model_name]['max_abs_diff']}", flush=True)
        for batch, seq_len in args.points:
            input_ids = torch.randint(0, vocab, (batch, seq_len), generator=generator).to(device)
            fns = {name: (lambda m=m: forward(m, input_ids)) for name, m in models.items()}
            cpu_ms = {} if device.type == "cpu" else None  # CPU time means something only on the CPU
            with torch.inference_mode():
                times = timing.time_interleaved(fns, device=device, warmup=args.warmup, budget_s=args.budget_s,
                                                min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                                                cpu_ms=cpu_ms)
            point = [{"model": model_name, "batch": batch, "seq_len": seq_len, "variant": name,
                      **timing.summarize(times[name], cpu_ms and cpu_ms[name])} for name in models]
            if "base" in times:  # a check on the overheads: the median of same-round overheads
                paired = timing.paired_overheads(times)
                for row in point:
                    if row["variant"] in paired:
                        row["paired_overhead"] = statistics.median(paired[row["variant"]])
            rows += point
            print(f"  {model_name} batch {batch} seq {seq_len} (n={point[0]['n']}): {describe(point)}", flush=True)
        del models
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results = {
        **env,
        "dtype": dtype_name,
        "benchmark": "inference",
        "command": "python " + shlex.join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "settings": {
            "r": args.r, "lora_alpha": args.r, "target_modules": list(timing.TARGET_MODULES), "lora_dropout": 0.0,
            "model_class": "GPT2LMHeadModel (random weights, use_cache=False, torch.inference_mode)",
            "attn_implementation": "transformers default",
            "merged": "minilora.merge: delta added into W0, LoRALinear wrappers kept",
            "peft_timed": "PeftModel.get_base_model(): PEFT's LoRA layers without the PeftModel wrapper",
            "warmup_rounds": args.warmup, "budget_s": args.budget_s,
            "min_rounds": args.min_rounds, "max_rounds": args.max_rounds, "seed": args.seed,
            "timer": "time.perf_counter between device synchronisations, one call per sample, variants interleaved; "
                     "on the CPU also time.process_time (cpu_*_ms); paired_overhead: median over rounds of "
                     "(variant - base) / base within one round",
        },
        "check": checks,
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    path = timing.write_results(results, args.out / f"inference_{timing.device_slug(results)}_{dtype_name}.json")
    print(f"wrote {path}", flush=True)
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for dtype_name in args.dtype:
        run(args, dtype_name)


if __name__ == "__main__":
    main()
