"""Merging: fold the low-rank update into the frozen weight, so inference costs nothing extra.

Hu et al. 2021, section 4.1 ("No additional inference latency"): since ``h = W0 x + ΔW x = (W0 + ΔW) x``, we can store
``W = W0 + ΔW`` and run the plain layer. Subtracting ``ΔW`` recovers ``W0`` and frees the layer for another adapter.

    merge:    W <- cast(work(W) + ΔW)        ΔW = scaling · B A, computed in work precision by delta_weight()
    unmerge:  W <- cast(work(W) - ΔW)        work = promote_types(dtype, float32): float32, or float64 for float64

Both work in that precision and round once to the weight's dtype (adding a bf16 ``ΔW`` to a bf16 weight would round
twice), so a round trip moves each element by at most ``eps · (|W0| + |ΔW|)`` of that dtype, plus ``eps · tiny`` near zero.
Merging is explicit and idempotent: a ``merged`` flag per layer makes a second call do nothing.
"""

from collections import Counter

import torch

from .injection import replace_module
from .layer import lora_layers
from .multi import multi_layers


def _layers(model, merged):
    """The LoRA layers of ``model`` whose ``merged`` flag equals ``merged``; raise if the model has none at all."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers; call minilora.inject first")
    return [(name, layer) for name, layer in layers if layer.merged == merged]


def _add_to_weight(layer, delta):
    weight = layer.base_layer.weight.data  # (out, in), or (in, out) for Conv1D, like delta
    weight.copy_(_sum(weight, delta))  # copy_ rounds to the weight's dtype, once, in the same storage


def _sum(weight, delta):
    """``W0 + ΔW`` in delta's (work) precision, rounded to the weight's dtype."""
    return (weight.to(delta.dtype) + delta).to(weight.dtype)


def merge(model):
    """Add every layer's ``ΔW`` into its base weight.

    Refuses, changing nothing, if any ``ΔW`` or rounded ``W0 + ΔW`` is not finite (float16 overflows at 65504), or
    any base weight is tied to another module.
    """
    pending = _layers(model, merged=False)
    deltas = [layer.delta_weight() for _, layer in pending]  # all checked before any weight changes
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for (name, layer), delta in zip(pending, deltas):
        if not torch.isfinite(delta).all():
            raise ValueError(f"the LoRA update of {name!r} has inf or nan entries; refusing to merge")
        if not torch.isfinite(_sum(layer.base_layer.weight.data, delta)).all():  # e.g. float16 overflows at 65504
            raise ValueError(f"W0 + ΔW of {name!r} overflows {layer.base_layer.weight.dtype} (inf entries); refusing "
                             f"to merge: keep the adapter unmerged or merge in a wider dtype")
        if uses[id(layer.base_layer.weight)] > 1:  # e.g. GPT-2's lm_head, tied to the token embedding
            raise ValueError(f"the weight of {name!r} is shared with another module (tied weights); merging into it "
                             f"would change that module too")
    for (_, layer), delta in zip(pending, deltas):
        _add_to_weight(layer, delta)
        layer.merged = True
    return model


def unmerge(model):
    """Subtract every merged layer's ``ΔW`` from its base weight, restoring ``W0`` up to one rounding."""
    for _, layer in _layers(model, merged=True):
        _add_to_weight(layer, -layer.delta_weight())
        layer.merged = False
    return model


_merge = merge  # unload's argument `merge` hides the function of that name


def unload(model, merge=True):
    """Replace every LoRALinear by its base layer and return ``model``.

    With ``merge=True`` the base layers keep ``W0 + ΔW`` (the fine-tuned model at the base model's cost); with
    ``merge=False`` they get ``W0`` back, unmerging first where needed. Base parameters stay frozen.

    A model from ``load_adapters`` has no single ΔW to keep: its MultiLoRALinear layers are replaced by their base
    layers, W0 unchanged, whatever ``merge`` says.
    """
    multi = multi_layers(model)
    if lora_layers(model) or not multi:  # a model with neither gets _layers' error
        (_merge if merge else unmerge)(model)
    for name, layer in lora_layers(model) + multi:
        replace_module(model, name, layer.base_layer)
    return model
