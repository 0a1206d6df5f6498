"""Fine-tune and evaluate a causal LM on a task: the few loops the book needs, kept short.

Training sees `prompt + target + newline` and computes the loss on the target and newline tokens only (labels
-100 elsewhere), so the model learns to answer and to stop, not to predict the prompt. Batches are right-padded with an
attention mask. Evaluation decodes greedily in batches (left-padded, as generation needs) and counts exact matches.

All of it works the same on a model with minilora's LoRA layers, on a PEFT model (`peft.get_peft_model`), and on a
fully trainable model: `train` optimizes whichever parameters have `requires_grad`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .tasks import Example, Task


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's (if installed) and torch's global random generators."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def _examples(task: Task | Sequence[Example], split: str, limit: int | None = None) -> list[Example]:
    examples = getattr(task, split) if isinstance(task, Task) else list(task)
    return examples[:limit] if limit is not None else examples


# Every answer ends with a newline: the token that ended each verse the base model read in pretraining, so it knows
# how to predict it, whereas its eos token never occurred there. Generation stops at a newline or at eos.
ANSWER_END = "\n"


def _stop_ids(tokenizer) -> list[int]:
    """The token ids that end an answer: the newline (if it is one token) and eos."""
    newline = tokenizer(ANSWER_END, add_special_tokens=False)["input_ids"] if ANSWER_END else []
    return (newline if len(newline) == 1 else []) + [tokenizer.eos_token_id]


def _encode(tokenizer, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + end of answer) per example; the prompt and target are tokenized separately, so the
    boundary between them is exact (the target starts with a space, where byte-level BPE splits words anyway)."""
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    targets = tokenizer([e.target for e in examples], add_special_tokens=False)["input_ids"]
    end = _stop_ids(tokenizer)[0]
    return [(p, t + [end]) for p, t in zip(prompts, targets)]


def _batch(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input_ids, attention_mask and labels (-100 on prompt and padding), each (B, T)."""
    length = max(len(p) + len(t) for p, t in encoded)
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    labels = torch.full((len(encoded), length), -100, dtype=torch.long)
    for i, (p, t) in enumerate(encoded):
        n = len(p) + len(t)
        ids[i, :n] = torch.tensor(p + t)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(t)
    return ids, mask, labels


def _target_loss(model, ids, mask, labels, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the labelled tokens: the logits at position t predict the token at t + 1."""
    logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, vocab)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction=reduction
    )


def train(
    model,
    tokenizer,
    task: Task | Sequence[Example],
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    weight_decay: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """Fine-tune with AdamW for `steps` steps on random batches of the task's train split; return the per-step losses.

    The defaults suit a LoRA adapter on the bundled model (about 30 s on two CPU cores); full fine-tuning wants a
    smaller learning rate (about 1e-3).

    Only parameters with `requires_grad` are optimized: the LoRA factors of a minilora or PEFT model, or every
    weight of a plain model (full fine-tuning). The batches come from a generator seeded with `seed`, and torch's
    global seed is set to `seed` too (for dropout), so a run is repeatable. The model is in train mode while it
    trains and back in eval mode when this returns.

    `optimizer`, if given, replaces the AdamW built from `lr` and `weight_decay` (for parameter groups with their own
    learning rates, as LoRA+ gives B a larger one than A); it must hold only parameters that require grad.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("No parameter requires grad: inject LoRA layers first, or unfreeze the model.")
    encoded = _encode(tokenizer, _examples(task, "train"))
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    history = []
    model.train()
    bar = tqdm(range(steps), desc="train", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        ids, mask, labels = _batch([encoded[i] for i in idx], tokenizer.pad_token_id)
        loss = _target_loss(model, ids, mask, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{history[-1]:.3f}", refresh=False)
    model.eval()
    return history


@torch.no_grad()
def validation_loss(
    model, tokenizer, task: Task | Sequence[Example], split: str = "validation", limit: int | None = None,
    batch_size: int = 64,
) -> float:
    """Mean cross-entropy (nats per token) of the target tokens and the newline that ends them, given the prompt."""
    encoded = _encode(tokenizer, _examples(task, split, limit))
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        ids, mask, labels = _batch(encoded[start : start + batch_size], tokenizer.pad_token_id)
        total += _target_loss(model, ids, mask, labels, reduction="sum").item()
        count += int((labels != -100).sum())
    model.train(was_training)
    return total / count


@torch.no_grad()
def predict(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 20, batch_size: int = 64) -> list[str]:
    """Greedy continuations of the prompts (without the prompts), each cut before the first newline or eos, as text."""
    was_training = model.training
    model.eval()
    # Rows that finish early are filled with the pad token (= eos), and transformers then warns, wrongly, that the
    # attention mask may be missing: batched decoding gives what decoding one prompt at a time gives (a test checks).
    hf_logger = logging.getLogger("transformers.modeling_utils")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        outputs = []
        for start in range(0, len(prompts), batch_size):
            outputs += _predict_batch(model, tokenizer, list(prompts[start : start + batch_size]), max_new_tokens)
    finally:
        hf_logger.setLevel(level)
        model.train(was_training)
    return outputs


def _predict_batch(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    stops = _stop_ids(tokenizer)
    # Left padding: every prompt ends at the last column, where generation continues.
    enc = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stops,
    )
    texts = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), len(row))
        texts.append(tokenizer.decode(row[:end]))
    return texts


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Fraction of predictions equal to their target, ignoring leading and trailing whitespace."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        return 0.0
    return sum(p.strip() == t.strip() for p, t in zip(predictions, targets)) / len(targets)


def evaluate(
    model, tokenizer, task: Task | Sequence[Example], split: str = "validation", limit: int | None = None,
    batch_size: int = 64,
) -> float:
    """Exact-match accuracy in [0, 1] of greedy decoding on a split (its first `limit` examples if given)."""
    examples = _examples(task, split, limit)
    longest = max(len(ids) for ids in tokenizer([e.target for e in examples], add_special_tokens=False)["input_ids"])
    predictions = predict(model, tokenizer, [e.prompt for e in examples], longest + 1, batch_size)
    return exact_match(predictions, [e.target for e in examples])


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 20) -> str:
    """The greedy continuation of one prompt (without the prompt), stopping before a newline or eos, or after
    max_new_tokens."""
    return predict(model, tokenizer, [prompt], max_new_tokens)[0]
