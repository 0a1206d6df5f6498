"""Small fine-tuning tasks for the book: plain-text prompts and targets, generated deterministically.

Each task is a list of `Example(prompt, target)` pairs split into train and validation; a model solves an example when
its greedy continuation of `prompt` is `target` (exact match, ignoring surrounding spaces). The base model was
pretrained on the King James Bible only, so it knows these words (each is one token of its vocabulary, with the
leading space) but not the tasks: it scores 0 on all of them.

  largest   "in: four seven twelve out:"  -> " twelve"               the largest of 3 to 5 number words
  smallest  "in: four seven twelve out:"  -> " four"                 the smallest of them
  antonyms  "in: weep strong north out:"  -> " laugh weak south"     replace each of 3 words by its opposite

`largest` and `smallest` share their prompts, word for word, in both splits: only the adapter tells the model which
to answer, which makes them the pair for swapping adapters. `largest` is also the task where LoRA's rank shows:
chapter 05 of the book sweeps r on it, and its smallest ranks stall at a shortcut (always answering `twelve`) that is
right about a third of the time.

`antonyms` is the hard one. Its answers must be lined up with the words by position, and the base model has no
circuit for that (it never learned to copy from its context; see the model card), whereas `largest` and `smallest`
only pick a word by what it is.

Every task is rebuilt from a fixed seed with its own `random.Random`, so the global random state is never touched
and the examples are the same on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    prompt: str  # "in: weep strong north out:"
    target: str  # " laugh weak south" (starts with a space: the continuation of the prompt)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    train: list[Example]
    validation: list[Example]

    def __repr__(self) -> str:
        return f"Task({self.name!r}: {len(self.train)} train / {len(self.validation)} validation examples)"


NUMBERS = "one two three four five six seven eight nine ten eleven twelve".split()  # in order of value

# Pairs of opposites; the task maps both ways (day -> night and night -> day).
OPPOSITES = [
    ("day", "night"), ("light", "darkness"), ("good", "evil"), ("heaven", "earth"), ("man", "woman"),
    ("father", "mother"), ("son", "daughter"), ("brother", "sister"), ("king", "queen"), ("up", "down"),
    ("life", "death"), ("old", "young"), ("rich", "poor"), ("wise", "foolish"), ("love", "hate"),
    ("first", "last"), ("east", "west"), ("north", "south"), ("left", "right"), ("high", "low"),
    ("great", "small"), ("hot", "cold"), ("sweet", "bitter"), ("clean", "unclean"), ("open", "shut"),
    ("give", "take"), ("come", "go"), ("before", "after"), ("above", "beneath"), ("begin", "end"),
    ("war", "peace"), ("joy", "sorrow"), ("friend", "enemy"), ("strong", "weak"), ("full", "empty"),
    ("white", "black"), ("bless", "curse"), ("buy", "sell"), ("laugh", "weep"), ("lord", "servant"),
    ("summer", "winter"), ("morning", "evening"), ("truth", "lie"), ("many", "few"),
]
OPPOSITE = {a: b for a, b in OPPOSITES} | {b: a for a, b in OPPOSITES}

N_TRAIN, N_VALIDATION = 2000, 200


def _distinct(n: int, draw) -> list[tuple[str, ...]]:
    """The first n distinct word lists returned by repeated calls of draw()."""
    seen, lists = set(), []
    while len(lists) < n:
        ws = draw()
        if ws not in seen:
            seen.add(ws)
            lists.append(ws)
    return lists


def _number_lists(seed: int, n: int) -> list[tuple[str, ...]]:
    """n distinct lists of distinct number words; each list's length is 3, 4 or 5 with equal chance."""
    rng = random.Random(seed)
    return _distinct(n, lambda: tuple(rng.sample(NUMBERS, rng.choice((3, 4, 5)))))


def _split(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """The last N_VALIDATION (distinct) examples are the validation split, the rest the train split."""
    return examples[: len(examples) - N_VALIDATION], examples[len(examples) - N_VALIDATION :]


def _words_task(name: str, description: str, lists, output) -> Task:
    examples = [Example(f"in: {' '.join(ws)} out:", " " + " ".join(output(ws))) for ws in lists]
    train, validation = _split(examples)
    return Task(name, description, train, validation)


def _value(word: str) -> int:
    return NUMBERS.index(word)


def make_largest(seed: int = 0) -> Task:
    return _words_task(
        "largest",
        "Name the largest of 3 to 5 number words: 'in: four seven twelve out:' -> ' twelve'.",
        _number_lists(seed, N_TRAIN + N_VALIDATION),
        lambda ws: [max(ws, key=_value)],
    )


def make_smallest(seed: int = 0) -> Task:
    return _words_task(
        "smallest",
        "Name the smallest of 3 to 5 number words: 'in: four seven twelve out:' -> ' four'.",
        _number_lists(seed, N_TRAIN + N_VALIDATION),  # the same prompts as make_largest(seed)
        lambda ws: [min(ws, key=_value)],
    )


def make_antonyms(seed: int = 0, length: int = 3) -> Task:
    """Lists of `length` distinct words, each replaced by its opposite. Every word occurs in the train split, so
    validation asks for new combinations of known pairs, never for a pair the model has not seen."""
    rng = random.Random(seed)
    words = sorted(OPPOSITE)
    lists = _distinct(N_TRAIN + N_VALIDATION, lambda: tuple(rng.sample(words, length)))
    return _words_task(
        "antonyms",
        f"Replace each of {length} words by its opposite: 'in: weep strong north out:' -> ' laugh weak south'.",
        lists,
        lambda ws: [OPPOSITE[w] for w in ws],
    )


TASKS: dict[str, Task] = {t.name: t for t in (make_largest(), make_smallest(), make_antonyms())}


def get_task(name: str) -> Task:
    """The task called `name`, one of `TASKS` ("largest", "smallest", "antonyms")."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"No task {name!r}; the tasks are {sorted(TASKS)}") from None
