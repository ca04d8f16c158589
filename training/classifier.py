"""Attribute classifier training: multi-label BCE over CelebA's 40 attributes, validation accuracy every epoch.

The checkpoint (rewritten every epoch) reports per-attribute validation accuracy at threshold 0.5, their mean, and
the majority baseline (each attribute predicted as its training-set majority) so the gain over guessing is visible.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from app.models.classifier import AttributeClassifier, ClassifierConfig

from . import loop
from .data import PackedSplit
from .distributed import shard
from .loop import Batch, Checkpoint, EpochEnd, Logged, Run, Task, one_model, optimiser_step
from .plots import plot_smoothed, saved_figure
from .registry import register_trainer
from .runtime import StepLog, add_common_arguments
from .train_state import RunPosition, fast_forward


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, epochs=22, batch_size=64, lr=2e-3)
    parser.add_argument(
        "--widths",
        type=lambda s: tuple(int(w) for w in s.split(",")),
        default=ClassifierConfig.widths,
        help="comma-separated channels per stride-2 stage, e.g. 32,64,128,256",
    )
    parser.add_argument(
        "--convs-per-stage",
        type=int,
        default=ClassifierConfig.convs_per_stage,
        help="3x3 convs per stage (1: only the stride-2 one)",
    )
    parser.add_argument("--dropout", type=float, default=ClassifierConfig.dropout)
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW decoupled weight decay")
    parser.add_argument(
        "--pos-weight",
        action="store_true",
        help="weight positives by negatives/positives per attribute (helps rare attributes' recall, "
        "costs plain accuracy; off by default)",
    )
    parser.add_argument(
        "--grey-probability",
        type=float,
        default=0.0,
        help="share of training images made grey (ITU-R 601 luma, as PIL's 'L'), so black-and-white photos are "
        "not read as Pale_Skin or grey-haired",
    )


# ITU-R 601-2 luma, the weights of PIL's convert("L"): a training image made grey as an uploaded grey photo is.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def make_grey(images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """``images`` (N, 3, H, W) with the rows where ``which`` (N,) is true replaced by their luma in all channels."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    luma = (images * weights).sum(1, keepdim=True).expand_as(images)
    return torch.where(which.to(images.device)[:, None, None, None], luma, images)


@torch.inference_mode()
def evaluate_split(
    model: AttributeClassifier, split: PackedSplit, device: torch.device, batch_size: int = 256
) -> tuple[float, torch.Tensor]:
    """Mean BCE and per-attribute accuracy (threshold 0.5) over a whole split."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, torch.zeros(split.attributes.shape[1], dtype=torch.float64)
    for start in range(0, len(split), batch_size):
        images, targets = split.batch(torch.arange(start, min(start + batch_size, len(split))))
        logits = model(images.to(device)).float().cpu()
        loss_sum += F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").item()
        correct += ((logits > 0).float() == targets).sum(0).double()
    model.train(was_training)
    return loss_sum / split.attributes.numel(), correct / len(split)


def majority_accuracy(train: PackedSplit, valid: PackedSplit) -> torch.Tensor:
    """Per-attribute validation accuracy of always answering the attribute's training-set majority."""
    majority = (train.attributes.mean(0) >= 0.5).float()
    return (valid.attributes == majority).float().mean(0).double()


def accuracy_metrics(
    names: list[str], accuracy: torch.Tensor, baseline: torch.Tensor, valid_loss: float, images: int
) -> dict[str, Any]:
    return {
        "valid_mean_accuracy": round(accuracy.mean().item(), 4),
        "valid_accuracy": {name: round(value, 4) for name, value in zip(names, accuracy.tolist())},
        "valid_loss": round(valid_loss, 5),
        "valid_images": images,
        "majority_mean_accuracy": round(baseline.mean().item(), 4),
        "majority_accuracy": {name: round(value, 4) for name, value in zip(names, baseline.tolist())},
    }


def plot_curves(path: Path, log: StepLog, epochs: list[dict[str, float]], baseline: float, smooth: int = 25) -> None:
    """Two panels: smoothed training BCE per step; validation mean accuracy per epoch against the majority baseline."""
    with saved_figure(path, panels=2) as (_, (loss_axis, accuracy_axis)):
        plot_smoothed(loss_axis, log.rows, "loss", label="train BCE", smooth=smooth)
        loss_axis.plot([row["step"] for row in epochs], [row["valid_loss"] for row in epochs], "o-", label="valid BCE")
        loss_axis.set_title("loss")
        loss_axis.legend()
        accuracy_axis.plot(
            [row["epoch"] for row in epochs],
            [row["valid_mean_accuracy"] for row in epochs],
            "o-",
            label="valid mean accuracy",
        )
        accuracy_axis.axhline(baseline, color="grey", linestyle="--", label="majority baseline")
        accuracy_axis.set_title("validation accuracy (mean of 40 attributes)")
        accuracy_axis.set_xlabel("epoch")
        accuracy_axis.legend()


