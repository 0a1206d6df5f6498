"""Training memory, accounted from a GPT-2 config and measured for one training step.

**The accounting.** With N parameters of which N_t train, stored in s bytes each (4 for fp32), one step of AdamW
needs

    weights      s · N
    gradients    s · N_t                (one per trainable parameter)
    AdamW        2 · s · N_t            (the moments m and v; and a 4-byte step count per parameter tensor)
    activations  s · B · T · a          (what autograd keeps for backward; a = elements per token, below)
    checkpoint   s · N_t on disk        (full fine-tuning saves N_t = N; LoRA saves only its factors)

The usual sum of the first four overstates the peak: gradients are born while backward frees the activations. The
peak comes at the start of backward, when every activation is alive, no weight has its gradient yet, and the loss's
backward holds two tensors of the logits' size (the gradients of log-softmax's output and of the logits):

    peak = weights + AdamW + max(activations, gradients) + 2 · s · B · T · V

For LoRA of rank r on a layer with `in` inputs and `out` outputs, N_t = r · (in + out) per adapted layer.

**Activations per token**, counted from what GPT-2's backward reads (d = n_embd, f = n_inner, H = heads,
V = vocabulary, L = layers; the attention is PyTorch's fused SDPA, which keeps q, k, v, its output and one
log-sum-exp per head, not the T × T attention matrix; dropout is off):

    per block, full fine-tuning:  9d + 5f + H + 4
        LayerNorm 1 and 2 keep their input (d each) and a mean and a 1/std (2 each); c_attn's input (d); q, k, v
        (3d); the attention output (d) and its head-merged copy, c_proj's input (d); c_fc's input (d); gelu_new
        (written out with tanh) keeps four tensors of f; the MLP's c_proj keeps its input (f).
    final: LayerNorm (d + 2), the LM head's input (d), log-softmax's output (V).

A frozen linear layer keeps no input for backward (its weight needs no gradient; its input's gradient needs only
the weight), but LayerNorm, attention and gelu keep theirs, because the gradient of the LoRA factors below them
must flow back through them. So LoRA on `c_attn` alone drops c_proj's, c_fc's and the MLP c_proj's inputs
(d + d + f per block), the tied LM head's input (d) and the first LayerNorm (nothing below it trains), and adds
A x (r per adapted layer). LoRA on every linear layer keeps what full fine-tuning keeps, plus r per layer.

**Gradient checkpointing** (transformers' `gradient_checkpointing_enable()`) keeps only each block's input (d per
block) and recomputes one block at a time during backward; its activations are L·d + max(one block, final).
Its `peak` is an upper bound (it adds the loss's gradients to a recomputed block, which come at different
moments): measured 1.01 of it on the bundled model, where the logits dominate, and 0.91 on a tiny GPT-2.

**The measurement.** `measure_step` runs one training step (forward with labels, backward, AdamW step, zero_grad
with set_to_none) after a warm-up step (so AdamW's moments exist) and returns its peak memory. On CUDA that is
`torch.cuda.max_memory_allocated`. On the CPU it is PyTorch's profiler with `profile_memory=True`: the CPU allocator
reports every allocation and free to it, and its memory timeline sorts each tensor into a category (parameter,
gradient, optimizer state, activation, temporary, input, autograd detail). The peak of the total, and the size of
each category at that moment, are what it returns; process RSS would count the allocator's cached pages, the Python
heap and the libraries, not tensors.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass

import torch

ATTENTION = ("c_attn",)
ALL_LINEAR = ("c_attn", "c_proj", "c_fc")
METHODS = ("full", "lora", "lora_checkpointing")
CATEGORIES = ("parameter", "optimizer_state", "input", "temporary", "activation", "gradient", "autograd_detail",
              "unknown")  # the order of the columns of torch.profiler's memory timeline


@dataclass(frozen=True)
class Shape:
    """The sizes of a GPT-2 that the accounting needs, read from its config."""

    n_layer: int
    n_embd: int
    n_inner: int
    n_head: int
    vocab_size: int
    n_positions: int
    tied: bool = True

    @classmethod
    def from_config(cls, config) -> "Shape":
        if getattr(config, "model_type", "gpt2") != "gpt2":
            raise ValueError(f"the accounting is written for GPT-2's layers, got model_type {config.model_type!r}")
        d = config.n_embd
        return cls(config.n_layer, d, config.n_inner or 4 * d, config.n_head, config.vocab_size, config.n_positions,
                   bool(getattr(config, "tie_word_embeddings", True)))

    def linear_shapes(self) -> dict[str, list[tuple[int, int]]]:
        """(in, out) of every linear layer of one block, by module name (c_proj occurs twice)."""
        d, f = self.n_embd, self.n_inner
        return {"c_attn": [(d, 3 * d)], "c_proj": [(d, d), (f, d)], "c_fc": [(d, f)]}

    def parameters(self) -> int:
        """N = V d + P d + L (2 LayerNorms, the four linear layers' weights and biases) + the final LayerNorm."""
        d = self.n_embd
        block = 4 * d + sum(i * o + o for shapes in self.linear_shapes().values() for i, o in shapes)
        head = 0 if self.tied else self.vocab_size * d
        return self.vocab_size * d + self.n_positions * d + self.n_layer * block + 2 * d + head

    def tensors(self, method: str = "full", targets=ATTENTION) -> int:
        """How many parameter tensors train: 12 per block (six weights and biases), wte, wpe and the final
        LayerNorm's two for full fine-tuning; A and B per adapted layer for LoRA."""
        if method == "full":
            return 12 * self.n_layer + 4 + (0 if self.tied else 1)
        _check_targets(targets)
        return self.n_layer * sum(2 * len(self.linear_shapes()[t]) for t in targets)

    def lora_parameters(self, r: int, targets=ATTENTION) -> int:
        """N_t of LoRA: r (in + out) for every adapted layer of every block."""
        _check_targets(targets)
        shapes = self.linear_shapes()
        return self.n_layer * sum(r * (i + o) for t in targets for i, o in shapes[t])

    def activations_per_token(self, method: str = "full", r: int = 0, targets=ATTENTION) -> int:
        """a: elements autograd keeps per token (see the module docstring), at the peak of the backward pass."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        d, f, h, n = self.n_embd, self.n_inner, self.n_head, self.n_layer
        block_full = 9 * d + 5 * f + h + 4
        final = (d + 2) + d + self.vocab_size
        if method == "full":
            return n * block_full + final
        _check_targets(targets)
        adapted = {t: len(self.linear_shapes()[t]) for t in targets}
        dropped = sum(w for t, w in (("c_attn", d), ("c_fc", d)) if t not in targets)
        if "c_proj" not in targets:
            dropped += d + f
        block = block_full - dropped + r * sum(adapted.values())
        final_lora = final - d  # the tied LM head is frozen: its input is not kept
        if method == "lora":
            first_layernorm = d + 2  # nothing below block 0 trains, so its LayerNorm keeps nothing
            return n * block - first_layernorm + final_lora
        return n * d + max(block, final_lora)  # checkpointing: block inputs, and one block (or the head) at a time


def _check_targets(targets) -> None:
    unknown = set(targets) - set(ALL_LINEAR)
    if not targets or unknown:
        raise ValueError(f"targets must be a non-empty subset of {ALL_LINEAR}, got {tuple(targets)!r}")


def accounting(config, method: str, batch: int, seq_len: int, r: int = 8, targets=ATTENTION,
               bytes_per_value: int = 4) -> dict[str, int]:
    """Bytes of weights, gradients, AdamW moments, activations, the loss's gradients, their plain `sum`, the `peak`
    of one step (module docstring), and the `checkpoint` on disk.

    `method` is "full", "lora" or "lora_checkpointing" (LoRA with gradient checkpointing).
    """
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be positive, got batch={batch!r}, seq_len={seq_len!r}")
    shape = Shape.from_config(config)
    n = shape.parameters()
    trainable = n if method == "full" else shape.lora_parameters(r, targets)
    if method != "full":
        n += trainable
    s = bytes_per_value
    rows = {
        "weights": s * n,
        "gradients": s * trainable,
        # torch's AdamW also keeps its step count as a 4-byte scalar tensor per parameter tensor
        "optimizer": 2 * s * trainable + 4 * shape.tensors(method if method == "full" else "lora", targets),
        "activations": s * batch * seq_len * shape.activations_per_token(method, r, targets),
    }
    # Backward starts at the loss: the gradients of log-softmax's output and of the logits (B·T·V each) are alive
    # together while every activation still is, and before any weight's gradient exists.
    rows["loss_gradients"] = 2 * s * batch * seq_len * shape.vocab_size
    rows["sum"] = rows["weights"] + rows["gradients"] + rows["optimizer"] + rows["activations"]
    rows["peak"] = rows["weights"] + rows["optimizer"] + max(rows["activations"] + rows["loss_gradients"],
                                                             rows["gradients"] + rows["loss_gradients"])
    rows["checkpoint"] = s * trainable
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# The measurement


def prepare(model, method: str, r: int = 8, targets=ATTENTION):
    """A copy of `model` set up to train as `method` says, in train mode; the original is not touched."""
    import minilora

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    model = copy.deepcopy(model)
    if method == "full":
        model.requires_grad_(True)
    else:
        minilora.inject(model, target_modules=list(targets), r=r, alpha=r)
    if method == "lora_checkpointing":
        # Non-reentrant checkpointing: the reentrant kind gives no gradient when no input of a block requires grad,
        # which is LoRA's case (the embeddings are frozen).
        with warnings.catch_warnings():  # transformers 5 also names it activation_checkpointing_enable
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model.train()


def training_step(model, optimizer, input_ids):
    """Forward with labels (transformers' shifted cross-entropy), backward, AdamW step, gradients set to None."""
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_function(model, batch: int, seq_len: int, device="cpu", seed: int = 0):
    """(step, optimizer): a callable running one training step of `model` on a fixed random batch."""
    if seq_len > model.config.n_positions:
        raise ValueError(f"seq_len {seq_len} exceeds the model's context, n_positions={model.config.n_positions}")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(model.config.vocab_size, (batch, seq_len), generator=generator).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return (lambda: training_step(model, optimizer, ids)), optimizer


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send what C++ code writes to file descriptor 2 to /dev/null while the block runs (Python's sys.stderr is
    flushed first and left alone when it is not fd 2, as in a Jupyter kernel)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_peak_cpu(fn) -> dict:
    """Run `fn()` under torch.profiler with profile_memory=True; the peak of all tensor memory on the CPU, in bytes,
    and each category's bytes at that moment (`CATEGORIES`)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True)
    with _native_stderr_silenced():  # libkineto writes "USDT: ... profiler_start/stop" lines to fd 2
        prof.start()
    try:
        fn()
    finally:
        with _native_stderr_silenced():
            prof.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    totals = [sum(row[1:]) for row in sizes]
    peak = max(range(len(totals)), key=totals.__getitem__)
    return {"peak_bytes": totals[peak], "at_peak": dict(zip(CATEGORIES, sizes[peak][1:])),
            "category_max": {c: max(row[i + 1] for row in sizes) for i, c in enumerate(CATEGORIES)}}


def measure_step(model, method: str, batch: int, seq_len: int, device="cpu", r: int = 8, targets=ATTENTION) -> dict:
    """Peak memory of one training step (after a warm-up step), in bytes: {"peak_bytes", "static_bytes", ...}.

    `static_bytes` is what lives between steps (weights and AdamW moments). On the CPU the result also has
    `at_peak` and `category_max` from the profiler's categories.
    """
    device = torch.device(device)
    trained = prepare(model, method, r, targets).to(device)
    step, _ = step_function(trained, batch, seq_len, device)
    step()  # warm-up: AdamW allocates its moments on the first step
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        static = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        result = {"peak_bytes": torch.cuda.max_memory_allocated(device), "static_bytes": static,
                  "tool": "torch.cuda.max_memory_allocated"}
    elif device.type == "cpu":
        result = profile_peak_cpu(step)
        result["static_bytes"] = result["at_peak"]["parameter"] + result["at_peak"]["optimizer_state"]
        result["tool"] = "torch.profiler(profile_memory=True) memory timeline"
    else:
        raise ValueError(f"measure_step runs on 'cpu' or 'cuda', got {device}")
    del trained
    return result


def checkpoint_bytes(model) -> int:
    """Bytes on disk of the trainable part of `model`: minilora's adapter file if it has LoRA layers, else the whole
    model's safetensors file."""
    from pathlib import Path

    import minilora
    from minilora.layer import lora_layers

    with tempfile.TemporaryDirectory() as folder:
        if any(True for _ in lora_layers(model)):
            minilora.save_adapter(model, folder)
            return (Path(folder) / "adapter_model.safetensors").stat().st_size
        model.save_pretrained(folder)
        return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------------------------------
# The LoRA paper's headline, in the same terms

GPT3 = {"parameters": 175e9, "n_layer": 96, "d_model": 12288}  # Brown et al. 2020, GPT-3 175B


def gpt3_headline(r: int = 4, bytes_per_value: int = 2) -> dict[str, float]:
    """Hu et al. 2021, section 4.2: fine-tuning GPT-3 175B took 1.2 TB of VRAM, LoRA (r = 4 on W_q and W_v) 350 GB,
    and the checkpoint shrank about 10,000× (350 GB to 35 MB). Recomputed with the accounting above in fp16."""
    n, layers, d = GPT3["parameters"], GPT3["n_layer"], GPT3["d_model"]
    s = bytes_per_value
    lora = layers * 2 * r * (d + d)  # W_q and W_v, each d × d
    return {
        "weights": s * n, "full_gradients": s * n, "full_adam": 2 * s * n,
        "full_weights_and_adam": 3 * s * n, "full_total": 4 * s * n,
        "lora_parameters": lora, "lora_total": s * n + 4 * s * lora,
        "full_checkpoint": s * n, "lora_checkpoint": s * lora, "checkpoint_ratio": n / lora,
    }
