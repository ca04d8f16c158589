"""Conditional Glow training: bits/dim under uniform dequantisation (+ the class head's BCE), Adam with a linear
warm-up then cosine decay, gradient-norm clipping, and a stop naming the step if the loss goes non-finite.

Every epoch: validation bits/dim, sample grids at temperatures 0.5 / 0.7 / 1.0 (attributes drawn from the training
frequencies, the same noise at every temperature and epoch), the attribute directions, and the checkpoint.

Attribute directions: for each attribute, mean latent of training faces that have it minus mean latent of those that
do not, over up to ``--direction-images`` faces. The flow is unconditional (y enters only the priors), so a face's
latent z = f(x) is the same whatever attribute vector one might condition on: there is no "encode with its own y or
a neutral y" choice to make, and the service applies the directions to uploads whose attributes it does not know.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from pathlib import Path

import torch

from app.models.attributes import FREQUENCIES_KEY, LABEL_VECTORS_KEY, pack_label_vectors
from app.models.checkpoint import load_checkpoint
from app.models.glow import COVARIANCE_KEY, DIRECTIONS_KEY, Glow, GlowConfig

from . import loop
from .data import PackedSplit
from .distributed import rank_seed, shard
from .loop import Batch, Checkpoint, EpochEnd, Logged, Run, Task, one_model
from .plots import plot_smoothed, saved_figure
from .registry import register_trainer
from .runtime import StepLog, add_common_arguments, save_grid
from .train_state import RunPosition, fast_forward

PREVIEW_TEMPERATURES = (0.5, 0.7, 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, epochs=10, batch_size=32, lr=1e-3)
    parser.add_argument("--levels", type=int, default=GlowConfig.levels, help="L: number of scales")
    parser.add_argument("--steps", type=int, default=GlowConfig.steps, help="K: flow steps per scale")
    parser.add_argument("--hidden", type=int, default=GlowConfig.hidden, help="coupling-network width")
    parser.add_argument("--coupling", choices=("affine", "additive"), default=GlowConfig.coupling)
    parser.add_argument(
        "--n-bits", type=int, default=GlowConfig.n_bits, help="pixel depth modelled (8, or 5 as in the Glow paper)"
    )
    parser.add_argument(
        "--y-condition",
        type=float,
        default=GlowConfig.y_condition,
        help="weight of the class head's attribute BCE (bits per image); 0 turns it off",
    )
    parser.add_argument("--warmup", type=int, default=500, help="optimiser steps of linear learning-rate warm-up")
    parser.add_argument("--clip-norm", type=float, default=50.0, help="gradient-norm clipping threshold")
    parser.add_argument(
        "--init-images", type=int, default=256, help="training images for the data-dependent actnorm init"
    )
    parser.add_argument(
        "--direction-images", type=int, default=2000, help="training faces averaged for the attribute directions"
    )
    parser.add_argument(
        "--hflip",
        action="store_true",
        help="mirror each training face left-right with probability 1/2 (a fresh choice per face and epoch): the "
        "14k training faces are few enough for the flow to overfit them",
    )
    parser.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from this Glow checkpoint's weights (same architecture; --y-condition may differ) instead of a "
        "fresh initialisation: more epochs for a shipped model without repeating the ones it has had",
    )


def mirrored(images: torch.Tensor, indices: torch.Tensor, faces: int, epoch: int, seed: int) -> torch.Tensor:
    """``images`` (the training faces at ``indices``, of ``faces``) each mirrored left-right or not, by a coin drawn per
    face and epoch from ``seed``: the same choice on any rank and after a resume, with no generator state to keep."""
    coins = torch.rand(faces, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return torch.where((coins[indices] < 0.5)[:, None, None, None], images.flip(3), images)


def learning_rate_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.05 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.inference_mode()
def validation_bits_per_dim(
    model: Glow, split: PackedSplit, device: torch.device, seed: int, batch_size: int = 128
) -> float:
    """Mean bits/dim of a split under p(x | y) with its true attributes; uniform dequantisation from a fixed seed,
    so the number is the same bound training optimises and comparable between epochs."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, len(split), batch_size):
        images, attributes = split.batch(torch.arange(start, min(start + batch_size, len(split))))
        total += model.bits_per_dim(images.to(device), attributes.to(device), "uniform", generator).sum().item()
    model.train()
    return total / len(split)


