"""Findings, not anecdotes: the seeds every training run of the book uses, and the spread of a result over them.

    from minilora import lab
    for seed in lab.seeds():                       # (0, 1, 2) unless MINILORA_SEEDS="100,101,102" says otherwise
        ...
    acc = lab.Spread([0.71, 0.64, 0.69])           # median 0.69, range [0.64, 0.71], 3 values
    print(acc)                                     # "0.69 (0.64 to 0.71, 3 seeds)"
    acc.median > 0.5 and acc.low > 0.37            # a claim checked against the whole spread, not one run

A number that comes out of training depends on the seed and on the processor's floating-point kernels (sums rounded in
another order, amplified by hundreds of optimizer steps). So the book reports a result of training as a distribution
over `seeds()`: its median and its range, every seed plotted. A claim is checked with a margin that the range
supports. A single illustrative run uses `seeds()[0]`.

Some claims hold for the bundled base model only (its vocabulary, its pretraining corpus). `bundled_base()` says
whether that model is in use; `claim_for_bundled_base` skips such a claim, with a printed note, when `MINILORA_BASE`
names another model.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_SEEDS = (0, 1, 2)
SEEDS_VARIABLE = "MINILORA_SEEDS"


def seeds() -> tuple[int, ...]:
    """The seeds the book trains with: `DEFAULT_SEEDS`, or the comma-separated integers in `MINILORA_SEEDS`.

    Raises ValueError, naming the variable and its value, when the variable is set but is not a list of at least
    one distinct integer (for example `MINILORA_SEEDS="100,101,102"`).
    """
    text = os.environ.get(SEEDS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_SEEDS
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"{SEEDS_VARIABLE}={text!r} is not a comma-separated list of integers; set it like "
            f'{SEEDS_VARIABLE}="100,101,102", or unset it for the default seeds {DEFAULT_SEEDS}.'
        ) from None
    if len(set(values)) != len(values):
        raise ValueError(f"{SEEDS_VARIABLE}={text!r} repeats a seed; list each seed once.")
    return values


@dataclass(frozen=True)
class Spread:
    """A result measured several times (once per seed): its median, its range and every value.

    The median is the central value the book reports (robust to one stalled run); `low` and `high` are the smallest
    and largest values, so `high - low` is the range, and `values` keeps every run for plots.
    """

    values: tuple[float, ...]

    def __init__(self, values: Iterable[float]):
        values = tuple(float(v) for v in values)
        if not values:
            raise ValueError("Spread needs at least one value.")
        object.__setattr__(self, "values", values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def n(self) -> int:
        return len(self.values)

    def format(self, spec: str = ".2f", unit: str = "seeds") -> str:
        """'median (low to high, n seeds)' with each number formatted by `spec`, e.g. `.1%` or `.3f`."""
        if self.n == 1:
            return f"{self.median:{spec}} (1 {unit[:-1] if unit.endswith('s') else unit})"
        return f"{self.median:{spec}} ({self.low:{spec}} to {self.high:{spec}}, {self.n} {unit})"

    def __str__(self) -> str:
        return self.format()


def bundled_base() -> bool:
    """Whether `load_base()` without a name loads the bundled model (`MINILORA_BASE` unset or naming it)."""
    from .models import BASE_MODEL_DIR, BUNDLED

    name = os.environ.get("MINILORA_BASE", "").strip()
    if not name or name == BUNDLED:
        return True
    try:
        return os.path.samefile(name, BASE_MODEL_DIR)
    except OSError:
        return False


def claim_for_bundled_base(claim: str) -> bool:
    """True when the bundled base model is in use; otherwise print that `claim` is skipped, and return False.

    For hidden checks whose claim holds for the bundled model only:
        if lab.claim_for_bundled_base("the task starts at 0% before fine-tuning"):
            assert before == 0.0
    """
    if bundled_base():
        return True
    print(f"Skipped on base model {os.environ['MINILORA_BASE']!r} (checked for the bundled model only): {claim}")
    return False
