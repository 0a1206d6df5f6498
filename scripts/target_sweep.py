"""Which weight matrices to adapt, at one fixed budget of trainable parameters (the LoRA paper's Table 5, our model).

Hu et al. 2021, Table 5: with 18M trainable parameters on GPT-3, adapting W_q and W_v at r = 4 beat W_q alone at
r = 8 and all four attention matrices at r = 2. Here every row trains (as nearly as whole ranks allow) the same
number of parameters as one attention matrix at rank ``--single-rank``:

    q, k, v         LoRA on one slice of GPT-2's fused c_attn (minilora.inject_sliced)
    o               the attention output projection, attn.c_proj
    q+v             two slices of c_attn (the paper's pick; loralib's enable_lora=[True, False, True])
    attention       q, k, v (three slices) and attn.c_proj: the four attention matrices, each its own rank r
    mlp             c_fc and mlp.c_proj
    all linear      the four attention matrices and the two MLP ones

A matrix of shape (in, out) costs r·(in + out) per rank; a row's rank is the whole number that brings its count
nearest the budget. For each row and task the learning rate is tuned on the first seed (the one with the lowest
validation loss wins), and every seed then trains at that rate. Each run reports exact-match accuracy and
validation loss on the task's validation split.

    python scripts/target_sweep.py --tasks largest --out book/results/target_sweep_largest.json
    python scripts/target_sweep.py --dry-run --out /tmp/x.json               # a tiny grid, seconds

The committed results are two such processes run side by side (one per task; ``--rows`` splits a task further),
one JSON file each, with the command that wrote it and its wall time. The file is rewritten after every row, with
``"complete": false`` until the last row has run.
It runs on one thread (torch.set_num_threads(1)), so its runs are comparable on a shared machine.
"""

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import minilora  # noqa: E402
from minilora import lab  # noqa: E402
from minilora.lab.timing import cpu_model  # noqa: E402

# name -> (parts of c_attn adapted as slices, the other module names adapted whole); parts: 0 = q, 1 = k, 2 = v.
ROWS = {
    "q": ((0,), ()),
    "k": ((1,), ()),
    "v": ((2,), ()),
    "o": ((), ("attn.c_proj",)),
    "q+v": ((0, 2), ()),
    "attention": ((0, 1, 2), ("attn.c_proj",)),
    "mlp": ((), ("c_fc", "mlp.c_proj")),
    "all linear": ((0, 1, 2), ("attn.c_proj", "c_fc", "mlp.c_proj")),
}


def adapt(model, row, r, alpha):
    """Put LoRA of rank r on the matrices of ``row`` (a key of ROWS); returns the model."""
    parts, whole = ROWS[row]
    if parts:
        n_out = model.config.n_embd * 3  # c_attn: q | k | v
        minilora.inject_sliced(model, ["c_attn"], minilora.fused_slices(n_out, 3, list(parts)), r, alpha)
    if whole:
        minilora.inject(model, list(whole), r, alpha)
    return model


def cost_per_rank(config, row):
    """Trainable parameters per unit of rank: Σ (in + out) over the row's matrices, times the number of blocks."""
    d, inner = config.n_embd, config.n_inner or 4 * config.n_embd
    shapes = {"attn.c_proj": (d, d), "c_fc": (d, inner), "mlp.c_proj": (inner, d)}
    parts, whole = ROWS[row]
    per_block = sum(d + d for _ in parts) + sum(sum(shapes[name]) for name in whole)
    return config.n_layer * per_block


def rank_for_budget(config, row, budget):
    """The whole rank (at least 1) whose parameter count is nearest ``budget``, and that count."""
    cost = cost_per_rank(config, row)
    r = max(1, round(budget / cost))
    return r, r * cost


def plan(config, single_rank):
    """One entry per row: its rank, its count, and the count's ratio to the budget."""
    budget = cost_per_rank(config, "q") * single_rank
    rows = {}
    for row in ROWS:
        r, count = rank_for_budget(config, row, budget)
        rows[row] = {"r": r, "trainable": count, "of_budget": count / budget}
    return budget, rows


