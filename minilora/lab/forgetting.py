"""Learning against forgetting: fine-tune the base model on a task, and measure what it learned and what it lost.

    from minilora import lab
    row = lab.forgetting_run(lab.FineTune("lora", r=8, targets=("c_attn",)), seed=0)
    row["accuracy"], row["corpus_loss_rise"]     # task accuracy, and held-out KJV loss after minus before

What it learned is the task's exact-match accuracy on its validation split (`lab.evaluate`). What it forgot is the
rise of the held-out pretraining loss (`lab.corpus_loss`): ΔL = L_after − L_before in nats per token, on verses the
base model never trained on. Biderman et al. (2024), "LoRA Learns Less and Forgets Less", plot the same two axes for
code and mathematics against a base model's general abilities.

LoRA+ (Hayou et al. 2024) gives B a learning rate λ times A's: `loraplus_optimizer` builds AdamW with two parameter
groups from minilora's parameter names (every ``lora_B`` weight in one group at λ·lr, the ``lora_A`` weights in the
other at lr), the grouping of PEFT's `create_loraplus_optimizer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .corpus import corpus_loss, heldout_verses
from .models import load_base
from .tasks import get_task
from .training import evaluate, train

ATTENTION = ("c_attn",)  # GPT-2's fused q, k, v projection: the LoRA paper's choice (it adapted q and v)
ALL_LINEAR = ("c_attn", "c_proj", "c_fc")  # every linear layer of the blocks (c_proj is in attention and MLP)


@dataclass(frozen=True)
class FineTune:
    """How to fine-tune: `kind` "full" (every weight trains) or "lora" (rank `r`, scale alpha = `alpha`, on the
    modules named in `targets`), at learning rate `lr`; `loraplus_ratio` λ gives LoRA's B factors λ·lr."""

    kind: str
    r: int = 0
    targets: tuple[str, ...] = field(default=ATTENTION)
    lr: float = 3e-3
    alpha: float | None = None  # None: alpha = r, so scaling = 1 at every rank
    loraplus_ratio: float = 1.0

    def __post_init__(self):
        if self.kind not in ("full", "lora"):
            raise ValueError(f"kind must be 'full' or 'lora', got {self.kind!r}")
        if self.kind == "lora" and self.r < 1:
            raise ValueError(f"a LoRA fine-tune needs a rank r >= 1, got r={self.r!r}")
        if self.kind == "full" and self.loraplus_ratio != 1.0:
            raise ValueError("loraplus_ratio applies to LoRA's B factors; full fine-tuning has none")

    @property
    def label(self) -> str:
        if self.kind == "full":
            return "full"
        where = "attn" if tuple(self.targets) == ATTENTION else "all" if tuple(self.targets) == ALL_LINEAR else (
            "+".join(self.targets))
        plus = f" λ={self.loraplus_ratio:g}" if self.loraplus_ratio != 1.0 else ""
        return f"LoRA r={self.r} {where}{plus}"


def loraplus_optimizer(model, lr: float, ratio: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with LoRA+'s two groups: parameters named ``...lora_B...`` (and any 1-d one, a bias, as PEFT's
    `create_loraplus_optimizer` does) at ``ratio · lr``, the others (the ``lora_A`` factors) at ``lr``.

    Only parameters that require grad are included. Raises ValueError when no trainable parameter is a LoRA B
    factor (inject LoRA first) or when the ratio is not positive.
    """
    if not ratio > 0:
        raise ValueError(f"the LoRA+ ratio λ must be positive, got {ratio!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    in_b = [("lora_B" in n or p.ndim == 1) for n, p in named]  # PEFT's rule: biases (1-d) go with B
    b = [p for (n, p), yes in zip(named, in_b) if yes]
    a = [p for (n, p), yes in zip(named, in_b) if not yes]
    if not any("lora_B" in n for n, _ in named):
        raise ValueError("no trainable parameter is named lora_B: inject LoRA layers before building LoRA+ groups")
    return torch.optim.AdamW([{"params": a, "lr": lr}, {"params": b, "lr": ratio * lr}], lr=lr,
                             weight_decay=weight_decay)


def prepare(model, spec: FineTune):
    """Make `model` trainable as `spec` says (in place) and return the optimizer to train it with."""
    import minilora

    if spec.kind == "full":
        model.requires_grad_(True)
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr, weight_decay=0.0)
    minilora.inject(model, target_modules=list(spec.targets), r=spec.r,
                    alpha=spec.r if spec.alpha is None else spec.alpha)
    return loraplus_optimizer(model, spec.lr, spec.loraplus_ratio)


def forgetting_run(spec: FineTune, seed: int, task: str = "largest", steps: int = 150, batch_size: int = 16,
                   verses: list[str] | None = None, progress: bool = False, base=None,
                   corpus_before: float | None = None) -> dict:
    """Fine-tune a fresh copy of the base model as `spec` says and return what it learned and forgot.

    Returns a dict: label, kind, r, targets, lr, loraplus_ratio, seed, steps, trainable (parameter count),
    accuracy (task validation exact match), task_loss (final training loss, mean of the last 10 steps),
    corpus_before, corpus_after and corpus_loss_rise (nats per token on the held-out verses).
    `base` is an optional `(model, tokenizer)` to copy instead of loading the base model again.
    """
    import copy

    from .training import set_seed

    set_seed(seed)  # LoRA's A factors are drawn at injection: the seed decides them too
    model, tokenizer = (copy.deepcopy(base[0]), base[1]) if base is not None else load_base()
    verses = heldout_verses() if verses is None else verses
    before = corpus_loss(model, tokenizer, verses) if corpus_before is None else corpus_before
    optimizer = prepare(model, spec)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    history = train(model, tokenizer, get_task(task), steps=steps, batch_size=batch_size, seed=seed,
                    progress=progress, optimizer=optimizer)
    after = corpus_loss(model, tokenizer, verses)
    return {
        "label": spec.label, "kind": spec.kind, "r": spec.r, "targets": list(spec.targets), "lr": spec.lr,
        "loraplus_ratio": spec.loraplus_ratio, "seed": seed, "task": task, "steps": steps,
        "batch_size": batch_size, "trainable": trainable,
        "accuracy": evaluate(model, tokenizer, get_task(task)),
        "task_loss": sum(history[-10:]) / len(history[-10:]),
        "corpus_before": before, "corpus_after": after, "corpus_loss_rise": after - before,
    }
