"""Many adapters in one model: each row of a batch uses its own adapter, or none, in one batched product per layer.

A server holds one base model and many LoRA adapters; a batch mixes requests for different ones. Merged adapters
cannot batch inputs of different tasks (Hu et al. 2021, section 4.2, names this limitation); unmerged ones can
(S-LoRA, Sheng et al. 2023; Punica, Chen et al. 2023). Row ``b`` of a batch uses adapter ``a(b)``, and a layer adds
that adapter's update to the frozen product:

    h_b = W0 x_b + bias + s_a(b) · B_a(b) A_a(b) x_b          x_b: (T, in), h_b: (T, out), s_a = alpha / r (or / √r)

``load_adapters`` stacks the factors of the K adapters that target a layer, zero-padded to the largest rank R, with
one more slot of zeros for "no adapter" (the base model):

    lora_A  (K+1, R, in)     lora_B  (K+1, out, R)     scaling  K+1 numbers, 0 for the zero slot

and ``per_row`` gives each layer the slot of every row, ``rows`` (batch,). Then the update of the whole batch is one
gather and two batched products, whatever the mix (Punica's BGMV, "batched gather matrix-vector"):

    XA = bmm(X, lora_A[rows]ᵀ) · scaling[rows]        (batch, T, in) @ (batch, in, R)  -> (batch, T, R)
    H  = baddbmm(bias, XA, lora_B[rows]ᵀ) + X W0ᵀ      (batch, T, R) @ (batch, R, out) -> (batch, T, out)

Zero padding is exact, not approximate: an adapter of rank r < R has zero rows r..R-1 in A and zero columns in B, so
the padded parts of XA are exactly 0 and contribute exactly 0; the zero slot gives a row exactly the base layer's
output (for finite inputs). The scaling is applied per row, so adapters may differ in r, alpha and rsLoRA.

Why gathering and not grouping (one sub-batch per adapter, as PEFT's ``adapter_names`` does): measured layer by layer
on the CPU (GPT-2 small's c_attn, 8 rows of 64 tokens, r = 8, K = 1, 4, 8, interleaved), both cost a few percent over
the base layer and were within the shared machine's noise of each other. The gather wins on what does not depend on
the machine: its number of operations is the same for any mix, where grouping runs a Python loop of small products
over the adapters present, a cost that grows with K and weighs most where products are small (one token per row
while generating; kernel launches on a GPU). ``scripts/benchmark_multi_adapter.py`` measures the whole model against
PEFT. As in ``LoRALinear.fused_forward``, the thin branch is written into ``H`` with the bias first and the large
product added in place after it.
"""

import contextlib
import math
from pathlib import Path

import torch
from torch import nn

from .adapter_io import PREFIX, _read_config, _read_tensors
from .injection import check_wrappable, find_targets, replace_module
from .layer import linear_shape, lora_layers


class MultiLoRALinear(nn.Module):
    """A frozen linear layer with several adapters stacked; ``per_row`` says which one each row of the batch uses.

    ``adapters`` maps a name to ``(A (r, in), B (out, r), scaling)``. For inference only: there is no dropout, and the
    stacks are buffers, not trainable parameters.
    """

    def __init__(self, base_layer, adapters):
        super().__init__()
        self.in_features, self.out_features, self.fan_in_fan_out = linear_shape(base_layer)
        like = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.base_layer = base_layer
        self.names = tuple(adapters)  # slot i holds adapter names[i]; slot len(names) is zeros (the base model)
        self.ranks = tuple(a.shape[0] for a, _, _ in adapters.values())
        slots, rank = len(adapters) + 1, max(self.ranks)
        stacked_a = torch.zeros(slots, rank, self.in_features, **like)  # (K+1, R, in)
        stacked_b = torch.zeros(slots, self.out_features, rank, **like)  # (K+1, out, R)
        for slot, (a, b, _) in enumerate(adapters.values()):
            stacked_a[slot, : a.shape[0]] = a  # rows r..R-1 stay zero
            stacked_b[slot, :, : b.shape[1]] = b  # columns r..R-1 stay zero
        self.register_buffer("lora_A", stacked_a)
        self.register_buffer("lora_B", stacked_b)
        self.scalings = tuple(float(s) for _, _, s in adapters.values()) + (0.0,)
        self.rows = self.row_scaling = None  # set by per_row: slot (batch,) and scaling (batch, 1, 1) of each row

    def forward(self, x):
        if self.rows is None:
            raise RuntimeError(f"this model holds several adapters ({', '.join(self.names)}...); say which one each "
                               f"row uses: `with minilora.per_row(model, names): model(...)`")
        if x.dim() < 2 or x.shape[0] != len(self.rows):
            raise ValueError(f"minilora.per_row was given {len(self.rows)} names but the batch has "
                             f"{x.shape[0] if x.dim() > 1 else 1} rows; give one name (or None) per row")
        rows = x.reshape(x.shape[0], -1, self.in_features)  # (batch, T, in)
        xa = torch.bmm(rows, self.lora_A[self.rows].mT).mul_(self.row_scaling)  # (batch, T, R), scaled per row
        base = self.base_layer
        if self.can_fuse(x):
            h = torch.baddbmm(base.bias, xa, self.lora_B[self.rows].mT)  # bias + XA Bᵀ: (batch, T, out)
            w0_t = base.weight if self.fan_in_fan_out else base.weight.t()  # (in, out), a view
            h.view(-1, self.out_features).addmm_(rows.view(-1, self.in_features), w0_t)  # H += X W0ᵀ
        else:
            h = base(x).reshape(x.shape[0], -1, self.out_features) + torch.bmm(xa, self.lora_B[self.rows].mT)
        return h.view(*x.shape[:-1], self.out_features)

    def can_fuse(self, x):
        """Whether the fused path computes the same as ``base_layer(x) + update``: as ``LoRALinear.can_fuse``, for a
        plain nn.Linear or Conv1D with a bias, no hooks, autograd recording nothing, no autocast, on a CPU or GPU."""
        base = self.base_layer
        plain = type(base) is nn.Linear or (self.fan_in_fan_out and type(base).__name__ == "Conv1D")
        return (plain and base.bias is not None and not (base._forward_hooks or base._forward_pre_hooks)
                and not torch.is_grad_enabled() and x.device.type in ("cpu", "cuda")
                and not torch.is_autocast_enabled(x.device.type))

    def extra_repr(self):
        return f"adapters={list(self.names)}, r={list(self.ranks)}"


