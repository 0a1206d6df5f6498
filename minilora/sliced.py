"""LoRA on slices of a fused layer's outputs: adapt q and v inside GPT-2's ``c_attn`` and leave k alone.

GPT-2 computes query, key and value with one layer, ``c_attn``, of ``3·d`` outputs laid out ``q | k | v``. The
LoRA paper's GPT-2 code adapts only q and v (loralib's ``MergedLinear(..., enable_lora=[True, False, True])``). For
output slices ``S_1, ..., S_k`` (ranges of rows of ``W0``), each with its own ``A_i (r, in)`` and ``B_i (|S_i|, r)``:

    h = W0 x + b                                      every output, frozen
    h[S_i] += (alpha / r) · B_i A_i x                 for each slice i; the other outputs stay as they were

    ΔW = scaling · B_pad A,   A = [A_1; ...; A_k] (k r, in),   B_pad (out, k r): B_i in rows S_i, columns of block i

So the layer trains ``Σ_i r · (in + |S_i|)`` parameters: the slice's, not a zero-padded ``B`` of ``out`` rows. The
zeros of ``B_pad`` exist only inside ``delta_weight()``, which ``minilora.merge``, ``unmerge`` and ``unload`` use.

``SlicedLoRALinear`` is a ``LoRALinear`` (its ``base_layer``, ``lora_A``, ``scaling``, ``merged``, ``delta_weight``), so
``inject`` keeps its factors trainable and the merging functions handle it unchanged; only ``lora_B`` differs: one
``(|S_i|, r)`` matrix per slice in an ``nn.ParameterList``. PEFT's adapter files hold one ``(out, r)`` ``B`` per
layer, so ``save_adapter`` refuses a model that holds this layer rather than write a file PEFT would misread.
"""

import math
import numbers

import torch
from torch import nn

from .injection import check_wrappable, find_targets, replace_module
from .layer import LoRALinear, check_hyperparameters, linear_shape


def check_slices(slices, out_features):
    """Return ``slices`` as a tuple of ``(start, stop)`` pairs; raise ValueError naming the first bad one.

    A slice is a pair of integers ``0 <= start < stop <= out_features``; slices are listed in increasing order and do
    not overlap (two LoRA branches on one output would be one branch of rank 2r).
    """
    if not isinstance(slices, (list, tuple)) or not slices:
        raise ValueError(f"slices must be a non-empty list of (start, stop) pairs, got {slices!r}")
    pairs, previous_stop = [], 0
    for s in slices:
        if (not isinstance(s, (list, tuple)) or len(s) != 2
                or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in s)):
            raise ValueError(f"slice {s!r} is not a pair of integers (start, stop)")
        start, stop = int(s[0]), int(s[1])
        if not 0 <= start < stop <= out_features:
            raise ValueError(f"slice {s!r} is empty or outside the layer's {out_features} outputs; "
                             f"need 0 <= start < stop <= {out_features}")
        if start < previous_stop:
            raise ValueError(f"slice {s!r} overlaps or precedes the slice before it; list slices in increasing "
                             f"order without overlap")
        pairs.append((start, stop))
        previous_stop = stop
    return tuple(pairs)


def fused_slices(out_features, parts, chosen):
    """The output ranges of ``chosen`` parts among ``parts`` equal ones, e.g. ``fused_slices(3 * d, 3, [0, 2])``
    gives the q and v slices of GPT-2's ``c_attn``: ``((0, d), (2 * d, 3 * d))``."""
    if not isinstance(parts, int) or parts < 1 or out_features % parts:
        raise ValueError(f"{out_features} outputs do not split into {parts!r} equal parts")
    valid = chosen and all(isinstance(p, int) and 0 <= p < parts for p in chosen)
    if not valid or sorted(set(chosen)) != list(chosen):
        raise ValueError(f"chosen must list distinct part indices in 0..{parts - 1} in increasing order, "
                         f"got {chosen!r}")
    size = out_features // parts
    return tuple((p * size, (p + 1) * size) for p in chosen)


