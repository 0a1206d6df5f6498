"""The LoRA layer: a frozen linear map plus a trainable low-rank branch.

Hu et al. 2021, section 4.1, equation (3). For a frozen weight ``W0`` of shape ``(out, in)``:

    h = W0 x + (alpha / r) · B A x          A: (r, in), B: (out, r), r << min(in, out)

    x (..., in) ──► base_layer (W0 and bias, frozen) ─────────────────────────┐
        └──► dropout ──► lora_A (r, in) ──► lora_B (out, r) ──► · scaling ──► + ──► h (..., out)

``B`` starts at zero, so ``ΔW = B A`` is zero and the wrapped layer first computes exactly what the base layer did.
The paper draws ``A`` from a Gaussian; like PEFT we use PyTorch's default ``nn.Linear`` init, Kaiming-uniform with
``a = sqrt(5)``. ``scaling = alpha / r`` is the paper's choice (section 4.1), meant to spare retuning when ``r`` changes;
it does not remove that need (chapter 01 measures the first step's size changing with ``r``, so retune the learning
rate per rank); rank-stabilised LoRA (Kalajdzievski 2023) uses ``alpha / sqrt(r)`` instead.

GPT-2 uses transformers' ``Conv1D``: a linear layer whose weight is stored transposed, ``(in, out)``. We recognise it by
its ``nf`` attribute (number of output features) rather than importing transformers. ``A`` and ``B`` keep ``nn.Linear``'s
layout; only ``ΔW`` is transposed, where it meets such a weight.
"""

import math
import numbers

import torch
from torch import nn

from .decomposition import check_rank


def check_hyperparameters(r, alpha, dropout, use_rslora=False):
    """Raise ValueError naming the first of the arguments that is out of range, and its value."""
    check_rank(r)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < math.inf:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(use_rslora, bool):
        raise ValueError(f"use_rslora must be True or False, got {use_rslora!r}")


def linear_shape(layer):
    """``(in_features, out_features, fan_in_fan_out)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D``, else None."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features, False
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] == getattr(layer, "nf", None):
        return weight.shape[0], weight.shape[1], True  # Conv1D: weight (in, out)
    return None


class LoRALinear(nn.Module):
    """Wraps a linear layer (never copies it) and adds the trainable branch ``scaling · B A``."""

    def __init__(self, base_layer, r, alpha, dropout=0.0, use_rslora=False):
        super().__init__()
        check_hyperparameters(r, alpha, dropout, use_rslora)
        shape = linear_shape(base_layer)
        if shape is None:
            raise TypeError(f"LoRA wraps nn.Linear or GPT-2's Conv1D, not {type(base_layer).__name__}")
        self.in_features, self.out_features, self.fan_in_fan_out = shape
        # Same device and dtype as W0; on the meta device this allocates nothing.
        like = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.base_layer = base_layer
        self.lora_dropout = nn.Dropout(dropout)
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **like)  # weight (r, in), Kaiming-uniform a=sqrt(5)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **like)  # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as PEFT does, drawing the same numbers
        nn.init.zeros_(self.lora_B.weight)  # ΔW = B A = 0 at the start
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.merged = False  # True while ΔW is added into base_layer.weight
        self.train(base_layer.training)  # a model in eval mode must not start dropping out

    @property
    def scaling(self):
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def delta_weight(self):
        """``ΔW = scaling · B A`` laid out like ``base_layer.weight``: ``(out, in)``, or ``(in, out)`` for Conv1D.

        Computed in ``promote_types(dtype, float32)``: float32 for half precision, float64 for a float64 model (where
        ``.float()`` would be a downcast).
        """
        work = torch.promote_types(self.lora_B.weight.dtype, torch.float32)
        delta = self.scaling * (self.lora_B.weight.to(work) @ self.lora_A.weight.to(work))  # (out, r) @ (r, in)
        return delta.t() if self.fan_in_fan_out else delta

    def forward(self, x):
        if self.merged:
            return self.base_layer(x)  # W0 already holds W0 + ΔW
        if self.can_fuse(x):
            return self.fused_forward(x)
        return self.base_layer(x) + self.scaling * self.lora_B(self.lora_A(self.lora_dropout(x)))  # (..., out)

    def can_fuse(self, x):
        """Whether ``fused_forward`` computes what ``forward``'s equation does, for this input, now.

        It must be inference: eval mode (no dropout), autograd recording nothing (``torch.no_grad``,
        ``torch.inference_mode``), no autocast (which would choose each product's dtype), a CPU or CUDA tensor. And the
        base layer must be a plain ``nn.Linear`` or GPT-2 ``Conv1D`` without hooks, because ``fused_forward`` reads
        its weight and bias instead of calling it.
        """
        if self.training or torch.is_grad_enabled() or x.device.type not in ("cpu", "cuda"):
            return False
        if torch.is_autocast_enabled(x.device.type):
            return False
        base = self.base_layer
        plain = type(base) is nn.Linear or (self.fan_in_fan_out and type(base).__name__ == "Conv1D")
        return plain and not (base._forward_hooks or base._forward_pre_hooks)

    def fused_forward(self, x):
        """The same ``W0 x + b + scaling · B A x``, in three operations where the equation as written takes five.

        Written for a batch of rows, ``X`` of shape ``(N, in)``, the output is

            H = (b + scaling · (X Aᵀ) Bᵀ) + X W0ᵀ

        computed right to left in the bracket, then the large product added in place:

        1. ``XA = X Aᵀ``: one thin product, ``(N, in) -> (N, r)``, computed as ``(A Xᵀ)ᵀ``: the same sums, laid out
           as ``r`` rows of ``N``, which measured a little faster on the CPU than ``N`` rows of ``r``.
        2. ``H = b + scaling · XA Bᵀ``: one ``addmm``, the bias broadcast over the rows.
        3. ``H += X W0ᵀ``: one in-place ``addmm_``, the base layer's own product.

        Each tensor operation has a fixed cost (a kernel launch on a GPU, a trip through PyTorch's dispatcher on a
        CPU), a large part of LoRA's extra time on small inputs; the equation as written runs the base layer,
        ``A``, ``B``, the scale and the add (dropout is the identity in eval mode), with three intermediate tensors.
        Both that layout and the order are chosen by measurement (chapter 7, ``scripts/benchmark_lora_layer.py``):
        adding the thin branch into ``H`` right after the bias was written, and the large product last, was cheaper
        on the CPU than adding the branch into the base layer's finished output. ``forward`` uses this path only
        when ``can_fuse`` says so; training always runs the equation as written.
        """
        base = self.base_layer
        rows = x.reshape(-1, self.in_features)  # (N, in), N = the product of the leading dims
        xa = torch.mm(self.lora_A.weight, rows.t()).t()  # (r, in) @ (in, N) -> (r, N), viewed as (N, r)
        if base.bias is None:
            h = torch.mm(xa.mul_(self.scaling), self.lora_B.weight.t())  # (N, r) @ (r, out); xa is ours to scale
        else:
            h = torch.addmm(base.bias, xa, self.lora_B.weight.t(), alpha=self.scaling)  # b + scaling · XA Bᵀ
        w0_t = base.weight if self.fan_in_fan_out else base.weight.t()  # (in, out) either way, a view
        h.addmm_(rows, w0_t)  # H += X W0ᵀ
        return h.view(*x.shape[:-1], self.out_features)

    def extra_repr(self):
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, merged={self.merged}"


def lora_layers(model):
    """List ``(name, layer)`` for every LoRALinear in ``model``, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
