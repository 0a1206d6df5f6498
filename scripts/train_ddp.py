"""Fine-tune the bundled base model on N processes with DistributedDataParallel: LoRA by default, or every weight.

    torchrun --standalone --nproc_per_node=N scripts/train_ddp.py --steps S --global-batch-size G --out DIR \\
        [--full] [--fsdp] [--seed K] [--task largest] [--lr LR] [--backend gloo|nccl]

The same command runs on a cluster: `torchrun --nnodes=M --nproc_per_node=N --rdzv-backend=c10d
--rdzv-endpoint=HOST:PORT ...` on every node (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK; this script reads them).

What each process does (Li et al. 2020, PyTorch DDP):
- it loads the same base model and, with the same seed, injects the same LoRA factors (DDP also broadcasts rank
  0's parameters and buffers when it wraps the model, so they start equal anyway);
- every step it draws the global batch of G rows exactly as `lab.train` draws a batch of G rows with the same seed
  (one generator, seeded the same on every process) and keeps rows rank × G/N to (rank + 1) × G/N;
- it backpropagates N × (its summed token loss) / (target tokens of the global batch), so that DDP's average of the
  N gradients is the gradient of the global token-mean loss: the run matches a 1-process run up to fp32 rounding
  (the sums are added in another order);
- DDP all-reduces the gradients bucket by bucket while backward runs; a communication hook
  (`minilora.lab.distributed.ByteCountingAllReduce`) counts each bucket's bytes, then does the default all-reduce.

`find_unused_parameters` stays False. DDP buckets only parameters with `requires_grad`, so the frozen base weights
(requires_grad False after `minilora.inject`) are not in any bucket and DDP never waits for their gradients. Every
trainable parameter (each lora_A and lora_B, or every weight with --full) is used in every forward pass, so each
bucket fills in every backward pass and no parameter needs the extra graph traversal that flag would pay for.

With --fsdp the model is sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`, Zhao et al. 2023) instead: each
GPT-2 block, then the whole model, so each process stores 1/N of every weight, frozen base included. Before a block
runs forward (and again in backward) its weights are all-gathered, and gradients are reduce-scattered afterwards;
`ByteCountingFSDP` counts both (run.json's fsdp_allgather_bytes_per_step and fsdp_reducescatter_bytes_per_step).

Rank 0 alone writes DIR: the adapter in PEFT's format (`minilora.save_adapter`), or the full model with --full
(`save_pretrained`), and run.json (world_size, global_batch_size, steps, trainable_params, allreduce_bytes_per_step,
losses, backend, seconds, versions, ...). It writes into a temporary folder next to DIR and renames it to DIR at the
end, so DIR either holds a whole run or nothing.

Bad launches stop before any work, with a message, on every process alike: a global batch that does not split into
WORLD_SIZE equal slices, an --out that already holds files, a backend that this torch build or machine lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

DEFAULT_LR = {"lora": 3e-3, "full": 1e-3}  # lab.train's advice: full fine-tuning wants a smaller step


class LaunchError(Exception):
    """A launch that cannot run as asked; its message says what to change."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--global-batch-size", type=int, required=True,
                        help="rows per step, all processes together (each takes G / WORLD_SIZE)")
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder for the adapter and run.json")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--seed", type=int, default=None, help="default: lab.seeds()[0]")
    parser.add_argument("--task", default="largest", help="a lab task (lab.TASKS)")
    parser.add_argument("--lr", type=float, default=None, help="AdamW's learning rate (default 3e-3 LoRA, 1e-3 full)")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=8, help="LoRA alpha")
    parser.add_argument("--targets", nargs="+", default=["c_attn"], help="LoRA target modules")
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                        help="default: nccl when CUDA is available, else gloo")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.global_batch_size < 1:
        parser.error("--steps and --global-batch-size must be positive integers")
    return args