def run_one(task, row, r, alpha, lr, seed, steps):
    model, tokenizer = lab.load_base()
    adapt(model, row, r, alpha)
    trainable, _ = minilora.count_parameters(model)
    history = lab.train(model, tokenizer, task, steps=steps, lr=lr, seed=seed, progress=False)
    return {"trainable": trainable, "accuracy": lab.evaluate(model, tokenizer, task),
            "validation_loss": lab.validation_loss(model, tokenizer, task), "final_train_loss": history[-1]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["largest", "antonyms"])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--single-rank", type=int, default=36,
                        help="the budget: the parameters of one attention matrix at this rank")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-2, 3e-2])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(lab.seeds()))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dry-run", action="store_true", help="2 rows, 1 task, 2 learning rates, 2 seeds, 2 steps")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.tasks, args.rows, args.lrs, args.seeds, args.steps = ["largest"], ["q", "q+v"], [1e-2, 3e-2], [0, 1], 2
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    from tqdm.auto import tqdm
    from transformers import __version__ as transformers_version

    config = lab.load_base()[0].config
    budget, rows = plan(config, args.single_rank)
    for row in args.rows:
        print(f"{row:>10}: r = {rows[row]['r']:2d}, {rows[row]['trainable']:,d} parameters "
              f"({rows[row]['of_budget']:.1%} of {budget:,d})")
    total = len(args.tasks) * len(args.rows) * (len(args.lrs) + len(args.seeds) - 1)
    bar = tqdm(total=total, desc="target sweep")
    results, started = [], time.time()
    for task_name in args.tasks:
        task = lab.get_task(task_name)
        for row in args.rows:
            r = rows[row]["r"]
            tuning = {}
            for lr in args.lrs:
                tuning[lr] = run_one(task, row, r, r, lr, args.seeds[0], args.steps)
                bar.update()
            best = min(args.lrs, key=lambda lr: tuning[lr]["validation_loss"])
            runs = {args.seeds[0]: tuning[best]}
            for seed in args.seeds[1:]:
                runs[seed] = run_one(task, row, r, r, best, seed, args.steps)
                bar.update()
            assert all(run["trainable"] == rows[row]["trainable"] for run in runs.values())
            results.append({
                "task": task_name, "row": row, "r": r, "trainable": rows[row]["trainable"], "best_lr": best,
                "tuning": [{"lr": lr, "seed": args.seeds[0], **tuning[lr]} for lr in args.lrs],
                "runs": [{"seed": seed, **run} for seed, run in runs.items()],
            })
            # after every row, so that an interrupted grid keeps what it has run
            record = _record(args, argv, config, budget, rows, results, started, transformers_version, complete=False)
            _write(args.out, record)
    bar.close()
    _write(args.out, _record(args, argv, config, budget, rows, results, started, transformers_version, complete=True))
    print(f"wrote {args.out} ({time.time() - started:.0f} s)")


def _write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def _record(args, argv, config, budget, rows, results, started, transformers_version, complete):
    """The JSON record: provenance, settings, the plan of every row, and the results so far."""
    return {
        "provenance": {
            "command": "python " + shlex.join(["scripts/target_sweep.py", *(sys.argv[1:] if argv is None else argv)]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers_version,
            "minilora": minilora.__version__, "base_model": config.name_or_path.rsplit("/", 1)[-1],
            "wall_seconds": round(time.time() - started, 1),
        },
        "settings": {
            "tasks": args.tasks, "rows": {row: {"c_attn_parts": list(ROWS[row][0]), "modules": list(ROWS[row][1])}
                                          for row in args.rows},
            "single_rank": args.single_rank, "budget": budget,
            "alpha": "r",  # scaling 1 in every row, so the learning rate alone sets the step size
            "lrs": args.lrs,
            "seeds": args.seeds, "lr_tuned_on_seed": args.seeds[0], "lr_chosen_by": "lowest validation loss",
            "steps": args.steps, "batch_size": 16, "optimizer": "AdamW, weight decay 0",
            "n_embd": config.n_embd, "n_layer": config.n_layer, "dry_run": args.dry_run,
        },
        "complete": complete,
        "plan": {row: rows[row] for row in args.rows},
        "results": results,
    }


if __name__ == "__main__":
    main()
