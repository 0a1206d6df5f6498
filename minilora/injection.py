"""Putting LoRA into a model: find the target layers, wrap each one, freeze everything else.

Hu et al. 2021, section 4.2: LoRA adapts a chosen subset of the weight matrices (in their experiments only the attention
projections) and freezes all other parameters. Targets are chosen by module name, exactly as PEFT chooses them:

- a list of names: a module matches when an entry equals its full dotted name or its last dotted parts, so ``"c_attn"``
  and ``"attn.c_attn"`` both match ``"transformer.h.0.attn.c_attn"``;
- a single string: a regular expression that must match the whole name (``re.fullmatch``).

GPT-2 small has 12 blocks whose ``c_attn`` maps 768 features to 2304. With r = 8 on ``c_attn``, LoRA trains
12 × 8 × (768 + 2304) = 294,912 parameters, 0.24% of the model.
"""

import difflib
import re

from .layer import LoRALinear, check_hyperparameters, linear_shape, lora_layers


def _no_match_error(model, entry, modules):
    leaves = sorted({name.rpartition(".")[2] for name, module in modules.items()
                     if isinstance(module, LoRALinear) or linear_shape(module)})
    close = difflib.get_close_matches(entry, leaves, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    return ValueError(f"target_modules entry {entry!r} matches no module of {type(model).__name__}; {hint}"
                      f"its Linear/Conv1D layers are named {', '.join(leaves[:12]) or '(none)'}")


def find_targets(model, target_modules):
    """Return, in module order, the names of the modules ``target_modules`` selects; raise if an entry selects none."""
    if isinstance(target_modules, str):
        entries, matches = [target_modules], lambda name, entry: re.fullmatch(entry, name) is not None
    elif isinstance(target_modules, (list, tuple, set)) and target_modules and all(
            isinstance(t, str) and t for t in target_modules):
        entries, matches = sorted(target_modules), lambda name, entry: name == entry or name.endswith("." + entry)
    else:
        raise ValueError(f"target_modules must be a non-empty list of module names or a regex string, "
                         f"got {target_modules!r}")
    # The parts of an existing LoRALinear (base_layer, lora_A, lora_B) are never targets themselves.
    inside_lora = tuple(name + "." for name, _ in lora_layers(model))
    modules = {name: module for name, module in model.named_modules() if name and not name.startswith(inside_lora)}
    for entry in entries:
        if not any(matches(name, entry) for name in modules):
            raise _no_match_error(model, entry, modules)
    return [name for name in modules if any(matches(name, entry) for entry in entries)]


def check_wrappable(model, names):
    """Raise unless every named module is an nn.Linear or Conv1D that does not carry LoRA yet."""
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, LoRALinear):
            raise ValueError(f"module {name!r} already has LoRA; call minilora.unload(model) first to start over")
        if linear_shape(module) is None:
            raise TypeError(f"target module {name!r} is a {type(module).__name__}; LoRA wraps nn.Linear or Conv1D")


def replace_module(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def inject(model, target_modules, r=8, alpha=8, dropout=0.0, use_rslora=False):
    """Wrap every target layer of ``model`` in a LoRALinear, in place, and freeze all non-LoRA parameters.

    Everything is checked before the first module is replaced, so a failed call leaves ``model`` as it was.
    Returns ``model``.
    """
    check_hyperparameters(r, alpha, dropout, use_rslora)
    names = find_targets(model, target_modules)
    check_wrappable(model, names)
    for name in names:
        replace_module(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout, use_rslora))
    model.requires_grad_(False)
    for _, layer in lora_layers(model):  # includes layers from an earlier inject, which stay trainable
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    return model


def count_parameters(model):
    """Return ``(trainable, total)`` parameter counts; a tied weight (GPT-2's embedding and head) counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def print_trainable_parameters(model):
    """Print the counts in the same words and format as PEFT's ``print_trainable_parameters``."""
    trainable, total = count_parameters(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")
