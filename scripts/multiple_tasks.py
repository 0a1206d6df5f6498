"""Chapter 04's training over seeds: one LoRA adapter per task (`largest`, `smallest`) on one frozen base model.

The chapter trains one illustrative run live (the first of `lab.seeds()`) and plots the JSON this writes for the
spread over seeds. For every seed it follows the chapter's steps exactly (`lab.set_seed(seed)` before each
`minilora.inject`, `lab.train(..., seed=seed)`, the `largest` adapter first) and records:

- the per-step training losses of both adapters;
- the exact-match accuracy of each adapter on each task's validation split (and of the base model);
- what the `smallest` adapter gets wrong: hits per right answer, and among the wrong answers how many are not in
  the prompt, and how many are smaller than the right answer (chapter 04's explanation of its `' three'` answers);
- whether the merged model answers like the unmerged one, on the whole validation split;
- the two blends of the chapter's first exercise, W0 + ΔW_largest + ΔW_smallest and the average: their accuracy
  on both tasks and their most common answer.

    python scripts/multiple_tasks.py                  # the committed run -> book/results/multiple_tasks.json
    python scripts/multiple_tasks.py --dry-run --out /tmp/x.json   # 2 steps, 1 seed, in seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `import minilora` finds this checkout's package

import minilora  # noqa: E402
from minilora import lab  # noqa: E402
from minilora.lab.timing import cpu_model  # noqa: E402

LORA = {"target_modules": ["c_attn"], "r": 16, "alpha": 16}  # as in the chapter
TASKS = ("largest", "smallest")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: lab.seeds()")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--dry-run", action="store_true", help="2 steps, the first seed only")
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "results" / "multiple_tasks.json")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.steps, args.seeds = 2, args.seeds or [lab.seeds()[0]]
    args.seeds = list(args.seeds or lab.seeds())
    return args


def mistakes(model, tokenizer, task):
    """What an adapter answers on `task`'s validation split, sorted by the right answer."""
    value = {word: i for i, word in enumerate(lab.tasks.NUMBERS)}
    said = [s.strip() for s in lab.predict(model, tokenizer, [e.prompt for e in task.validation])]
    right = [e.target.strip() for e in task.validation]
    wrong = [(e.prompt.split(), r, s) for e, r, s in zip(task.validation, right, said) if s != r]
    return {
        "hits_by_answer": {a: [sum(r == s == a for r, s in zip(right, said)), right.count(a)]
                           for a in sorted(set(right), key=value.get)},
        "wrong": len(wrong),
        "wrong_not_in_prompt": sum(s not in words for words, _, s in wrong),
        "wrong_smaller": sum(s in value and value[s] < value[r] for _, r, s in wrong),
        "wrong_answers": dict(Counter(s for _, _, s in wrong).most_common()),
    }


def blend(directories, weights):
    """A fresh base model with sum_t weights[t] * ΔW_t merged into it (the chapter's first exercise)."""
    model, _ = lab.load_base()
    for name, weight in weights.items():
        minilora.load_adapter(model, directories[name])
        for module in model.modules():
            if isinstance(module, minilora.LoRALinear):
                module.alpha *= weight  # ΔW = (alpha / r) B A
        minilora.unload(model, merge=True)
    return model


def one_seed(seed, steps, tasks, root):
    model, tokenizer = lab.load_base()
    dirs = {name: os.path.join(root, f"{name}-seed{seed}") for name in TASKS}
    losses, seconds = {}, {}
    for name in TASKS:
        if name != TASKS[0]:
            minilora.unload(model, merge=False)
        lab.set_seed(seed)
        minilora.inject(model, **LORA)
        start = time.perf_counter()
        losses[name] = lab.train(model, tokenizer, tasks[name], steps=steps, seed=seed, progress=False)
        seconds[name] = time.perf_counter() - start
        minilora.save_adapter(model, dirs[name])
    accuracy, merged_agrees = {}, {}
    prompts = [e.prompt for e in tasks[TASKS[0]].validation]
    for adapter in TASKS:
        minilora.load_adapter(model, dirs[adapter])
        accuracy[adapter] = {name: lab.evaluate(model, tokenizer, task) for name, task in tasks.items()}
        unmerged = lab.predict(model, tokenizer, prompts)
        minilora.merge(model)
        merged = lab.predict(model, tokenizer, prompts)
        minilora.unmerge(model)
        merged_agrees[adapter] = sum(a == b for a, b in zip(unmerged, merged)) / len(prompts)
    minilora.load_adapter(model, dirs["smallest"])
    smallest_mistakes = mistakes(model, tokenizer, tasks["smallest"])
    minilora.load_adapter(model, dirs["largest"])
    largest_mistakes = mistakes(model, tokenizer, tasks["largest"])
    blends = {}
    for label, weights in {"sum": {"largest": 1, "smallest": 1}, "average": {"largest": 0.5, "smallest": 0.5}}.items():
        blended = blend(dirs, weights)
        answers = Counter(lab.predict(blended, tokenizer, prompts))
        word, count = answers.most_common(1)[0]
        blends[label] = {"accuracy": {name: lab.evaluate(blended, tokenizer, task) for name, task in tasks.items()},
                         "top_answer": word, "top_answer_share": count / len(prompts)}
    return {
        "seed": seed,
        "losses": {name: [round(v, 4) for v in h] for name, h in losses.items()},
        "train_seconds": seconds,
        "accuracy": accuracy,
        "merged_agrees": merged_agrees,
        "mistakes": {"smallest": smallest_mistakes, "largest": largest_mistakes},
        "blends": blends,
    }


def write(args, argv, runs, base_accuracy, start):
    import transformers

    result = {
        "what": "chapter 04: one LoRA adapter per task on one base model, per seed",
        "provenance": {
            "processor": cpu_model(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python " + shlex.join([os.path.relpath(__file__, ROOT),
                                               *(sys.argv[1:] if argv is None else argv)]),
            "wall_seconds": time.perf_counter() - start,
            "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        },
        "settings": {"lora": LORA, "tasks": list(TASKS), "seeds": args.seeds, "steps": args.steps,
                     "batch_size": 16, "lr": 3e-3, "dry_run": args.dry_run,
                     "base_model": os.environ.get("MINILORA_BASE") or "bundled"},
        "base_accuracy": base_accuracy,
        "complete": len(runs) == len(args.seeds),
        "runs": runs,
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = {name: lab.get_task(name) for name in TASKS}
    model, tokenizer = lab.load_base()
    base_accuracy = {name: lab.evaluate(model, tokenizer, task) for name, task in tasks.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start, runs = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="minilora-multiple-tasks-") as root:
        for seed in args.seeds:
            runs.append(one_seed(seed, args.steps, tasks, root))
            write(args, argv, runs, base_accuracy, start)  # after every seed: an interrupted run keeps what it did
            print(f"seed {seed}: {runs[-1]['accuracy']} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"{len(runs)} seeds in {time.perf_counter() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
