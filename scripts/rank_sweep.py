"""Separate the rank r from the step size: sweep r x learning rate x alpha convention x seeds on `largest`.

Chapter 05 of the book plots the JSON this writes. Every grid point trains a fresh rank-r LoRA adapter on
``c_attn`` of the bundled base model with ``lab.train`` and records:

- the train loss: its final value (mean of the last 10 steps) and the curve as means of blocks of 10 steps;
- the validation loss (nats per token) and exact-match accuracy;
- the answers' most common word and its share; a run is *stalled* when one word is at least ``STALL_SHARE`` of its
  answers (on ``largest`` that word is ``twelve``, right about a third of the time: a constant answer, not a rule);
- the first-step size of chapter 01's table, on the real model: the relative change of each adapted layer's
  output, ``||x ΔW|| / ||base(x)||`` on a fixed batch of validation inputs, after one Adam step from the LoRA
  initialisation (B = 0), median over layers. After one step Adam has moved every entry of B by about the
  learning rate, so this grows with ``lr · scaling``: the prediction of which runs take too-large steps.

The three alpha conventions, with ``scaling`` the factor in ``h = W0 x + scaling · B A x``, all equal to 1 at
``r = 8`` so that one learning rate means the same step there and they differ only in how scaling moves with r:

- ``fixed``: alpha = 8, scaling 8 / r (the paper's and PEFT's default: change r, keep alpha);
- ``alpha=r``: alpha = r, scaling 1;
- ``rslora``: ``use_rslora=True`` with alpha = sqrt(8), scaling sqrt(8 / r) (Kalajdzievski 2023).

At the rank where all three give the same scaling (r = 8) they train the same model, so the grid runs it once and
the record lists every convention it stands for (``conventions``).

    python scripts/rank_sweep.py                      # the full grid (three conventions, five ranks)
    python scripts/rank_sweep.py --dry-run --out /tmp/x.json   # a tiny grid in seconds

The committed book/results/rank_sweep.json is the grid at ranks 1, 8 and 64 (``--ranks 1 8 64``, 63 runs, about
25 single-core minutes): the alpha = r part first (27 runs, itself merged from four parts), then the fixed and
rsLoRA parts at ranks 1 and 64 (``--conventions fixed --ranks 1 64`` and ``--conventions rslora --ranks 1 64``),
merged; its provenance gives the commands.

Two processes at once, one seed each, then one file (``--resume`` continues an interrupted part):

    python scripts/rank_sweep.py --seeds 0 --out /tmp/part0.json &
    python scripts/rank_sweep.py --seeds 1 2 --out /tmp/part12.json
    python scripts/rank_sweep.py --merge /tmp/part0.json /tmp/part12.json   # -> book/results/rank_sweep.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import itertools
import json
import math
import os
import platform
import shlex
import statistics
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

TARGETS = ["c_attn"]
STALL_SHARE = 0.95  # a run that gives one answer to 95% of the prompts or more has stalled
CONVENTIONS = {  # name -> (alpha for rank r, use_rslora)
    "fixed": (lambda r: 8, False),
    "alpha=r": (lambda r: r, False),
    "rslora": (lambda r: math.sqrt(8), True),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 4, 8, 16, 64])
    parser.add_argument("--lrs", nargs="+", type=float, default=[3e-3, 1e-2, 3e-2])
    parser.add_argument("--conventions", nargs="+", choices=list(CONVENTIONS), default=list(CONVENTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: lab.seeds()")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--validation", type=int, default=100, help="evaluate on the first N validation examples")
    parser.add_argument("--dry-run", action="store_true", help="a tiny grid (3 ranks, 1 lr, 2 steps) in seconds")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --out (same settings) and run only the missing grid points")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="PART",
                        help="merge the JSON of parts run with the same settings (other seeds, lrs, ranks or "
                             "conventions) into --out, and run nothing")
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "results" / "rank_sweep.json")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.ranks, args.lrs, args.steps, args.validation = [1, 4, 8], [1e-2], 2, 8
        args.conventions = ["fixed", "rslora"]
        args.seeds = args.seeds or [lab.seeds()[0]]
    args.seeds = list(args.seeds or lab.seeds())
    return args


def scaling_of(r, convention):
    alpha_of, rslora = CONVENTIONS[convention]
    return alpha_of(r), rslora


def scaling(r, convention):
    """The factor of B A in the forward pass: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    alpha, rslora = scaling_of(r, convention)
    return alpha / (math.sqrt(r) if rslora else r)