def multi_layers(model):
    """List ``(name, layer)`` for every MultiLoRALinear in ``model``, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, MultiLoRALinear)]


def load_adapters(model, adapters):
    """Load several PEFT-format adapters, ``{"name": directory, ...}``, into ``model`` at once; return ``model``.

    They may differ in r, alpha, rsLoRA and target modules; a layer that only some of them target gives the other
    rows the base output. Every file is read and checked (``load_adapter``'s checks, PEFT's targeting rule) before
    the model changes, so a failed call changes nothing. Choose each row's adapter with ``per_row``.
    """
    if not isinstance(adapters, dict) or not adapters:
        raise ValueError(f"adapters must be a non-empty dict {{name: directory}}, got {adapters!r}")
    for name in adapters:
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter names must be non-empty strings, got {name!r} (None stands for the base "
                             f"model in per_row)")
    if lora_layers(model) or multi_layers(model):
        raise ValueError(f"{type(model).__name__} already carries LoRA layers; call minilora.unload(model) first, "
                         f"then load all adapters in one call")
    per_layer = {}  # layer name -> {adapter name: (A, B, scaling)}
    for name, directory in adapters.items():
        try:
            config = _read_config(Path(directory))
            targets = find_targets(model, config["target_modules"], each_entry=False)
            check_wrappable(model, targets)
            tensors = _read_tensors(Path(directory), model, targets, config["r"])
        except (ValueError, TypeError, OSError) as error:
            raise type(error)(f"adapter {name!r}: {error}") from error
        r, alpha = config["r"], config["lora_alpha"]
        scaling = alpha / (math.sqrt(r) if config["use_rslora"] else r)
        for target in targets:
            like = model.get_submodule(target).weight
            per_layer.setdefault(target, {})[name] = tuple(
                tensors[f"{PREFIX}{target}.{part}.weight"].to(device=like.device, dtype=like.dtype)
                for part in ("lora_A", "lora_B")) + (scaling,)
    # Everything is checked: from here on nothing can fail, so a failed load has changed nothing.
    for target in [name for name, _ in model.named_modules() if name in per_layer]:  # module order
        replace_module(model, target, MultiLoRALinear(model.get_submodule(target), per_layer[target]))
    model.requires_grad_(False)
    return model


@contextlib.contextmanager
def per_row(model, names):
    """Within the block, row ``b`` of every batch ``model`` computes uses adapter ``names[b]`` (None: the base model).

    Works for ``model(...)`` and ``model.generate(...)`` (greedy or sampling, not beam search, which reorders rows):
    the rows keep their adapters at every step. A name that is not loaded is refused here, a batch of another length
    at the first layer it reaches (before any output is written).
    """
    layers = [layer for _, layer in multi_layers(model)]
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no adapters from minilora.load_adapters")
    loaded = sorted({name for layer in layers for name in layer.names})
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"names must be a non-empty list with one adapter name (or None) per row, got {names!r}")
    for row, name in enumerate(names):
        if name is not None and name not in loaded:
            raise ValueError(f"row {row} asks for adapter {name!r}, which is not loaded; loaded: {loaded} "
                             f"(None means the base model)")
    before = [(layer.rows, layer.row_scaling) for layer in layers]
    slots = [[layer.names.index(name) if name in layer.names else len(layer.names) for name in names]
             for layer in layers]  # (layers, batch), built on the CPU and copied to each device once
    scalings = [[layer.scalings[slot] for slot in row] for layer, row in zip(layers, slots)]
    on = {}
    for i, layer in enumerate(layers):
        key = (layer.lora_A.device, layer.lora_A.dtype)
        if key not in on:
            on[key] = (torch.tensor(slots, device=key[0]), torch.tensor(scalings, device=key[0], dtype=key[1]))
        layer.rows, layer.row_scaling = on[key][0][i], on[key][1][i].view(-1, 1, 1)
    try:
        yield model
    finally:
        for layer, (rows, row_scaling) in zip(layers, before):  # nested blocks restore the outer one's rows
            layer.rows, layer.row_scaling = rows, row_scaling