def choose_backend(requested: str | None) -> str:
    backend = requested or ("nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_available() or not dist.is_backend_available(backend):
        raise LaunchError(f"backend {backend!r} is not available in this torch build ({torch.__version__}); "
                          f"use --backend gloo on CPU, or install a CUDA build of torch for nccl")
    if backend == "nccl" and not torch.cuda.is_available():
        raise LaunchError("backend 'nccl' needs CUDA GPUs and none is visible here; use --backend gloo on CPU")
    return backend


def check_launch(args, world_size: int) -> str:
    """Raise LaunchError for a launch that cannot run; return the backend. Changes nothing on disk."""
    if args.global_batch_size % world_size:
        raise LaunchError(f"--global-batch-size {args.global_batch_size} does not split into {world_size} equal "
                          f"slices (WORLD_SIZE={world_size}); use a multiple of {world_size}")
    out = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LaunchError(f"--out {str(out)!r} already holds "
                          f"{'a file' if not out.is_dir() else 'files (another run?)'}; "
                          f"choose a new folder or remove that one")
    from minilora.lab import TASKS
    if args.task not in TASKS:
        raise LaunchError(f"--task {args.task!r} is not a lab task; choose one of {', '.join(TASKS)}")
    return choose_backend(args.backend)


def build_model(args):
    import minilora
    from minilora import lab

    model, tokenizer = lab.load_base()
    if not args.full:
        minilora.inject(model, args.targets, r=args.r, alpha=args.alpha)
    return model, tokenizer


def train(args, rank: int, world_size: int, backend: str, device: torch.device):
    from torch.nn.parallel import DistributedDataParallel as DDP

    import minilora
    from minilora import lab
    from minilora.lab import distributed as ld
    from minilora.lab.training import _encode

    lab.set_seed(args.seed)  # the same LoRA initialisation on every process
    model, tokenizer = build_model(args)
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if args.fsdp:
        ddp, counter = shard(model, device, world_size), ld.ByteCountingFSDP()
        for module in [*model.transformer.h, model]:
            counter.attach(module)
    else:
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        counter = ld.ByteCountingAllReduce()
        ddp.register_comm_hook(counter, ld.ByteCountingAllReduce.hook)
    optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad],
                                  lr=args.lr or DEFAULT_LR["full" if args.full else "lora"])
    encoded = _encode(tokenizer, lab.get_task(args.task).train)
    generator = torch.Generator().manual_seed(args.seed)
    losses = []
    ddp.train()
    start = time.perf_counter()
    for _ in range(args.steps):
        batch = ld.global_batch(encoded, args.global_batch_size, generator, tokenizer.pad_token_id)
        global_tokens = int((batch[2][:, 1:] != -100).sum())  # the labels the loss counts (shifted by one)
        ids, mask, labels = (t.to(device) for t in ld.local_rows(batch, rank, world_size))
        loss, share = ld.target_loss_share(ddp, ids, mask, labels, global_tokens, world_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP's hooks all-reduce the gradient buckets here
        optimizer.step()
        counter.end_step()
        dist.all_reduce(share)  # 4 bytes more per step, for the log only (not a gradient, not counted)
        losses.append(share.item())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return model, tokenizer, trainable, counter, losses, seconds


def shard(model, device, world_size):
    """FSDP2: shard every GPT-2 block, then the rest (embeddings, final norm), over all processes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def unsharded_copy(args, model):
    """A plain (unsharded) copy of an FSDP model with its trained weights; every process must call it (all-gathers)."""
    full = {name: tensor.full_tensor().cpu() if hasattr(tensor, "full_tensor") else tensor.cpu()
            for name, tensor in model.state_dict().items()}
    copy, _ = build_model(args)
    copy.load_state_dict(full)
    return copy


def versions():
    import safetensors
    import transformers

    import minilora
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "minilora": minilora.__version__}


def write_outputs(args, model, record):
    """Write the weights and run.json into a temporary sibling of --out, then rename it to --out."""
    import minilora

    out = args.out.resolve()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        if args.full:
            model.save_pretrained(tmp)
        else:
            minilora.save_adapter(model, tmp, base_model_name_or_path="minilora-kjv-gpt2")
        (tmp / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked at launch): rename() replaces only a missing folder portably
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def steady_or_all(per_step):
    """The bytes of every step when they are all equal (they are, after DDP's first step), else the list."""
    return per_step[0] if len(set(per_step)) == 1 else per_step


def main(argv=None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.set_num_threads(1)  # one core per process: N processes share the machine's cores
    if args.seed is None:
        from minilora import lab
        args.seed = lab.seeds()[0]
    try:
        backend = check_launch(args, world_size)
    except LaunchError as err:
        if rank == 0:
            print(f"train_ddp.py: error: {err}", file=sys.stderr)
        return 2
    if "MASTER_ADDR" not in os.environ:  # a plain `python train_ddp.py`: a world of one
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29517"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        model, tokenizer, trainable, counter, losses, seconds = train(args, rank, world_size, backend, device)
        if args.fsdp:
            model = unsharded_copy(args, model)
            traffic = {"allreduce_bytes_per_step": 0,
                       "fsdp_allgather_bytes_per_step": steady_or_all(counter.gathered_per_step),
                       "fsdp_reducescatter_bytes_per_step": steady_or_all(counter.scattered_per_step)}
        else:
            traffic = {"allreduce_bytes_per_step": steady_or_all(counter.per_step),
                       "allreduce_buckets_per_step": counter.buckets_per_step}
        record = {
            "world_size": world_size, "global_batch_size": args.global_batch_size,
            "per_process_batch_size": args.global_batch_size // world_size, "steps": args.steps,
            "mode": "full" if args.full else "lora", "sharding": "fsdp2" if args.fsdp else "ddp", "task": args.task, "seed": args.seed,
            "lr": args.lr or DEFAULT_LR["full" if args.full else "lora"],
            "lora": None if args.full else {"r": args.r, "alpha": args.alpha, "targets": args.targets},
            "trainable_params": trainable,
            **traffic,
            "losses": losses, "backend": backend, "seconds": seconds, "versions": versions(),
            "processor": platform.processor() or platform.machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "torchrun scripts/train_ddp.py " + " ".join(sys.argv[1:]),
        }
        if rank == 0:
            write_outputs(args, model, record)
        dist.barrier()  # no process exits (and tears down the group) before rank 0 has written
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