def same_model(r, conventions):
    """The conventions that give rank r the scaling of conventions[0] (up to rounding): they train the same model."""
    return [c for c in conventions if math.isclose(scaling(r, c), scaling(r, conventions[0]), rel_tol=1e-12)]


def grid_of(ranks, lrs, conventions, seeds):
    """(r, lr, convention, seed) for every run, seeds outermost (an interrupted sweep has whole grids of the first
    seeds); a rank at which every convention gives the same scaling runs once, under the first convention."""
    grid = []
    for seed, lr, c, r in itertools.product(seeds, lrs, conventions, ranks):
        shared = same_model(r, conventions)
        if len(shared) == len(conventions) and c != conventions[0]:
            continue
        grid.append((r, lr, c, seed))
    return grid


def key(run):
    return run["r"], run["lr"], run["convention"], run["seed"]


@functools.lru_cache(maxsize=1)
def base():
    return lab.load_base()


def adapted(r, convention, seed):
    """A fresh copy of the base model with rank-r LoRA on TARGETS; the seed fixes the initial A."""
    model, tokenizer = base()
    model = copy.deepcopy(model)
    alpha, rslora = scaling_of(r, convention)
    lab.set_seed(seed)
    minilora.inject(model, TARGETS, r=r, alpha=alpha, use_rslora=rslora)
    return model, tokenizer


def relative_output_change(model, tokenizer, prompts):
    """Median over adapted layers of ||x ΔW|| / ||base(x)|| on the inputs the prompts give each layer."""
    layers = [m for m in model.modules() if isinstance(m, minilora.LoRALinear)]
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].detach())) for m in layers]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        model(**enc)
        ratios = []
        keep = enc["attention_mask"].bool()
        for m in layers:
            x = inputs[m][keep]  # (tokens, in)
            delta = m.delta_weight()  # Conv1D layout (in, out), or (out, in) for nn.Linear
            change = x @ delta if m.fan_in_fan_out else x @ delta.T
            ratios.append((change.norm() / m.base_layer(x).norm()).item())
    for h in hooks:
        h.remove()
    return statistics.median(ratios)


def one_run(task, r, lr, convention, seed, steps, batch_size, probe, validation):
    cpu_start = time.process_time()
    alpha, rslora = scaling_of(r, convention)
    # the first step alone: the same seed gives the same initial A and the same first batch as the full run
    model, tokenizer = adapted(r, convention, seed)
    lab.train(model, tokenizer, task, steps=1, batch_size=batch_size, lr=lr, seed=seed, progress=False)
    first_step = relative_output_change(model, tokenizer, probe)
    model, tokenizer = adapted(r, convention, seed)
    start = time.perf_counter()
    history = lab.train(model, tokenizer, task, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=False)
    train_s = time.perf_counter() - start
    examples = task.validation[:validation]
    targets = [e.target.strip() for e in examples]
    answers = [a.strip() for a in lab.predict(model, tokenizer, [e.prompt for e in examples], 2)]
    word, count = Counter(answers).most_common(1)[0]
    others = [k for k, t in enumerate(targets) if t != "twelve"]
    return {
        "r": r, "lr": lr, "convention": convention, "seed": seed, "alpha": alpha, "use_rslora": rslora,
        "scaling": alpha / (math.sqrt(r) if rslora else r),
        # every convention (swept or not) that trains this same model: all three at r = 8
        "conventions": [c for c in CONVENTIONS if math.isclose(scaling(r, c), scaling(r, convention), rel_tol=1e-12)],
        "trainable": minilora.count_parameters(model)[0],
        "first_step_change": first_step,
        "final_change": relative_output_change(model, tokenizer, probe),
        "train_loss_final": statistics.fmean(history[-10:]),
        "train_loss_blocks": [round(statistics.fmean(history[i:i + 10]), 4) for i in range(0, len(history), 10)],
        "val_loss": lab.validation_loss(model, tokenizer, examples),
        "accuracy": lab.exact_match(answers, targets),
        "accuracy_not_twelve": lab.exact_match([answers[k] for k in others], [targets[k] for k in others]),
        "top_answer": word, "top_answer_share": count / len(answers),
        "stalled": count / len(answers) >= STALL_SHARE,
        "train_seconds": train_s,
        "cpu_seconds": time.process_time() - cpu_start,
    }


