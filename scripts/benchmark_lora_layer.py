"""One adapted GPT-2 matrix at a time, on the CPU: what each way of computing the unmerged LoRA layer costs.

For each of GPT-2 small's four adapted shapes (``c_attn`` 768 -> 2304, ``attn.c_proj`` 768 -> 768, ``c_fc``
768 -> 3072, ``mlp.c_proj`` 3072 -> 768; transformers' ``Conv1D``, r=8, B nonzero) and each number of tokens, in
eval mode under ``torch.inference_mode()``, interleaved with the method of ``minilora/lab/timing.py``:

- ``base``: the frozen layer alone, ``b + X W0ᵀ``;
- ``equation``: the LoRA equation as written, ``base(X) + scaling · B(A(X))``: what PEFT runs, and what minilora
  runs in training;
- ``branch_after``: the base layer first, then one in-place ``addmm_`` that adds ``scaling · (X Aᵀ) Bᵀ`` to its output;
- ``fused_xat``: ``b + scaling · (X Aᵀ) Bᵀ`` first, then the base product added in place, with ``X Aᵀ`` computed
  as written (``F.linear``, an output of N rows and r columns);
- ``fused``: ``minilora.LoRALinear.fused_forward``: the same, with ``X Aᵀ`` computed as ``(A Xᵀ)ᵀ`` (r rows, N columns).

``branch_after`` and ``fused`` run the same operations in two orders; ``fused_xat`` and ``fused`` differ only in how
the thin product is laid out. ``minilora/layer.py`` takes the choices this script measured as the cheaper ones.
Writes ``book/benchmarks/lora_layer_cpu_float32.json``.

    python scripts/benchmark_lora_layer.py

It needs only torch, transformers and peft (for the provenance fields): minilora comes from this checkout.
"""

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `import minilora` finds this checkout's package
# minilora/lab/__init__.py imports the book's helpers (tqdm, matplotlib); the timing module needs torch alone.
_spec = importlib.util.spec_from_file_location("minilora_lab_timing", ROOT / "minilora" / "lab" / "timing.py")
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)

LAYERS = {"c_attn": (768, 2304), "attn.c_proj": (768, 768), "c_fc": (768, 3072), "mlp.c_proj": (3072, 768)}
VARIANTS = ("base", "equation", "branch_after", "fused_xat", "fused")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS))
    parser.add_argument("--tokens", nargs="+", type=int, default=[128, 512], help="rows of X: batch x sequence")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=20, help="discarded rounds before timing")
    parser.add_argument("--budget-s", type=float, default=8.0, help="seconds of timed rounds per point")
    parser.add_argument("--min-rounds", type=int, default=50)
    parser.add_argument("--max-rounds", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "benchmarks")
    return parser.parse_args(argv)


def adapted_layer(in_features, out_features, r, generator):
    """A GPT-2 ``Conv1D`` with random weights, wrapped in a minilora LoRALinear whose B is nonzero, in eval mode."""
    from transformers.pytorch_utils import Conv1D

    import minilora

    conv = Conv1D(out_features, in_features)
    with torch.no_grad():
        conv.weight.normal_(0, 0.02, generator=generator)
        conv.bias.normal_(0, 0.02, generator=generator)
    layer = minilora.LoRALinear(conv, r=r, alpha=r)
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.02, generator=generator)
    return layer.eval()


def variant_functions(layer, x):
    """name -> a callable computing that variant on ``x``; all but ``base`` give the same numbers."""
    rows = x.reshape(-1, layer.in_features)
    weight_b_t, bias, w0_t = layer.lora_B.weight.t(), layer.base_layer.bias, layer.base_layer.weight  # Conv1D: (in, out)

    def thin_transposed():  # (A Xᵀ)ᵀ, as fused_forward computes it
        return torch.mm(layer.lora_A.weight, rows.t()).t()

    def equation():
        return layer.base_layer(x) + layer.scaling * layer.lora_B(layer.lora_A(layer.lora_dropout(x)))

    def branch_after():
        h = torch.addmm(bias, rows, w0_t)  # the base layer's output
        return h.addmm_(thin_transposed(), weight_b_t, alpha=layer.scaling).view(*x.shape[:-1], layer.out_features)

    def fused_xat():
        h = torch.addmm(bias, F.linear(rows, layer.lora_A.weight), weight_b_t, alpha=layer.scaling)
        return h.addmm_(rows, w0_t).view(*x.shape[:-1], layer.out_features)

    fns = {"base": lambda: layer.base_layer(x), "equation": equation, "branch_after": branch_after,
           "fused_xat": fused_xat, "fused": lambda: layer.fused_forward(x)}
    assert tuple(fns) == VARIANTS
    return fns


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = timing.environment("cpu")
    print(f"{env['device']} | torch {env['torch']} | threads {env['torch_threads']} | load {env['loadavg_start']}",
          flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    rows, started = [], time.perf_counter()
    for name in args.layers:
        in_features, out_features = LAYERS[name]
        layer = adapted_layer(in_features, out_features, args.r, generator)
        for tokens in args.tokens:
            x = torch.randn(1, tokens, in_features, generator=generator)
            fns = variant_functions(layer, x)
            with torch.inference_mode():
                expected = fns["equation"]()
                for variant in VARIANTS[2:]:
                    torch.testing.assert_close(fns[variant](), expected, rtol=1e-5, atol=1e-5)
                times = timing.time_interleaved(fns, warmup=args.warmup, budget_s=args.budget_s,
                                                min_rounds=args.min_rounds, max_rounds=args.max_rounds)
            paired = timing.paired_overheads(times)
            point = {"layer": name, "in_features": in_features, "out_features": out_features, "tokens": tokens}
            for variant in VARIANTS:
                row = {**point, "variant": variant, **timing.summarize(times[variant])}
                if variant != "base":
                    row["paired_overhead"] = statistics.median(paired[variant])
                rows.append(row)
            print(f"  {name} {in_features}->{out_features} tokens {tokens} (n={len(times['base'])}): base "
                  f"{statistics.median(times['base']) * 1e3:.0f} us; paired overhead "
                  + ", ".join(f"{v} {100 * statistics.median(paired[v]):+.1f}%" for v in VARIANTS[1:]), flush=True)
    results = {
        **env,
        "dtype": "float32",
        "benchmark": "lora_layer",
        "command": "python " + shlex.join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "settings": {"r": args.r, "lora_alpha": args.r, "layer_class": "transformers Conv1D (random weights), batch 1",
                     "mode": "eval, torch.inference_mode()", "warmup_rounds": args.warmup, "budget_s": args.budget_s,
                     "min_rounds": args.min_rounds, "max_rounds": args.max_rounds, "seed": args.seed,
                     "timer": "time.perf_counter, one call per sample, variants interleaved; paired_overhead: "
                              "median over rounds of (variant - base) / base within one round"},
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    path = args.out / "lora_layer_cpu_float32.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}", flush=True)
    return results


if __name__ == "__main__":
    main()