@torch.inference_mode()
def attribute_directions(
    model: Glow, split: PackedSplit, device: torch.device, count: int, seed: int, batch_size: int = 128
) -> torch.Tensor:
    """(A, latent_dim): mean latent of faces with each attribute minus mean latent of faces without it, over ``count``
    training faces chosen at random (fixed seed). An attribute no face (or every face) has gets a zero direction."""
    model.eval()
    chosen = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
    with_sum = torch.zeros(split.attributes.shape[1], model.latent_dim, dtype=torch.float64)
    total_sum = torch.zeros(model.latent_dim, dtype=torch.float64)
    with_count = torch.zeros(split.attributes.shape[1], dtype=torch.float64)
    for start in range(0, len(chosen), batch_size):
        images, attributes = split.batch(chosen[start : start + batch_size])
        latents = model.encode_images(images.to(device)).double().cpu()
        attributes = attributes.double()
        with_sum += attributes.T @ latents
        total_sum += latents.sum(0)
        with_count += attributes.sum(0)
    model.train()
    without_count = len(chosen) - with_count
    present = (with_count > 0) & (without_count > 0)
    mean_with = with_sum / with_count.clamp(min=1)[:, None]
    mean_without = (total_sum[None] - with_sum) / without_count.clamp(min=1)[:, None]
    return ((mean_with - mean_without) * present[:, None]).float()


def load_initial_weights(model: Glow, path: str) -> dict[str, object]:
    """Copy a Glow checkpoint's weights into ``model`` (its actnorms then count as initialised) and return what the
    continued checkpoint records of its start: the file, its digest and its own training. Only the class head's loss
    weight may differ between the two configs: every other field changes the tensors or what they mean."""
    checkpoint = load_checkpoint(path)
    source = GlowConfig(**checkpoint.config)
    differing = [
        name
        for name in asdict(source)
        if name != "y_condition" and getattr(source, name) != getattr(model.config, name)
    ]
    if differing:
        raise SystemExit(
            f"--init-from {path}: its config differs in {', '.join(differing)} "
            f"({', '.join(f'{name}={getattr(source, name)!r}' for name in differing)}); give the same options"
        )
    model.load_state_dict(checkpoint.model_as(Glow).state_dict())
    earlier = checkpoint.training
    return {
        "checkpoint": Path(path).name,
        "sha256": checkpoint.sha256[:12],
        "epochs": earlier.get("epochs"),
        "steps": earlier.get("steps"),
        **({"init_from": earlier["init_from"]} if "init_from" in earlier else {}),
    }


def plot_curves(log: StepLog, valid: list[tuple[int, float]], path: Path, smooth: int = 25) -> None:
    """Train bits/dim (moving average) with validation bits/dim at each epoch's end; the class head's bits beside."""
    with saved_figure(path, panels=2) as (_, (left, right)):
        for axis, column in ((left, "bits_per_dim"), (right, "class_bits")):
            plot_smoothed(axis, log.rows, column, label=f"train {column}", smooth=smooth)
        if valid:
            left.plot([s for s, _ in valid], [v for _, v in valid], "o-", label="valid bits_per_dim")
        left.set_title("bits / dim")
        right.set_title("attribute BCE (bits / image)")
        for axis in (left, right):
            axis.legend()


@register_trainer("glow", add_arguments)
def train(args: argparse.Namespace) -> None:
    loop.train(args, glow_task)


