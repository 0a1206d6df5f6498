"""Putting LoRA into a model: find the target layers, wrap each one, freeze everything else.

Hu et al. 2021, section 4.2: LoRA adapts a chosen subset of the weight matrices (in their experiments only the attention
projections) and freezes all other parameters. Targets are chosen by module name, exactly as PEFT chooses them:

- a list of names: a module matches when an entry equals its full dotted name or its last dotted parts, so ``"c_attn"``
  and ``"attn.c_attn"`` both match ``"transformer.h.0.attn.c_attn"``;
- a single string: a regular expression that must match the whole name (``re.fullmatch``).

One difference: ``inject`` refuses a list entry that matches no module (most often a typo), where PEFT accepts it as
long as some entry matches. ``load_adapter`` follows PEFT's rule, so it loads configs written for several
architectures.

GPT-2 small has 12 blocks whose ``c_attn`` maps 768 features to 2304. With r = 8 on ``c_attn``, LoRA trains
12 × 8 × (768 + 2304) = 294,912 parameters, 0.24% of the model.
"""

import difflib
import re

import torch

from .layer import LoRALinear, check_hyperparameters, linear_shape, lora_layers

# The dtypes in which A and B can be created and trained; float8 is "floating point" to torch but has no kernels.
TRAINABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _no_match_error(model, entry, modules):
    if not isinstance(entry, str):  # a whole list, none of whose entries matches
        return ValueError(f"no entry of target_modules={sorted(entry)!r} matches a module of {type(model).__name__}; "
                          f"its Linear/Conv1D layers are named {', '.join(_leaves(modules)[:12]) or '(none)'}")
    leaves = _leaves(modules)
    close = difflib.get_close_matches(entry, leaves, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    return ValueError(f"target_modules entry {entry!r} matches no module of {type(model).__name__}; {hint}"
                      f"its Linear/Conv1D layers are named {', '.join(leaves[:12]) or '(none)'}")


def _leaves(modules):
    return sorted({name.rpartition(".")[2] for name, module in modules.items()
                   if isinstance(module, LoRALinear) or linear_shape(module)})


def find_targets(model, target_modules, each_entry=True):
    """Return, in module order, the names of the modules ``target_modules`` selects.

    ``each_entry=True`` (``inject``) raises if any entry selects nothing: a typo guard that PEFT lacks. PEFT itself
    only requires that the entries together select something, since published adapter configs often list names for
    several architectures (``["q_proj", "v_proj", "c_attn"]``); ``each_entry=False`` (``load_adapter``) follows PEFT.
    """
    if isinstance(target_modules, str):
        entries, matches = [target_modules], lambda name, entry: re.fullmatch(entry, name) is not None
    elif isinstance(target_modules, (list, tuple, set)) and target_modules and all(
            isinstance(t, str) and t for t in target_modules):
        entries, matches = sorted(target_modules), lambda name, entry: name == entry or name.endswith("." + entry)
    else:
        raise ValueError(f"target_modules must be a non-empty list of module names or a regex string, "
                         f"got {target_modules!r}")
    # The parts of an existing LoRA layer (base_layer, lora_A, lora_B) are never targets themselves.
    inside_lora = tuple(name + "." for name, module in model.named_modules() if _carries_lora(module))
    modules = {name: module for name, module in model.named_modules() if name and not name.startswith(inside_lora)}
    selected = [name for name in modules if any(matches(name, entry) for entry in entries)]
    for entry in entries if each_entry or not selected else ():
        if not any(matches(name, entry) for name in modules):
            raise _no_match_error(model, entry if each_entry or len(entries) == 1 else entries, modules)
    return selected


def check_wrappable(model, names):
    """Raise unless every named module is an nn.Linear or Conv1D with a float weight that does not carry LoRA yet."""
    for name in names:
        module = model.get_submodule(name)
        if _carries_lora(module):
            raise ValueError(f"module {name!r} already has LoRA; call minilora.unload(model) first to start over")
        if linear_shape(module) is None:
            raise TypeError(f"target module {name!r} is a {type(module).__name__}; LoRA wraps nn.Linear or Conv1D")
        if module.weight.dtype not in TRAINABLE_DTYPES:  # int8 or float8 (quantised) weights
            raise TypeError(f"target module {name!r} has a {module.weight.dtype} weight; LoRA needs one of "
                            f"{', '.join(map(str, TRAINABLE_DTYPES))} (dequantise the model or leave it out)")


def _carries_lora(module):
    """A LoRALinear, or any wrapper of a base layer (minilora's SlicedLoRALinear, MultiLoRALinear)."""
    return isinstance(module, LoRALinear) or isinstance(getattr(module, "base_layer", None), torch.nn.Module)


def replace_module(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def inject(model, target_modules, r=8, alpha=8, dropout=0.0, use_rslora=False):
    """Wrap every target layer of ``model`` in a LoRALinear, in place, and freeze all non-LoRA parameters.

    Everything is checked before the first module is replaced, so a failed call leaves ``model`` as it was.
    Unlike PEFT, each entry of a ``target_modules`` list must match some module (a typo guard; PEFT only needs one
    entry to match, and ``load_adapter`` follows PEFT). Returns ``model``.
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
