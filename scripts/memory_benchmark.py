"""Peak memory and step time of one training step: full fine-tuning, LoRA, LoRA with gradient checkpointing.

Exact command line (every option has a default; needs torch, transformers and peft, and this repository's
`minilora` package, which the script imports from the repository it lies in):

    python scripts/memory_benchmark.py [--device {cpu,cuda}] [--model {bundled,gpt2,gpt2-medium,tiny}]
                                       [--sizes BxT,BxT,...] [--r R] [--budget-s SECONDS] [--out DIR] [--dry-run]

    python scripts/memory_benchmark.py                          # CPU, bundled model -> book/benchmarks/memory_cpu.json
    python scripts/memory_benchmark.py --device cuda --model gpt2 --sizes 4x256,8x512,8x1024 --out OUTDIR
                                                               # -> OUTDIR/memory_cuda-<gpu name>.json
    python scripts/memory_benchmark.py --dry-run --out /tmp/x   # tiny model, one size, seconds

- `--device cpu` measures with torch.profiler (profile_memory=True, its memory timeline); `--device cuda` with
  torch.cuda.max_memory_allocated after reset_peak_memory_stats (cuda:0, fp32, TF32 left at PyTorch's default).
- `--model bundled` is the book's base model (minilora/lab/base_model); gpt2 and gpt2-medium are random-weight
  models of those shapes built from a local config (no download); tiny is a toy for tests.
- `--sizes` are batch x sequence length pairs (default 4x64,8x128,16x256; the sequence at most n_positions).
- LoRA is minilora's, rank `--r` (default 8, alpha = r) on c_attn; checkpointing is transformers'
  gradient_checkpointing_enable(use_reentrant=False).
- Step times: the three methods interleaved (lab.timing.time_interleaved), warm-up first, about `--budget-s`
  seconds per size (default 6); median and 10th/90th percentiles.
- Output: JSON with provenance (device, versions, threads, date, command), and per method and size the measured
  peak, the static part (weights + AdamW moments), the accounting of minilora.lab.memory, and the step times.
- On the CPU the script uses one thread (torch.set_num_threads(1)): a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minilora.lab import memory  # noqa: E402
from minilora.lab import timing  # noqa: E402

DEFAULT_SIZES = "4x64,8x128,16x256"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        try:
            b, t = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: {part!r} is not BATCHxSEQ, for example 8x128") from None
        if b < 1 or t < 1:
            raise SystemExit(f"--sizes: {part!r} needs a positive batch and sequence length")
        sizes.append((b, t))
    return sizes


def load_model(name: str):
    if name == "bundled":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(ROOT / "minilora" / "lab" / "base_model", dtype=torch.float32)
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(timing.gpt2_config(name))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("bundled", "gpt2", "gpt2-medium", "tiny"), default="bundled")
    parser.add_argument("--sizes", default=DEFAULT_SIZES)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "benchmarks")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, size 2x16, a short timing budget")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    if args.device == "cpu":
        torch.set_num_threads(1)
    model_name, sizes, budget = args.model, parse_sizes(args.sizes), args.budget_s
    if args.dry_run:
        model_name, sizes, budget = "tiny", [(2, 16)], 0.2
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    base = load_model(model_name)
    results = timing.environment(device) | {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "model": model_name, "r": args.r,
        "targets": list(memory.ATTENTION), "dtype": "float32", "dry_run": args.dry_run,
        "config": {k: getattr(base.config, k) for k in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions")},
        "parameters": sum(p.numel() for p in base.parameters()), "rows": [],
    }
    for batch, seq_len in sizes:
        for method in memory.METHODS:
            row = {"method": method, "batch": batch, "seq_len": seq_len}
            row |= memory.measure_step(base, method, batch, seq_len, device, r=args.r)
            row["accounted"] = memory.accounting(base.config, method, batch, seq_len, r=args.r)
            results["rows"].append(row)
            print(f"{method:>18} {batch:>3}x{seq_len:<5} peak {row['peak_bytes'] / 2**20:8.1f} MiB, "
                  f"accounted {row['accounted']['peak'] / 2**20:8.1f} MiB", flush=True)
        steps = {}
        for method in memory.METHODS:
            trained = memory.prepare(base, method, r=args.r).to(device)
            steps[method] = memory.step_function(trained, batch, seq_len, device)[0]
        times = timing.time_interleaved(steps, device=device, warmup=2, budget_s=budget, min_rounds=5,
                                        max_rounds=100)
        for row in results["rows"][-len(memory.METHODS):]:
            row |= timing.summarize(times[row["method"]])
            print(f"{row['method']:>18} {batch:>3}x{seq_len:<5} step {row['median_ms']:8.1f} ms "
                  f"(p10 {row['p10_ms']:.1f}, p90 {row['p90_ms']:.1f}, n {row['n']})", flush=True)
        del steps
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"memory_{timing.device_slug(results)}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
