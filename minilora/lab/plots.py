"""Small matplotlib helpers for the book's figures (matplotlib is imported here only, when a helper runs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: point i is the mean of values[max(0, i - window + 1) : i + 1]."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _label_loss_axes(ax, smoothing, logy, title):
    ax.set_xlabel("step")
    ax.set_ylabel("training loss" + (f" ({smoothing}-step average)" if smoothing > 1 else ""))
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)


def plot_losses(histories: Mapping[str, Sequence[float]], ax=None, smoothing: int = 1, title: str | None = None,
                logy: bool = False):
    """Plot one training-loss curve per entry of `histories` (label -> per-step losses) and return the axes.

    `smoothing` > 1 draws a trailing moving average over that many steps instead of the raw, noisy losses.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5), dpi=90)
    for label, losses in histories.items():
        ax.plot(range(1, len(losses) + 1), smooth(list(losses), smoothing) if smoothing > 1 else losses, label=label)
    _label_loss_axes(ax, smoothing, logy, title)
    if len(histories) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_metric(xs: Sequence, ys: Mapping[str, Sequence[float]] | Sequence[float], ax=None, xlabel: str = "",
                ylabel: str = "accuracy", logx: bool = False, title: str | None = None):
    """Line plot with markers of a metric against a setting, e.g. accuracy against the rank r; returns the axes.

    `ys` is one list of values (one per x) or a dict label -> list for several lines.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5), dpi=90)
    series = ys if isinstance(ys, Mapping) else {"": ys}
    for label, values in series.items():
        ax.plot(list(xs), list(values), marker="o", label=label or None)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(xs), [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if isinstance(ys, Mapping) and len(ys) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_spread(xs: Sequence, runs: Mapping[str, Sequence[Sequence[float]]], ax=None, xlabel: str = "",
                ylabel: str = "accuracy", logx: bool = False, title: str | None = None):
    """A metric over seeds against a setting: every seed as a dot, the median as a line, the range as a band.

    `runs[label][i]` holds one value per seed at `xs[i]` (for example the accuracies of `lab.seeds()` at rank
    `xs[i]`). Returns the axes.
    """
    import statistics

    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5), dpi=90)
    xs = list(xs)
    for label, per_x in runs.items():
        per_x = [list(v) for v in per_x]
        if len(per_x) != len(xs):
            raise ValueError(f"runs[{label!r}] has {len(per_x)} entries for {len(xs)} x values")
        medians = [statistics.median(v) for v in per_x]
        (line,) = ax.plot(xs, medians, marker="o", label=f"{label} (median)" if label else "median")
        ax.fill_between(xs, [min(v) for v in per_x], [max(v) for v in per_x], color=line.get_color(), alpha=0.15,
                        linewidth=0)
        for x, values in zip(xs, per_x):
            ax.scatter([x] * len(values), values, color=line.get_color(), s=12, alpha=0.6, zorder=3)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(title="band: range over seeds, dots: each seed", fontsize="small", title_fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_loss_band(histories: Mapping[str, Sequence[Sequence[float]]], ax=None, smoothing: int = 1,
                   title: str | None = None, logy: bool = False):
    """Training-loss curves over seeds: `histories[label]` holds one per-step loss list per seed.

    Draws the per-step median (after a trailing average over `smoothing` steps) and a band from the lowest to the
    highest seed. Returns the axes.
    """
    import statistics

    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5), dpi=90)
    for label, per_seed in histories.items():
        curves = [smooth(list(h), smoothing) if smoothing > 1 else list(h) for h in per_seed]
        steps = range(1, min(len(c) for c in curves) + 1)
        columns = [[c[i - 1] for c in curves] for i in steps]
        (line,) = ax.plot(steps, [statistics.median(col) for col in columns], label=f"{label} ({len(curves)} seeds)")
        ax.fill_between(steps, [min(col) for col in columns], [max(col) for col in columns], color=line.get_color(),
                        alpha=0.2, linewidth=0)
    _label_loss_axes(ax, smoothing, logy, title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax
