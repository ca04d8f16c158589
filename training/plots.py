"""Figures that trainers and evaluators write: matplotlib's set-up in one place, and smoothed per-step curves."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


@contextmanager
def saved_figure(
    path: Path, *, panels: int = 1, size: tuple[float, float] = (5.0, 3.6), dpi: int = 90
) -> Iterator[tuple[Any, list[Any]]]:
    """Yields ``(figure, axes)`` for a row of ``panels`` subplots, each ``size`` inches; on exit lays the figure
    out, writes it to ``path`` and closes it (pyplot keeps every open figure alive otherwise)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: training and CI machines have no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(size[0] * panels, size[1]), squeeze=False)
    try:
        yield figure, list(axes[0])
        figure.tight_layout()
        figure.savefig(path, dpi=dpi)
    finally:
        plt.close(figure)


def plot_smoothed(
    axis: Any, rows: Sequence[dict[str, float]], column: str, *, label: str | None = None, smooth: int = 25
) -> None:
    """One per-step column of a training log against the step, as a moving average over ``smooth`` steps
    (minibatch losses are too noisy to read raw)."""
    steps = torch.tensor([row["step"] for row in rows])
    values = torch.tensor([row[column] for row in rows])
    window = max(1, min(smooth, len(values)))
    averaged = F.avg_pool1d(values[None, None], window, 1).flatten()
    axis.plot(steps[window - 1 :].numpy(), averaged.numpy(), label=label or column)
    axis.set_xlabel("step")
