"""What every training loop shares: seeding, devices, the run folder (CSV log, curves, grids), checkpoint metadata."""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from app.models.preprocess import PreprocessSpec
from app.services.model_store import resolve_device  # noqa: F401  (one definition, shared with the service)

from .plots import plot_smoothed, saved_figure


def add_common_arguments(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float) -> None:
    parser.add_argument("--data", required=True, help="CelebA folder in the official layout")
    parser.add_argument("--out", required=True, help="checkpoint to write (.safetensors), rewritten every epoch")
    parser.add_argument("--run-dir", help="where logs, curves and grids go (default: runs/<checkpoint name>)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--limit", type=int, help="use only the first N training images (smoke runs)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (smoke runs)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--crop-fraction", type=float, default=PreprocessSpec.crop_fraction)
    parser.add_argument("--image-size", type=int, default=64)


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    return resolve_device(args.device)


def preprocess_spec(args: argparse.Namespace) -> PreprocessSpec:
    return PreprocessSpec(size=args.image_size, crop_fraction=args.crop_fraction)


def run_dir(args: argparse.Namespace) -> Path:
    path = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.out).stem
    path.mkdir(parents=True, exist_ok=True)
    return path


def code_version() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def training_metadata(
    args: argparse.Namespace, *, images: int, epochs_done: int, steps: int, started: float
) -> dict[str, Any]:
    return {
        "data": str(args.data),
        "train_images": images,
        "epochs": epochs_done,
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "code_version": code_version(),
        "seconds": round(time.time() - started, 1),
        # Every command-line option, so a checkpoint says which recipe made it (loss weights, schedules, widths).
        "options": {
            name: value
            for name, value in sorted(vars(args).items())
            if value is None or isinstance(value, (str, int, float, bool))
        },
    }


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches over one epoch; the last partial batch is dropped (BatchNorm dislikes tiny batches)."""
    order = torch.randperm(count, generator=generator)
    for start in range(0, count - batch_size + 1, batch_size):
        yield order[start : start + batch_size]


class StepLog:
    """Per-step scalars appended to ``losses.csv``, kept in memory for plotting."""

    def __init__(self, path: Path, columns: list[str], resume_after_step: int | None = None):
        """``resume_after_step``: a continued run keeps the rows in ``path`` up to that step (a run stopped mid-epoch
        logged steps its saved state does not hold; they are taken again) instead of starting the file afresh."""
        self.path, self.columns = path, ["epoch", "step", *columns]
        self.rows: list[dict[str, float]] = []
        if resume_after_step is not None and path.is_file():
            with open(path, newline="") as handle:
                rows = [{key: float(row[key]) for key in self.columns} for row in csv.DictReader(handle)]
            self.rows = [row for row in rows if row["step"] <= resume_after_step]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            writer.writerows([self._formatted(row) for row in self.rows])

    def _formatted(self, row: dict[str, float]) -> list[str]:
        return [f"{row[key]:.6g}" for key in self.columns]

    def append(self, **values: float) -> None:
        row = {key: float(values[key]) for key in self.columns}
        self.rows.append(row)
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow(self._formatted(row))

    def plot(self, path: Path, panels: dict[str, list[str]], smooth: int = 25) -> None:
        """One subplot per panel title, each with its columns, moving-averaged over ``smooth`` steps."""
        with saved_figure(path, panels=len(panels)) as (_, axes):
            for axis, (title, columns) in zip(axes, panels.items()):
                for column in columns:
                    plot_smoothed(axis, self.rows, column, smooth=smooth)
                axis.set_title(title)
                axis.legend()


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    save_image(images.detach().float().cpu(), path, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
