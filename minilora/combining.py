"""Combining adapters: one new adapter file from a weighted sum of several, as PEFT's ``add_weighted_adapter``.

Adapter ``i`` (weight ``w_i``, scaling ``s_i``, factors ``B_i`` (out, r_i) and ``A_i`` (r_i, in)) changes a layer by
``ΔW_i = s_i B_i A_i``. The combined adapter should change it by the weighted sum

    ΔW = Σ_i w_i ΔW_i = Σ_i w_i s_i B_i A_i            (out, in), summed over the adapters that target the layer

Two ways to write that as one adapter, both with ``lora_alpha = r`` (scaling 1) as PEFT writes them:

- ``method="cat"``, exact: stack the factors, ``A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]`` (Σ r_i, in) and
  ``B = [B_1, B_2, ...]`` (out, Σ r_i); then ``B A = Σ_i B_i (w_i s_i A_i) = ΔW``. Its rank is the sum of theirs; a
  layer that only some adapters target has zero rows and columns in the rest, which add nothing.
- ``method="svd"``: the best rank-r approximation of ``ΔW`` (``minilora.decompose``, Eckart and Young): exact when
  ``r`` reaches the rank of the sum, otherwise the closest rank-r update in the Frobenius norm.

Equal to PEFT 0.21's ``add_weighted_adapter(names, weights, combination_type="cat" / "svd", svd_rank=r)`` up to
rounding: the same ``ΔW`` per layer (PEFT splits the singular values as ``B = U S``, ``A = Vᵀ``, we split ``√S``
evenly; the product is the same), the same ``r`` (``svd`` without ``r``: the largest of the adapters' ranks, as PEFT)
and ``lora_alpha = r``. One difference: PEFT copies the first adapter's other settings, so if that one uses rsLoRA
PEFT's combined adapter scales by ``r / √r = √r`` instead of 1; ours never sets ``use_rslora``. PEFT turns a
combination of one adapter into ``combination_type="linear"``; ours keeps the method asked for.

Naively summing A's and B's (``(Σ A_i)(Σ B_i)``) is not a sum of updates: it adds the cross terms ``B_i A_j``.
"""

import json
import math
import numbers
from pathlib import Path

import torch
from safetensors.torch import load_file

from .adapter_io import PREFIX, WEIGHTS, _read_config, _write_both, adapter_config
from .decomposition import check_rank, decompose


