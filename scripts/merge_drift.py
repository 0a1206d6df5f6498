"""Merge/unmerge round-trip drift in half precision, for minilora and PEFT, on GPT-2 medium's shapes.

PEFT's users reported (huggingface/peft issues 1388 and 2502) that merging an adapter into fp16 or bf16 weights and
unmerging it again does not give the original weights back, and that the error grows with each round trip. Rounding
explains why: a round trip stores

    W_1 = round(round(W_0 + ΔW) - ΔW),

so each element moves by up to about one rounding of |W_0 + ΔW| (eps/2 relative: 2^-8 for bf16, 2^-11 for fp16), and
k round trips add k such errors that need not cancel. How much it is depends on where ΔW is computed and how often
the result is rounded: minilora computes ΔW in float32 and rounds once per merge (``minilora/merging.py``); PEFT
computes ``B @ A`` in the weight's dtype on a GPU (it casts to float32 only on the CPU).

For each dtype (float32 as the control, bfloat16, float16) and library, the same random base weights and the same
random adapter (r=8 on ``c_attn``, ``c_proj``, ``c_fc``, B nonzero), after k = 1, 10, 100 round trips:

- ``weight_max_rel``: max over adapted weights of max|W_k - W_0| / max|W_0|, also in units of the dtype's eps;
- ``weight_fro_rel``: ‖W_k - W_0‖_F / ‖W_0‖_F over all adapted weights together;
- ``logits_max_abs``: max|logits_k - logits_0| of the unmerged model on a fixed batch, next to
  ``dtype_vs_fp32_logits``: how far the same model in that dtype already is from float32 before any merge, the scale
  against which a drift matters.

    python scripts/merge_drift.py --device cuda --out DIR     # GPU: gpt2-medium shapes (a few seconds)
    python scripts/merge_drift.py --dry-run --out DIR         # CPU: a tiny GPT-2, 2 round trips (seconds)

It needs only torch, transformers and peft (minilora is imported from this checkout). One JSON file,
``merge_drift_<device>.json``, goes to ``--out``.
"""

import argparse
import copy
import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
_spec = importlib.util.spec_from_file_location("minilora_lab_timing", ROOT / "minilora" / "lab" / "timing.py")
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="gpt2-medium", choices=sorted(timing.MODEL_SHAPES))
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16", "float16"], choices=sorted(timing.DTYPES))
    parser.add_argument("--cycles", nargs="+", type=int, default=[1, 10, 100],
                        help="report after these numbers of merge/unmerge round trips (cumulative)")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, 1 and 2 round trips")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.model, args.cycles = "cpu", "tiny", [1, 2]
    if sorted(args.cycles) != args.cycles or args.cycles[0] < 1:
        parser.error("--cycles must be increasing positive integers")
    return args


def adapted_weights(model):
    """name -> the base weight tensor of every adapted layer (minilora's LoRALinear or PEFT's LoraLayer)."""
    weights = {}
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if base is not None and hasattr(base, "weight") and ("lora_A" in dict(module.named_children())):
            weights[name] = base.weight
    return weights


def round_trip(model, library):
    if library == "minilora":
        import minilora

        minilora.merge(model)
        minilora.unmerge(model)
    else:
        from peft.tuners.lora import LoraLayer

        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        for layer in layers:
            layer.merge()
        for layer in layers:
            layer.unmerge()


def measure(args, dtype_name, library, input_ids, fp32_logits):
    device, dtype = torch.device(args.device), timing.DTYPES[dtype_name]
    variant = "minilora_unmerged" if library == "minilora" else "peft_unmerged"
    # Its own base model each time (same seed, same weights): unmerged variants share tensors within one build.
    (model,) = timing.build_variants(args.model, [variant], r=args.r, alpha=args.r, device=device, dtype=dtype,
                                     seed=args.seed).values()
    weights = adapted_weights(model)
    original = {name: w.detach().clone() for name, w in weights.items()}
    with torch.inference_mode():
        logits0 = model(input_ids, use_cache=False).logits.float()
    eps = torch.finfo(dtype).eps
    rows, done = [], 0
    for cycles in args.cycles:
        for _ in range(cycles - done):
            round_trip(model, library)
        done = cycles
        with torch.inference_mode():
            logits = model(input_ids, use_cache=False).logits.float()
        diffs = {n: (weights[n].detach().float() - original[n].float()) for n in weights}
        max_rel = max((d.abs().max() / original[n].float().abs().max()).item() for n, d in diffs.items())
        fro = sum(d.pow(2).sum().item() for d in diffs.values()) ** 0.5
        fro0 = sum(original[n].float().pow(2).sum().item() for n in diffs) ** 0.5
        rows.append({
            "dtype": dtype_name, "library": library, "cycles": cycles,
            "weight_max_rel": max_rel, "weight_max_rel_in_eps": max_rel / eps,
            "weight_fro_rel": fro / fro0,
            "elements_changed": int(sum((d != 0).sum().item() for d in diffs.values())),
            "elements": int(sum(d.numel() for d in diffs.values())),
            "logits_max_abs": (logits - logits0).abs().max().item(),
            "dtype_vs_fp32_logits": (logits0.cpu() - fp32_logits).abs().max().item(),
            "logits_scale": logits0.abs().max().item(),
        })
        row = rows[-1]
        print(f"  {library:8s} {dtype_name:8s} k={cycles:3d}: weight max {row['weight_max_rel']:.2e} "
              f"({row['weight_max_rel_in_eps']:.2f} eps), fro {row['weight_fro_rel']:.2e}, "
              f"logits {row['logits_max_abs']:.2e} (dtype vs fp32 {row['dtype_vs_fp32_logits']:.2e})", flush=True)
    del model
    return rows


def main(argv=None):
    args = parse_args(argv)
    env = timing.environment(args.device)
    print(f"{env['device']} | torch {env['torch']} | transformers {env['transformers']} | peft {env['peft']}",
          flush=True)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    (reference,) = timing.build_variants(args.model, ["minilora_unmerged"], r=args.r, alpha=args.r,
                                         seed=args.seed).values()  # fp32 on the CPU, the reference logits
    input_ids = torch.randint(0, reference.config.vocab_size, (2, 64), generator=generator)
    with torch.inference_mode():
        fp32_logits = reference(input_ids, use_cache=False).logits.float()
    del reference
    rows = []
    for dtype_name in args.dtype:
        for library in ("minilora", "peft"):
            rows += measure(args, dtype_name, library, input_ids.to(args.device), fp32_logits)
    results = {
        **env,
        "benchmark": "merge_drift",
        "command": "python " + shlex.join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "settings": {"model": args.model, "shapes": timing.MODEL_SHAPES[args.model], "r": args.r, "lora_alpha": args.r,
                     "target_modules": list(timing.TARGET_MODULES), "b_std": 0.02, "seed": args.seed,
                     "batch": list(input_ids.shape), "cycles": args.cycles, "dry_run": args.dry_run,
                     "peft_merge": "LoraLayer.merge() then LoraLayer.unmerge() on every layer",
                     "minilora_merge": "minilora.merge then minilora.unmerge"},
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"merge_drift_{timing.device_slug(results)}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}", flush=True)
    return results


if __name__ == "__main__":
    main()
