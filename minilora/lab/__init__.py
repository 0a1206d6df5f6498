"""The book's lab: a bundled base model, small tasks, and the loops to fine-tune and evaluate on them.

    from minilora import lab
    model, tokenizer = lab.load_base()             # bundled GPT-2 (offline); lab.load_base("gpt2") for the real one
    task = lab.get_task("largest")                 # lab.TASKS: "largest", "smallest", "antonyms"
    history = lab.train(model, tokenizer, task)    # AdamW on whatever requires grad; returns per-step losses
    lab.evaluate(model, tokenizer, task)           # greedy exact-match accuracy on the validation split
    lab.validation_loss(model, tokenizer, task)    # cross-entropy of the targets, nats per token
    lab.generate(model, tokenizer, "in: four seven twelve out:")   # greedy continuation
    for seed in lab.seeds(): ...                   # the seeds every run uses (MINILORA_SEEDS overrides them)
    lab.Spread(accuracies)                         # median and range over seeds: "0.69 (0.64 to 0.71, 3 seeds)"

The core package (`minilora`) never imports this one; it needs transformers, tokenizers and tqdm (plots.py also
needs matplotlib): `pip install minilora[lab]`.
"""

from .corpus import corpus_loss, heldout_verses
from .findings import Spread, bundled_base, claim_for_bundled_base, seeds
from .models import BASE_MODEL_DIR, BaseModelUnavailable, load_base
from .tasks import TASKS, Example, Task, get_task
from .training import evaluate, exact_match, generate, predict, set_seed, train, validation_loss

__all__ = [
    "BASE_MODEL_DIR",
    "BaseModelUnavailable",
    "Example",
    "Spread",
    "TASKS",
    "Task",
    "bundled_base",
    "corpus_loss",
    "claim_for_bundled_base",
    "evaluate",
    "exact_match",
    "generate",
    "get_task",
    "heldout_verses",
    "load_base",
    "predict",
    "seeds",
    "set_seed",
    "train",
    "validation_loss",
]
