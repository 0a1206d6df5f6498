"""Chapter 06's experiment over seeds: a full-rank fine-tune, the spectra of its updates ΔW, adapters extracted from
them, and a LoRA trained directly with the same budget.

The chapter runs the first of `lab.seeds()` live and plots the JSON this writes for the spread over seeds. For every
seed it follows the chapter's steps exactly and records:

- the per-step training losses of the full-rank fine-tune (lr 5e-4) and of the rank-8 LoRA (lr 3e-3), 150 steps
  of 16 examples each, on the 16 weight matrices of `c_attn`, `c_proj` and `c_fc`;
- per matrix: ‖ΔW‖/‖W‖, the energy E_r of ΔW for every r, E_1, E_8 and the rank that keeps 90%, the same for a
  Gaussian matrix of ΔW's shape and norm, and the spectrum checks of the chapter (σ_1 of noise against ΔW's, and
  σ_32/σ_1 of both);
- σ_i / σ_1 of block 0's four ΔW and of their noise twins (the chapter's spectrum figures);
- accuracy and validation loss of the base model, the fine-tune, the adapters extracted at r = 1, 2, 4, 8, 16, the
  per-matrix adapter that keeps 90% of each matrix's energy, and the trained LoRA; the extracted adapters'
  four most common answers at r = 1, 2, 4;
- the overlap of the trained LoRA's column space with the fine-tune's top 8 left singular vectors, per matrix.

    python scripts/low_rank_sweep.py                  # the committed run -> book/results/low_rank.json
    python scripts/low_rank_sweep.py --dry-run --out /tmp/x.json   # 2 steps, 1 seed
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `import minilora` finds this checkout's package

import minilora  # noqa: E402
from minilora import lab  # noqa: E402
from minilora.lab.timing import cpu_model  # noqa: E402

TARGETS = ["c_attn", "c_proj", "c_fc"]
ALPHA = 16
RANKS = [1, 2, 4, 8, 16]
FULL_LR, LORA_LR, LORA_R = 5e-4, 3e-3, 8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: lab.seeds()")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--dry-run", action="store_true", help="2 steps, the first seed only")
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "results" / "low_rank.json")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.steps, args.seeds = 2, args.seeds or [lab.seeds()[0]]
    args.seeds = list(args.seeds or lab.seeds())
    return args


def energy(matrix):
    squares = torch.linalg.svdvals(matrix.double()).square()
    return squares.cumsum(0) / squares.sum()


def rank_for(e, fraction):
    return int((e < fraction).sum()) + 1


def sample_points(n):
    """The indices 1..n at which curves are stored: every one up to 16, then about 8 per doubling, and n."""
    return sorted({i for i in range(1, min(n, 16) + 1)} | {round(2 ** (k / 8)) for k in range(32, 8 * n.bit_length())
                                                          if round(2 ** (k / 8)) <= n} | {n})


def compact_run(run):
    """Keep the energy curves and spectra at `sample_points` only (a curve of 256 values per matrix and seed would
    make the file ten times larger, and the chapter's log-scale figures need no more). Idempotent."""
    for m in run["matrices"].values():
        if "E" in m:
            points = sample_points(len(m["E"]))
            m["energy"] = {"r": points, "delta": [m["E"][r - 1] for r in points],
                           "noise": [m["E_noise"][r - 1] for r in points]}
            m["E_1"], m["E_8"], m["noise_E_8"] = m["E"][0], m["E"][7], m["E_noise"][7]
            del m["E"], m["E_noise"]
    for s in run["spectra_block0"].values():
        if "delta" in s and "i" not in s:
            points = sample_points(len(s["delta"]))
            s["i"] = points
            s["delta"] = [s["delta"][i - 1] for i in points]
            s["noise"] = [s["noise"][i - 1] for i in points]
    return run


def extract(base, deltas, ranks):
    """A LoRA model holding the best rank-ranks[name] approximation of every ΔW (zero-padded to the largest)."""
    r_max = max(ranks.values())
    model = minilora.inject(copy.deepcopy(base), TARGETS, r=r_max, alpha=ALPHA)
    with torch.no_grad():
        for name, layer in model.named_modules():
            if isinstance(layer, minilora.LoRALinear):
                B, A = minilora.decompose(deltas[name], ranks[name])
                layer.lora_A.weight.zero_()[: ranks[name]] = A
                layer.lora_B.weight.zero_()[:, : ranks[name]] = B / layer.scaling
    return model


def one_seed(seed, steps, base, tokenizer, task):
    def score(model):
        return {"accuracy": lab.evaluate(model, tokenizer, task),
                "loss": lab.validation_loss(model, tokenizer, task)}

    budget = dict(steps=steps, batch_size=16, seed=seed, progress=False)
    full = copy.deepcopy(base).requires_grad_(False)
    for name, module in full.named_modules():
        if name.rpartition(".")[2] in TARGETS:
            module.weight.requires_grad_(True)
    start = time.perf_counter()
    full_history = lab.train(full, tokenizer, task, lr=FULL_LR, **budget)
    seconds = {"full": time.perf_counter() - start}
    tuned = dict(full.named_modules())
    deltas = {name: (tuned[name].weight - module.weight).detach().t()
              for name, module in base.named_modules() if name.rpartition(".")[2] in TARGETS}
    generator = torch.Generator().manual_seed(seed)
    matrices, spectra = {}, {}
    for name, delta in deltas.items():
        n = torch.randn(delta.shape, generator=generator)
        n = n * delta.norm() / n.norm()
        e, e_noise = energy(delta), energy(n)
        sigma, sigma_noise = torch.linalg.svdvals(delta.double()), torch.linalg.svdvals(n.double())
        matrices[name] = {
            "shape": list(delta.shape),
            "relative_norm": (delta.norm() / base.get_submodule(name).weight.norm()).item(),
            "E": [round(v, 5) for v in e.tolist()],
            "E_noise": [round(v, 5) for v in e_noise.tolist()],
            "rank_90": rank_for(e, 0.9), "noise_rank_90": rank_for(e_noise, 0.9),
            "noise_sigma1_over_sigma1": (sigma_noise[0] / sigma[0]).item(),
            "sigma32_over_sigma1": (sigma[31] / sigma[0]).item(),
            "noise_sigma32_over_sigma1": (sigma_noise[31] / sigma_noise[0]).item(),
        }
        if name.startswith("transformer.h.0."):
            spectra[name] = {"delta": [float(f"{v:.4g}") for v in (sigma / sigma[0]).tolist()],
                             "noise": [float(f"{v:.4g}") for v in (sigma_noise / sigma[0]).tolist()]}
    models = {"full-rank fine-tune": score(full)}
    del full
    prompts = [e.prompt for e in task.validation]
    answers = {}
    for r in RANKS:
        model = extract(base, deltas, {name: r for name in deltas})
        models[f"extracted, r = {r}"] = {**score(model), "stored": minilora.count_parameters(model)[0]}
        if r <= 4:
            answers[str(r)] = Counter(lab.predict(model, tokenizer, prompts, max_new_tokens=3)).most_common(4)
    ranks_90 = {name: m["rank_90"] for name, m in matrices.items()}
    model = extract(base, deltas, ranks_90)
    stored = sum(ranks_90[n] * sum(d.shape) for n, d in deltas.items())
    models["per-matrix 90%"] = {**score(model), "stored": stored}
    lab.set_seed(seed)  # LoRA's A starts random
    trained = minilora.inject(copy.deepcopy(base), TARGETS, r=LORA_R, alpha=ALPHA)
    start = time.perf_counter()
    lora_history = lab.train(trained, tokenizer, task, lr=LORA_LR, **budget)
    seconds["lora"] = time.perf_counter() - start
    models[f"LoRA trained, r = {LORA_R}"] = {**score(trained), "stored": minilora.count_parameters(trained)[0]}
    overlaps = {}
    for name, layer in trained.named_modules():
        if isinstance(layer, minilora.LoRALinear):
            lora_delta = layer.delta_weight().detach().t().double()
            U_full = torch.linalg.svd(deltas[name].double(), full_matrices=False)[0][:, :LORA_R]
            U_lora = torch.linalg.svd(lora_delta, full_matrices=False)[0][:, :LORA_R]
            overlaps[name] = (U_full.T @ U_lora).norm().item() ** 2 / LORA_R
    return compact_run({
        "seed": seed,
        "losses": {"full": [round(v, 4) for v in full_history], "lora": [round(v, 4) for v in lora_history]},
        "train_seconds": seconds,
        "models": models,
        "answers": answers,
        "matrices": matrices,
        "spectra_block0": spectra,
        "overlaps": overlaps,
    })


def write(args, argv, runs, base_score, always_twelve, start):
    import transformers

    result = {
        "what": "chapter 06: full-rank fine-tune, spectra of ΔW, extracted and trained LoRA, per seed",
        "provenance": {
            "processor": cpu_model(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python " + shlex.join([os.path.relpath(__file__, ROOT),
                                               *(sys.argv[1:] if argv is None else argv)]),
            "wall_seconds": time.perf_counter() - start,
            "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        },
        "settings": {"task": "largest", "targets": TARGETS, "alpha": ALPHA, "ranks": RANKS, "steps": args.steps,
                     "batch_size": 16, "full_lr": FULL_LR, "lora_lr": LORA_LR, "lora_r": LORA_R,
                     "seeds": args.seeds, "dry_run": args.dry_run,
                     "base_model": os.environ.get("MINILORA_BASE") or "bundled"},
        "base_model": base_score,
        "always_twelve": always_twelve,
        "complete": len(runs) == len(args.seeds),
        "runs": runs,
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(dumps(result))
    tmp.replace(args.out)


def dumps(result):
    """JSON with the settings readable (indented) and each seed's run on one line (its curves would take
    thousands of lines)."""
    runs = ",\n  ".join(json.dumps(run, separators=(",", ":")) for run in result["runs"])
    head = json.dumps({**result, "runs": "RUNS"}, indent=1)
    return head.replace('"RUNS"', f"[\n  {runs}\n ]") + "\n"


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base, tokenizer = lab.load_base()
    task = lab.get_task("largest")
    base_score = {"accuracy": lab.evaluate(base, tokenizer, task),
                  "loss": lab.validation_loss(base, tokenizer, task)}
    targets = [e.target for e in task.validation]
    always_twelve = targets.count(" twelve") / len(targets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start, runs = time.perf_counter(), []
    for seed in args.seeds:
        runs.append(one_seed(seed, args.steps, base, tokenizer, task))
        write(args, argv, runs, base_score, always_twelve, start)  # after every seed
        accuracy = {k: round(v["accuracy"], 3) for k, v in runs[-1]["models"].items()}
        print(f"seed {seed}: {accuracy} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"{len(runs)} seeds in {time.perf_counter() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