def main(argv=None):
    from tqdm import tqdm

    args = parse_args(argv)
    if args.merge:
        result = merge([json.loads(Path(part).read_text()) for part in args.merge], [str(p) for p in args.merge])
        save(result, args.out)
        print(f"{len(result['runs'])} runs of {result['grid_points']} from {len(args.merge)} parts -> {args.out}")
        return
    torch.set_num_threads(args.threads)
    task = lab.get_task("largest")
    probe = [e.prompt for e in task.validation[: min(32, args.validation or 32)]]
    grid = grid_of(args.ranks, args.lrs, args.conventions, args.seeds)
    runs, previous_wall = [], 0.0
    if args.resume and args.out.exists():
        old = json.loads(args.out.read_text())
        if old["settings"] != settings_of(args, task):
            raise SystemExit(f"--resume: {args.out} was run with other settings; give another --out, or drop "
                             f"--resume to start it again.\n  its settings: {old['settings']}\n  "
                             f"these: {settings_of(args, task)}")
        runs, previous_wall = old["runs"], old["provenance"]["wall_seconds"]
    done = {key(run) for run in runs}
    start = time.perf_counter() - previous_wall
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for r, lr, convention, seed in tqdm([g for g in grid if g not in done], desc="rank sweep"):
        runs.append(one_run(task, r, lr, convention, seed, args.steps, args.batch_size, probe, args.validation))
        write(args, argv, task, grid, runs, start)  # after every run, so an interrupted sweep keeps what it did
    print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s -> {args.out}")


def settings_of(args, task):
    return {
        "task": task.name, "targets": TARGETS, "ranks": args.ranks, "lrs": args.lrs,
        "conventions": args.conventions, "seeds": args.seeds, "steps": args.steps,
        "batch_size": args.batch_size, "stall_share": STALL_SHARE, "dry_run": args.dry_run,
        "base_model": os.environ.get("MINILORA_BASE") or "bundled",
        "validation_examples": len(task.validation[: args.validation]),
        "always_twelve": sum(e.target == " twelve" for e in task.validation[: args.validation])
        / len(task.validation[: args.validation]),
    }


PARTITIONED = ("ranks", "lrs", "conventions", "seeds")  # settings in which parts may differ


def merge(parts, names):
    """One result from parts run with the same settings but other grid points; raises ValueError if they differ in
    anything else, overlap, or leave the union grid incomplete where a part claims to be complete."""
    if not parts:
        raise ValueError("--merge needs at least one part")
    fixed = [{k: v for k, v in p["settings"].items() if k not in PARTITIONED} for p in parts]
    for name, f in zip(names, fixed):
        if f != fixed[0]:
            raise ValueError(f"{name} was run with other settings than {names[0]}: {f} != {fixed[0]}")
    settings = dict(parts[0]["settings"])
    for k in PARTITIONED:  # the union: numbers sorted, conventions in the order the parts give
        union = list(dict.fromkeys(v for p in parts for v in p["settings"][k]))
        settings[k] = union if k == "conventions" else sorted(union)
    runs, seen = [], set()
    for name, p in zip(names, parts):
        for run in p["runs"]:
            if key(run) in seen:
                raise ValueError(f"{name} repeats the run {key(run)} of another part")
            seen.add(key(run))
            runs.append(run)
    grid = grid_of(settings["ranks"], settings["lrs"], settings["conventions"], settings["seeds"])
    if not seen <= set(grid):
        raise ValueError(f"runs outside the merged grid: {sorted(seen - set(grid))}")
    provenance = dict(parts[0]["provenance"])
    provenance.update({
        "date": max(p["provenance"]["date"] for p in parts),
        "wall_seconds": max(p["provenance"]["wall_seconds"] for p in parts),  # the parts ran at the same time
        "cpu_seconds": sum(run.get("cpu_seconds", 0.0) for run in runs),
        "command": " && ".join(p["provenance"]["command"] for p in parts)
        + " && python scripts/rank_sweep.py --merge " + " ".join(Path(n).name for n in names),
        "parts": [p["provenance"] for p in parts],
    })
    return {"what": parts[0]["what"], "provenance": provenance, "settings": settings,
            "complete": seen == set(grid), "grid_points": len(grid), "runs": runs}


def save(result, out):
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)


def write(args, argv, task, grid, runs, start):
    import transformers

    result = {
        "what": "rank r x learning rate x alpha convention x seed, LoRA on c_attn, task 'largest'",
        "provenance": {
            "processor": cpu_model(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python " + shlex.join([os.path.relpath(__file__, ROOT), *(sys.argv[1:] if argv is None
                                                                                  else argv)]),
            "wall_seconds": time.perf_counter() - start,
            "cpu_seconds": sum(run.get("cpu_seconds", 0.0) for run in runs),
            "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "settings": settings_of(args, task),
        "complete": {key(run) for run in runs} == set(grid),
        "grid_points": len(grid),
        "runs": runs,
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