def read_factors(directory):
    """``(config, {layer name: (A (r, in), B (out, r))})`` of an adapter directory, checked key by key."""
    directory = Path(directory)
    config = _read_config(directory)
    tensors = load_file(directory / WEIGHTS)
    factors = {}
    for key, tensor in sorted(tensors.items()):
        layer, _, part = key.removeprefix(PREFIX).rpartition(".")[0].rpartition(".")
        if not key.startswith(PREFIX) or part not in ("lora_A", "lora_B") or not key.endswith(".weight"):
            raise ValueError(f"{WEIGHTS} key {key!r} is not a LoRA factor ({PREFIX}<module>.lora_A.weight)")
        if not tensor.is_floating_point() or tensor.dim() != 2:
            raise ValueError(f"{WEIGHTS} tensor {key!r} is {tensor.dtype} of shape {tuple(tensor.shape)}; "
                             f"LoRA factors are 2-D floating point")
        factors.setdefault(layer, {})[part] = tensor
    for layer, parts in factors.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise ValueError(f"{WEIGHTS} has {sorted(parts)} for {layer!r} but LoRA needs both lora_A and lora_B")
        a, b = parts["lora_A"], parts["lora_B"]
        if a.shape[0] != config["r"] or b.shape[1] != config["r"]:
            raise ValueError(f"{layer!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                             f"{str(directory)!r} says r={config['r']}")
    return config, {layer: (parts["lora_A"], parts["lora_B"]) for layer, parts in factors.items()}


def combine(adapters, weights, method="svd", r=None, out=None):
    """Write to ``out`` one PEFT-format adapter whose ΔW is ``Σ weights[name] · ΔW[name]``; return ``out`` as a Path.

    ``adapters`` is ``{"name": directory, ...}``, ``weights`` ``{"name": w, ...}`` with the same names (w may be
    negative: subtracting a task). ``method="svd"`` cuts the sum to rank ``r`` (default: the largest rank among the
    adapters); ``method="cat"`` concatenates the factors, rank the sum of theirs (``r`` must then be None or that sum).
    Everything is read and checked before ``out`` is written; the two files are written as ``save_adapter`` does.
    """
    if not isinstance(adapters, dict) or not adapters:
        raise ValueError(f"adapters must be a non-empty dict {{name: directory}}, got {adapters!r}")
    if not isinstance(weights, dict) or sorted(weights) != sorted(adapters):
        raise ValueError(f"weights must give one number per adapter, {{name: w}} for {sorted(adapters)}, "
                         f"got {weights!r}")
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise ValueError(f"the weight of adapter {name!r} must be a finite number, got {w!r}")
    if method not in ("svd", "cat"):
        raise ValueError(f"method must be 'svd' or 'cat', got {method!r}")
    if out is None:
        raise ValueError("out must name the directory to write the combined adapter to")
    read = {}
    for name, directory in adapters.items():
        try:
            read[name] = read_factors(directory)
        except (ValueError, OSError) as error:
            raise type(error)(f"adapter {name!r}: {error}") from error
    ranks = [config["r"] for config, _ in read.values()]
    rank = _new_rank(method, r, ranks)
    layers = sorted({layer for _, factors in read.values() for layer in factors})
    tensors = {}
    for layer in layers:
        terms = []  # (w_i s_i, A_i, B_i) of the adapters that target this layer, in the given order
        for name, (config, factors) in read.items():
            if layer in factors:
                scaling = config["lora_alpha"] / (math.sqrt(config["r"]) if config["use_rslora"] else config["r"])
                terms.append((weights[name] * scaling, *factors[layer]))
        shapes = {(b.shape[0], a.shape[1]) for _, a, b in terms}
        if len(shapes) > 1:
            raise ValueError(f"the adapters disagree on the shape (out, in) of {layer!r}: {sorted(shapes)}")
        a, b = _cat(terms, rank) if method == "cat" else _svd(terms, rank, layer)
        tensors[f"{PREFIX}{layer}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{layer}.lora_B.weight"] = b.contiguous()
    first = next(iter(read.values()))[0]
    config = adapter_config(rank, rank, 0.0, False, layers, bool(first.get("fan_in_fan_out", False)),
                            first.get("base_model_name_or_path"))
    _write_both(Path(out), tensors, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(out)


def _new_rank(method, r, ranks):
    if method == "cat":
        if r is not None and r != sum(ranks):
            raise ValueError(f"method='cat' gives rank {sum(ranks)} (the sum of {ranks}); leave r=None or use "
                             f"method='svd' to choose the rank")
        return sum(ranks)
    if r is None:
        return max(ranks)
    check_rank(r)
    return r


def _cat(terms, rank):
    """``A = [c_i A_i; ...; 0]`` (rank, in) and ``B = [B_i, ..., 0]`` (out, rank), zeros where adapters are absent."""
    a = torch.cat([c * a for c, a, _ in terms])  # (Σ r_i, in)
    b = torch.cat([b for _, _, b in terms], dim=1)  # (out, Σ r_i)
    pad = rank - a.shape[0]
    return torch.nn.functional.pad(a, (0, 0, 0, pad)), torch.nn.functional.pad(b, (0, pad))


def _svd(terms, rank, layer):
    """The best rank-``rank`` factors of ``Σ c_i B_i A_i``, in the work precision of ``delta_weight``."""
    dtype = terms[0][1].dtype
    work = torch.promote_types(dtype, torch.float32)
    delta = sum(c * (b.to(work) @ a.to(work)) for c, a, b in terms)  # (out, in)
    if rank > min(delta.shape):
        raise ValueError(f"r={rank} exceeds the largest possible rank {min(delta.shape)} of {layer!r}'s "
                         f"{tuple(delta.shape)} update")
    b, a = decompose(delta, rank)
    return a.to(dtype), b.to(dtype)
