"""Held-out verses of the base model's pretraining corpus: the test of what the base model knew before fine-tuning.

The bundled base model (see `base_model/README.md`) was pretrained on the King James Bible with every 20th verse
held out. `base_model/heldout_verses.txt` ships every 4th of those held-out verses (Bible verses 80, 160, 240, ...
of the 31,102, counted from Genesis 1:1; 388 verses, one a line), written by the same `read_corpus` and `split` as
`scripts/pretrain_base.py` (the corpus sha256 matched the model card's). The model never saw them in training, and
neither did its tokenizer. The text is public domain (the translation of 1611).

    from minilora import lab
    verses = lab.heldout_verses()                         # 388 strings
    lab.corpus_loss(model, tokenizer)                     # nats per token on those verses, as in pretraining

`corpus_loss` measures the loss the way pretraining measured its validation loss: the verses joined by newlines
into one token stream, cut into non-overlapping windows of `context + 1` tokens, mean next-token cross-entropy over
every position of every window. A rise of this loss after fine-tuning on a task is what the book calls forgetting.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .models import BASE_MODEL_DIR

HELDOUT_FILE = BASE_MODEL_DIR / "heldout_verses.txt"
HELDOUT_EVERY = 80  # Bible verse numbers 80, 160, ...: every 4th of pretraining's held-out every-20th verse


def heldout_verses(limit: int | None = None, path: str | Path = HELDOUT_FILE) -> list[str]:
    """The held-out KJV verses, in Bible order (the first `limit` of them if given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No held-out verses at {path}; reinstall minilora (the file ships with base_model/).")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of verses or None, got {limit!r}")
    verses = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return verses[:limit] if limit is not None else verses


def corpus_ids(tokenizer, verses: list[str]) -> torch.Tensor:
    """One stream of token ids: every verse followed by a newline, as pretraining encoded its corpus."""
    ids: list[int] = []
    for row in tokenizer([v + "\n" for v in verses], add_special_tokens=False)["input_ids"]:
        ids.extend(row)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def corpus_loss(model, tokenizer, verses: list[str] | None = None, context: int = 128, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats per token) of `verses` (default: all held-out verses).

    Windows of `context + 1` tokens, non-overlapping: window i is ids[i·context : i·context + context + 1], so every
    token after the first is predicted once. The model is evaluated in eval mode and left in the mode it was in.
    """
    if context < 1:
        raise ValueError(f"context must be a positive number of tokens, got {context!r}")
    ids = corpus_ids(tokenizer, heldout_verses() if verses is None else list(verses))
    n = (len(ids) - 1) // context
    if n < 1:
        raise ValueError(f"{len(ids)} tokens make no window of {context + 1}; pass more verses or a smaller context")
    windows = torch.stack([ids[i * context : i * context + context + 1] for i in range(n)])
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for chunk in windows.split(batch_size):
            logits = model(input_ids=chunk[:, :-1]).logits.float()
            total += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
    finally:
        model.train(was_training)
    return total / (n * context)
