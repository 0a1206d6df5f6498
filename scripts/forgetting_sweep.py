"""Learning against forgetting, and LoRA+, over seeds: the grids behind chapter 09 (too long for CI).

For each fine-tune and seed: train the bundled base model on the `largest` task for a fixed number of steps, then
record its task accuracy and the rise of its loss on held-out King James verses (`minilora.lab.forgetting_run`).

    python scripts/forgetting_sweep.py                       # both parts -> book/results/{forgetting,loraplus}.json
    python scripts/forgetting_sweep.py --part loraplus       # one part
    python scripts/forgetting_sweep.py --dry-run --out /tmp/x   # two tiny runs per part, seconds
    python scripts/forgetting_sweep.py --part forgetting --configs 0 --tag full   # one fine-tune, own file

Parts:
  forgetting  full fine-tuning (lr 1e-4 and 1e-3), LoRA on c_attn (r = 2, 8, 32 at lr 3e-3), LoRA on every linear
              layer (r = 8, lr 1e-3 and 3e-3); 300 steps (at 150 every LoRA run still answered "twelve" to everything)
  loraplus    LoRA on every linear layer, r = 8, A's learning rate fixed, B's λ times larger, λ in {1, 4, 16}

One thread (torch.set_num_threads(1)), so that runs on a shared machine do not fight over cores; a progress bar per
part. The JSON records every run and the provenance (processor, versions, seeds, settings, date, command, wall and
CPU seconds of the process so far; each row has its own `seconds` and `cpu_seconds`).

The committed results of chapter 09 came from these commands (two processes at a time, each under `nice -n 10`):

    python scripts/forgetting_sweep.py --part forgetting --configs 3 --steps 60 --tag live   # the page's live slice
    python scripts/forgetting_sweep.py --part forgetting --configs 1,3,5,2 --tag core
    python scripts/forgetting_sweep.py --part loraplus
    python scripts/forgetting_sweep.py --part forgetting --configs 6 --tag all_high
    python scripts/forgetting_sweep.py --part forgetting --configs 0 --tag full_low   # stopped after seeds 0 and 1
    python scripts/forgetting_sweep.py --part forgetting --configs 0 --seeds 2 --tag full_low_seed2   # in parallel
    python scripts/forgetting_sweep.py --part forgetting --configs 4 --tag r32   # later, alone

The chapter reads every
book/results/forgetting_*.json but the live one as one grid, and loraplus.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minilora import lab  # noqa: E402
from minilora.lab.forgetting import ALL_LINEAR, ATTENTION, FineTune, forgetting_run  # noqa: E402

TASK, STEPS, BATCH = "largest", 300, 16
SEEDS = (0, 1, 2)
FORGETTING = [
    FineTune("full", lr=1e-4), FineTune("full", lr=1e-3),
    FineTune("lora", r=2, targets=ATTENTION, lr=3e-3), FineTune("lora", r=8, targets=ATTENTION, lr=3e-3),
    FineTune("lora", r=32, targets=ATTENTION, lr=3e-3),
    FineTune("lora", r=8, targets=ALL_LINEAR, lr=1e-3), FineTune("lora", r=8, targets=ALL_LINEAR, lr=3e-3),
]
START = time.perf_counter()
LORAPLUS_RATIOS = (1.0, 4.0, 16.0)
LORAPLUS_LR = 3e-4


def loraplus_specs(ratios=LORAPLUS_RATIOS):
    return [FineTune("lora", r=8, targets=ALL_LINEAR, lr=LORAPLUS_LR, loraplus_ratio=lam) for lam in ratios]


def provenance(args, seeds, steps, verses) -> dict:
    import peft
    import transformers

    from minilora.lab.timing import cpu_model

    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "python": platform.python_version(), "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
        "base_model": os.environ.get("MINILORA_BASE") or "minilora-kjv-gpt2",
        "task": TASK, "steps": steps, "batch_size": BATCH, "seeds": list(seeds), "heldout_verses": verses,
        "dry_run": args.dry_run,
        "wall_seconds": time.perf_counter() - START, "cpu_seconds": time.process_time(),  # so far, this process
    }


def run_part(name, specs, seeds, steps, verses, base, before, save=None) -> list[dict]:
    rows = []
    jobs = [(spec, seed) for spec in specs for seed in seeds]
    for spec, seed in tqdm(jobs, desc=name):
        start, cpu = time.perf_counter(), time.process_time()
        row = forgetting_run(spec, seed, task=TASK, steps=steps, batch_size=BATCH, verses=verses, base=base,
                             corpus_before=before)
        row["seconds"], row["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
        rows.append(row)
        if save is not None:
            save(rows)
        tqdm.write(f"{row['label']:>22} lr {spec.lr:g} seed {seed}: accuracy {row['accuracy']:.3f}, "
                   f"corpus loss +{row['corpus_loss_rise']:.3f} ({row['seconds']:.0f} s)")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("forgetting", "loraplus", "all"), default="all")
    parser.add_argument("--out", type=Path, default=ROOT / "book" / "results", help="folder for the JSON files")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--configs", help="comma-separated indices into the part's list (default: all of them)")
    parser.add_argument("--tag", help="write <part>_<tag>.json (to run slices of a part in parallel processes)")
    parser.add_argument("--dry-run", action="store_true", help="2 steps, 1 seed, 2 fine-tunes per part, 20 verses")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    steps, verses, forgetting, plus = args.steps, lab.heldout_verses(), FORGETTING, loraplus_specs()
    if args.dry_run:
        steps, seeds, verses, forgetting, plus = 2, seeds[:1], verses[:20], [FORGETTING[0], FORGETTING[3]], plus[:2]
    args.out.mkdir(parents=True, exist_ok=True)
    base = lab.load_base()
    before = lab.corpus_loss(*base, verses)
    parts = {"forgetting": forgetting, "loraplus": plus}
    if args.configs:
        indices = [int(i) for i in args.configs.split(",")]
        parts = {name: [specs[i] for i in indices if i < len(specs)] for name, specs in parts.items()}
    for name in ("forgetting", "loraplus") if args.part == "all" else (args.part,):
        path = args.out / (f"{name}_{args.tag}.json" if args.tag else f"{name}.json")

        def save(rows, path=path):  # after every run, so that a stopped grid keeps what it finished
            result = {"provenance": provenance(args, seeds, steps, len(verses)), "corpus_before": before,
                      "rows": rows}
            path.write_text(json.dumps(result, indent=1) + "\n")

        run_part(name, parts[name], seeds, steps, verses, base, before, save)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