class SlicedLoRALinear(LoRALinear):
    """Wraps a linear layer and adds ``scaling · B_i A_i x`` to the outputs of each slice ``S_i`` only."""

    def __init__(self, base_layer, slices, r, alpha, dropout=0.0, use_rslora=False):
        nn.Module.__init__(self)  # LoRALinear.__init__ would build one full-height B
        check_hyperparameters(r, alpha, dropout, use_rslora)
        shape = linear_shape(base_layer)
        if shape is None:
            raise TypeError(f"LoRA wraps nn.Linear or GPT-2's Conv1D, not {type(base_layer).__name__}")
        self.in_features, self.out_features, self.fan_in_fan_out = shape
        self.slices = check_slices(slices, self.out_features)
        like = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.base_layer = base_layer
        self.lora_dropout = nn.Dropout(dropout)
        # A_1..A_k stacked, (k r, in): one product serves every slice. Row block i is a LoRALinear's A, drawn alike.
        self.lora_A = nn.Linear(self.in_features, r * len(self.slices), bias=False, **like)
        for block in self.lora_A.weight.data.split(r):
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        self.lora_B = nn.ParameterList(
            [nn.Parameter(torch.zeros(stop - start, r, **like)) for start, stop in self.slices])  # (|S_i|, r) each
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.merged = False
        self.train(base_layer.training)

    def padded_B(self):
        """``B_pad`` (out, k r) in fp32: ``B_i`` in rows ``S_i`` and columns ``i r .. (i+1) r``, zeros elsewhere."""
        padded = self.lora_A.weight.new_zeros(self.out_features, self.lora_A.out_features, dtype=torch.float32)
        for i, ((start, stop), b) in enumerate(zip(self.slices, self.lora_B)):
            padded[start:stop, i * self.r:(i + 1) * self.r] = b.float()
        return padded

    def delta_weight(self):
        """``ΔW = scaling · B_pad A`` in fp32, laid out like ``base_layer.weight``."""
        delta = self.scaling * (self.padded_B() @ self.lora_A.weight.float())  # (out, k r) @ (k r, in) -> (out, in)
        return delta.t() if self.fan_in_fan_out else delta

    def forward(self, x):
        h = self.base_layer(x)  # (..., out); already W0 + ΔW when merged
        if self.merged:
            return h
        xa = self.lora_A(self.lora_dropout(x))  # (..., k r)
        parts = xa.split(self.r, dim=-1)  # k tensors (..., r)
        # Out of place: h[..., start:stop] += ... would overwrite what autograd may have saved of h.
        pieces, previous = [], 0
        for (start, stop), b, part in zip(self.slices, self.lora_B, parts):
            pieces += [h[..., previous:start], h[..., start:stop] + self.scaling * (part @ b.t())]  # (..., |S_i|)
            previous = stop
        pieces.append(h[..., previous:])
        return torch.cat(pieces, dim=-1)

    def extra_repr(self):
        return f"slices={self.slices}, " + super().extra_repr()


def inject_sliced(model, target_modules, slices, r=8, alpha=8, dropout=0.0, use_rslora=False):
    """Wrap every target layer in a ``SlicedLoRALinear`` on the same ``slices`` and freeze all non-LoRA parameters.

    Like ``minilora.inject`` (whose LoRA layers stay trainable), everything is checked before the first module is
    replaced, so a failed call leaves ``model`` as it was. Returns ``model``.
    """
    check_hyperparameters(r, alpha, dropout, use_rslora)
    names = find_targets(model, target_modules)
    check_wrappable(model, names)
    for name in names:
        check_slices(slices, linear_shape(model.get_submodule(name))[1])
    for name in names:
        replace_module(model, name, SlicedLoRALinear(model.get_submodule(name), slices, r, alpha, dropout, use_rslora))
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.lora_A.requires_grad_(True)
            module.lora_B.requires_grad_(True)
    return model