def read_epoch_rows(path: Path, up_to_epoch: int) -> list[dict[str, float]]:
    """``valid.csv``'s rows of the epochs a resumed run keeps."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]
    return [row for row in rows if row["epoch"] <= up_to_epoch]


@register_trainer("classifier", add_arguments)
def train(args: argparse.Namespace) -> None:
    if not 0 <= args.grey_probability <= 1:
        raise SystemExit(f"classifier: --grey-probability must be in [0, 1], got {args.grey_probability}")
    loop.train(args, classifier_task)


def write_epoch_rows(path: Path, rows: list[dict[str, float]]) -> None:
    """``valid.csv`` afresh with the kept epochs' rows."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "valid_loss", "valid_mean_accuracy"])
        for row in rows:
            writer.writerow(
                [int(row["epoch"]), int(row["step"]), f"{row['valid_loss']:.6g}", f"{row['valid_mean_accuracy']:.4f}"]
            )


def classifier_task(run: Run) -> Task:
    """The classifier's part of the loop: multi-label BCE with flips (and greys), AdamW under one cycle, validation
    accuracy against the majority baseline every epoch (``valid.csv``)."""
    args, device, train_split = run.args, run.device, run.train
    valid_split = run.split("valid")
    names = train_split.attribute_names
    config = ClassifierConfig(
        image_size=run.spec.size,
        widths=args.widths,
        convs_per_stage=args.convs_per_stage,
        num_attributes=len(names),
        dropout=args.dropout,
    )
    model = AttributeClassifier(config).to(device)
    world = run.modules_built()
    model_call = run.prepare(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scaler = run.grad_scaler()
    total_steps = args.epochs * run.steps_per_epoch
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=max(1, total_steps), pct_start=0.15
    )
    pos_weight = None
    if args.pos_weight:
        positives = train_split.attributes.mean(0).clamp(1e-3, 1 - 1e-3)
        pos_weight = ((1 - positives) / positives).to(device)

    baseline = majority_accuracy(train_split, valid_split)
    flips = torch.Generator().manual_seed(args.seed + 1)
    greys = torch.Generator().manual_seed(args.seed + 2)
    epochs_csv = run.out_dir / "valid.csv"
    epoch_rows: list[dict[str, float]] = []

    def start(position: RunPosition) -> None:
        fast_forward(scheduler, min(position.step, max(0, total_steps - 1)))  # as the step steps it (below)
        if world.is_main:
            epoch_rows.extend(read_epoch_rows(epochs_csv, position.epoch) if args.resume else [])
            write_epoch_rows(epochs_csv, epoch_rows)
            print(
                f"{len(train_split)} training / {len(valid_split)} validation images; majority baseline "
                f"{baseline.mean().item():.4f}; {sum(p.numel() for p in model.parameters())} parameters",
                flush=True,
            )
        model.train()

    def step(batch: Batch, epoch: int, number: int) -> Logged:
        # the flips of the whole global batch, drawn on every rank from one stream; this rank's share
        flip = shard(torch.rand(len(batch.indices), generator=flips) < 0.5, world)
        images = torch.where(flip[:, None, None, None], batch.images.flip(3), batch.images)
        grey = shard(torch.rand(len(batch.indices), generator=greys) < args.grey_probability, world)
        images = make_grey(images, grey)
        images, targets = run.to_batch(images), batch.attributes.to(device)
        with run.autocast():
            logits = model_call(images)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=pos_weight)
        optimiser_step(loss, optimizer, scaler)
        if number < total_steps:  # OneCycleLR raises when stepped past its total
            scheduler.step()
        return Logged({"loss": loss.item()}, {"lr": optimizer.param_groups[0]["lr"]})

    def end_epoch(end: EpochEnd) -> Checkpoint:
        valid_loss, accuracy = evaluate_split(model, valid_split, device)
        metrics = accuracy_metrics(names, accuracy, baseline, valid_loss, len(valid_split))
        epoch_rows.append(
            {
                "epoch": end.epoch,
                "step": end.step,
                "valid_loss": valid_loss,
                "valid_mean_accuracy": metrics["valid_mean_accuracy"],
            }
        )
        with open(epochs_csv, "a", newline="") as handle:
            csv.writer(handle).writerow(
                [end.epoch, end.step, f"{valid_loss:.6g}", f"{metrics['valid_mean_accuracy']:.4f}"]
            )
        print(
            f"epoch {end.epoch}: valid BCE {valid_loss:.4f}, mean accuracy {metrics['valid_mean_accuracy']:.4f} "
            f"(majority {metrics['majority_mean_accuracy']:.4f})",
            flush=True,
        )
        plot_curves(run.out_dir / "curves.png", end.log, epoch_rows, metrics["majority_mean_accuracy"])
        augmentation = "random horizontal flip" + (
            f", grey with probability {args.grey_probability:g}" if args.grey_probability else ""
        )
        return Checkpoint(
            model,
            metrics,
            training={
                "weight_decay": args.weight_decay,
                "pos_weight": bool(args.pos_weight),
                "augmentation": augmentation,
            },
        )

    def postfix(scalars: dict[str, float]) -> dict[str, str]:
        return {"bce": f"{scalars['loss']:.4f}"}

    streams = {"flips": flips, "greys": greys}
    parts = one_model(model, optimizer, scaler)  # the train state's names
    return Task("classifier", ["loss", "lr"], step, end_epoch, postfix, generators=streams, start=start, **parts)