def glow_task(run: Run) -> Task:
    """Glow's part of the loop: data-dependent actnorm init, Adam with warm-up and cosine decay, gradient clipping,
    a stop naming the step at a non-finite loss; per epoch validation bits/dim, samples at three temperatures, the
    attribute directions and the statistics the service conditions with."""
    args, device, train_split = run.args, run.device, run.train
    valid_split = run.split("valid")
    config = GlowConfig(
        image_size=run.spec.size,
        levels=args.levels,
        steps=args.steps,
        hidden=args.hidden,
        coupling=args.coupling,
        n_bits=args.n_bits,
        num_attributes=train_split.attributes.shape[1],
        y_condition=args.y_condition,
    )
    model = Glow(config).to(device)
    # read once: the continued checkpoint records where it started at every epoch
    started_from = load_initial_weights(model, args.init_from) if args.init_from else None
    frequencies = train_split.attributes.mean(0)
    covariance = torch.cov(train_split.attributes.float().T)  # the service conditions on several attributes with it

    # Data-dependent actnorm init on the first (larger) batch, before the optimiser sees any parameter.
    init_indices = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(args.seed))[
        : args.init_images
    ]
    init_images, init_attributes = train_split.batch(init_indices)
    model.initialize(init_images.to(device), init_attributes.to(device))

    world = run.modules_built()
    model_call = run.prepare(GlowLoss(model))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scaler = run.grad_scaler()
    total_steps = args.epochs * run.steps_per_epoch
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, args.warmup, total_steps)
    )
    # dequantisation noise: each rank its own stream (rank 0's is the one-process run's)
    noise = torch.Generator().manual_seed(rank_seed(args.seed + 1, world.rank))
    preview_attributes = (
        (torch.rand((32, config.num_attributes), generator=torch.Generator().manual_seed(args.seed + 2)) < frequencies)
        .float()
        .to(device)
    )
    valid_curve: list[tuple[int, float]] = []

    def start(position: RunPosition) -> None:
        fast_forward(scheduler, position.step)

    def step(batch: Batch, epoch: int, number: int) -> Logged:
        images = batch.images
        if args.hflip:
            images = mirrored(images, shard(batch.indices, world), len(train_split), epoch, args.seed)
        with run.autocast():
            loss, bits_per_dim, class_bits = model_call(run.to_batch(images), batch.attributes.to(device), noise)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"glow: loss became {loss.item()} at step {number} (epoch {epoch}); try a lower --lr, a longer "
                "--warmup, a smaller --clip-norm, --coupling additive or --n-bits 5"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients (a no-op without fp16)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
        if not torch.isfinite(grad_norm) and not scaler.is_enabled():
            raise FloatingPointError(
                f"glow: gradient norm became {grad_norm.item()} at step {number} (epoch {epoch}); "
                "try a lower --lr or a longer --warmup"
            )
        scaler.step(optimizer)  # fp16: skips a step whose gradients overflowed, and lowers the scale
        scaler.update()
        scheduler.step()
        return Logged(
            {
                "loss": loss.item(),
                "bits_per_dim": bits_per_dim.item(),
                "class_bits": class_bits.item(),
                "grad_norm": grad_norm.item(),
            },
            {"lr": float(scheduler.get_last_lr()[0])},
        )

    def end_epoch(end: EpochEnd) -> Checkpoint:
        valid_bits = validation_bits_per_dim(model, valid_split, device, args.seed)
        valid_curve.append((end.step, valid_bits))
        print(f"epoch {end.epoch}: valid bits/dim {valid_bits:.4f}", flush=True)

        model.eval()
        with torch.inference_mode():
            for temperature in PREVIEW_TEMPERATURES:
                samples = model.sample(preview_attributes, temperature, torch.Generator().manual_seed(args.seed + 3))
                save_grid(samples, run.out_dir / f"samples_epoch{end.epoch:03d}_t{temperature:.1f}.png")
        model.train()
        plot_curves(end.log, valid_curve, run.out_dir / "curves.png")
        directions = attribute_directions(model, train_split, device, args.direction_images, args.seed)
        return Checkpoint(
            model,
            metrics={
                "valid_bits_per_dim": round(valid_bits, 5),
                "train_bits_per_dim": round(end.log.epoch_mean(end.epoch, "bits_per_dim"), 5),
                "n_bits": config.n_bits,
                "valid_images": len(valid_split),
                "direction_images": min(args.direction_images, len(train_split)),
            },
            training={
                "warmup": args.warmup,
                "clip_norm": args.clip_norm,
                "init_images": args.init_images,
                "hflip": args.hflip,
                **({"init_from": started_from} if started_from else {}),
            },
            extras={
                DIRECTIONS_KEY: directions,
                FREQUENCIES_KEY: frequencies,
                COVARIANCE_KEY: covariance,
                # the service draws the attributes a request leaves open jointly from these
                LABEL_VECTORS_KEY: pack_label_vectors(train_split.attributes),
            },
            dtype=None,  # float32: half-precision weights would cost the flow its exact invertibility
        )

    def postfix(scalars: dict[str, float]) -> dict[str, str]:
        return {"bpd": f"{scalars['bits_per_dim']:.3f}", "y": f"{scalars['class_bits']:.1f}"}

    columns = ["loss", "bits_per_dim", "class_bits", "grad_norm", "lr"]
    parts = one_model(model, optimizer, scaler)  # the train state's names
    return Task("glow", columns, step, end_epoch, postfix, generators={"noise": noise}, start=start, **parts)


class GlowLoss(torch.nn.Module):
    """Glow's training loss as a module's forward, so that DistributedDataParallel (which hooks ``forward`` only)
    can wrap it."""

    def __init__(self, model: Glow):
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, attributes: torch.Tensor, noise: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.loss(images, attributes, noise)
