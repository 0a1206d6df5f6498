"""Data-parallel training helpers: one global batch cut into per-process slices, and a DDP hook that counts bytes.

Data parallelism (Li et al. 2020, PyTorch DDP): N processes hold the same model, each computes the gradient of its
G/N rows of a global batch of G rows, and an all-reduce averages the N gradients so every process takes the same
optimizer step. A ring all-reduce of a buffer of b bytes sends and receives 2 (N - 1) / N × b bytes per process
(a reduce-scatter, then an all-gather, each passing N - 1 chunks of b / N bytes around the ring).

`global_batch` draws the rows exactly as `lab.train` draws a batch of G rows with the same seed, pads them together,
and `local_rows` gives process `rank` its slice. `target_loss_share` scales each process's summed loss so that
DDP's average of the N gradients is the gradient of the global batch's token-mean loss, the loss a single process
would compute on all G rows (the processes' slices hold different numbers of target tokens, so averaging their
per-slice means would weight tokens unequally).

`ByteCountingAllReduce` is a DDP communication hook (`model.register_comm_hook(state, hook)`, see
`torch.distributed.algorithms.ddp_comm_hooks`): DDP hands it each gradient bucket, it adds the bucket's size in
bytes to a counter, then does what DDP does by default, divide by N and all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from .training import _batch, _target_loss


def global_batch(encoded, global_batch_size: int, generator: torch.Generator, pad_id: int):
    """input_ids, attention_mask and labels, each (G, T), of the next global batch: the rows `lab.train` draws."""
    idx = torch.randint(len(encoded), (global_batch_size,), generator=generator).tolist()
    return _batch([encoded[i] for i in idx], pad_id)


def local_rows(tensors, rank: int, world_size: int):
    """Rows rank × G/N to (rank + 1) × G/N of each (G, T) tensor: this process's slice of the global batch."""
    rows = tensors[0].shape[0]
    if rows % world_size:
        raise ValueError(f"a global batch of {rows} rows does not split into {world_size} equal slices")
    per = rows // world_size
    return tuple(t[rank * per : (rank + 1) * per] for t in tensors)


def target_loss_share(model, ids, mask, labels, global_tokens: int, world_size: int):
    """(loss to backpropagate, this slice's share of the global mean loss).

    With S_k the summed cross-entropy of slice k and T the target tokens of the whole global batch, the global loss
    is sum_k S_k / T. Process k backpropagates N S_k / T: DDP divides the sum of the N gradients by N, which leaves
    the gradient of sum_k S_k / T. The share S_k / T summed over processes (one all-reduce of a float) is the loss.
    """
    summed = _target_loss(model, ids, mask, labels, reduction="sum")
    share = summed / global_tokens
    return share * world_size, share.detach()


class ByteCountingAllReduce:
    """DDP communication hook state: counts the bytes of the gradient buckets each step all-reduces.

    `bytes_this_step` grows as DDP calls the hook, once per bucket; `end_step()` moves it to `per_step` (one entry
    per optimizer step) and resets it. The bucket is a flat buffer of the gradients of trainable parameters only:
    fp32 gradients give 4 bytes per trainable parameter.
    """

    def __init__(self, process_group=None):
        self.process_group = process_group
        self.bytes_this_step = 0
        self.buckets_this_step = 0
        self.per_step: list[int] = []
        self.buckets_per_step: list[int] = []

    @staticmethod
    def hook(state, bucket):
        """Count `bucket`'s bytes, then divide by N and all-reduce it (DDP's default); returns its future.

        (No type annotations: DDP checks them by identity, and this module's postponed annotations are strings.)"""
        buffer = bucket.buffer()
        state.bytes_this_step += buffer.numel() * buffer.element_size()
        state.buckets_this_step += 1
        return default_hooks.allreduce_hook(state.process_group, bucket)

    def end_step(self) -> None:
        self.per_step.append(self.bytes_this_step)
        self.buckets_per_step.append(self.buckets_this_step)
        self.bytes_this_step = self.buckets_this_step = 0


class ByteCountingFSDP:
    """Counts the bytes FSDP2 (`torch.distributed.fsdp.fully_shard`) moves: parameter all-gathers, gradient
    reduce-scatters.

    `attach(module)` replaces the all-gather and reduce-scatter of one `fully_shard`-ed module by the default ones
    plus a counter (`set_custom_all_gather`, `set_custom_reduce_scatter`); attach it to every sharded module. An
    all-gather is counted by its output (the whole unsharded parameters of the module), a reduce-scatter by its input
    (the whole gradient), so both compare with DDP's bucket bytes: each costs (N - 1) / N of them per process on a
    ring, half an all-reduce. `end_step()` records the step's totals.
    """

    def __init__(self):
        from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter

        counter = self
        self.gathered = self.scattered = 0
        self.gathered_per_step: list[int] = []
        self.scattered_per_step: list[int] = []

        class CountingAllGather(DefaultAllGather):
            def __call__(self, output_tensor, input_tensor, group, async_op=False):
                counter.gathered += output_tensor.numel() * output_tensor.element_size()
                return super().__call__(output_tensor, input_tensor, group, async_op)

        class CountingReduceScatter(DefaultReduceScatter):
            def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
                counter.scattered += input_tensor.numel() * input_tensor.element_size()
                return super().__call__(output_tensor, input_tensor, group, op, async_op)

        self._all_gather, self._reduce_scatter = CountingAllGather(), CountingReduceScatter()

    def attach(self, module) -> None:
        module.set_custom_all_gather(self._all_gather)
        module.set_custom_reduce_scatter(self._reduce_scatter)

    def end_step(self) -> None:
        self.gathered_per_step.append(self.gathered)
        self.scattered_per_step.append(self.scattered)
        self.gathered = self.scattered = 0
