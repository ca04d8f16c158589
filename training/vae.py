"""VAE training: MSE + lambda_KL * KL, validation MSE every epoch, checkpoint rewritten every epoch."""

from __future__ import annotations

import argparse

import torch

from app.models.checkpoint import load_checkpoint
from app.models.sampling import draw_noise
from app.models.vae import VAE, VAEConfig, vae_loss

from . import loop
from .data import PackedSplit, load_split
from .loop import Batch, Checkpoint, EpochEnd, Logged, Run, Task, one_model, optimiser_step
from .registry import register_trainer
from .runtime import (
    add_common_arguments,
    add_mend_arguments,
    resolve_device,
    rewrite_checkpoint,
    save_grid,
    set_threads,
)
from .train_state import RunPosition, fast_forward


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, epochs=30, batch_size=64, lr=1e-3)
    parser.add_argument("--latent-dim", type=int, default=VAEConfig.latent_dim)
    parser.add_argument(
        "--widths",
        type=lambda s: tuple(int(w) for w in s.split(",")),
        default=VAEConfig.widths,
        help="comma-separated encoder widths, e.g. 32,64,128,256",
    )
    parser.add_argument("--lambda-kl", type=float, default=VAEConfig.lambda_kl)


@torch.inference_mode()
def validation_mse(model: VAE, split: PackedSplit, device: torch.device, batch_size: int = 256) -> float:
    """Pixel-wise MSE on the [-1, 1] scale of posterior-mean reconstructions, averaged over every pixel."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(split), batch_size):
        images, _ = split.batch(torch.arange(start, min(start + batch_size, len(split))))
        images = images.to(device)
        total += torch.sum((model.reconstruct(images) - images) ** 2).item()
        count += images.numel()
    model.train()
    return total / count


@torch.inference_mode()
def encode_means(model: VAE, split: PackedSplit, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of every image of ``split``, (N, latent_dim) on the CPU."""
    was_training = model.training
    model.eval()
    means = [
        model.encode(split.batch(torch.arange(start, min(start + batch_size, len(split))))[0].to(device))[0].cpu()
        for start in range(0, len(split), batch_size)
    ]
    model.train(was_training)
    return torch.cat(means)


def fit_sampling_prior(model: VAE, split: PackedSplit, device: torch.device) -> dict[str, object]:
    """Fit the VAE's sampling prior to the training latents; returns what goes into the checkpoint's metrics."""
    model.fit_prior(encode_means(model, split, device))
    return {"sampling_prior": f"gaussian fitted to {len(split)} training latents"}


def add_fit_prior_arguments(parser: argparse.ArgumentParser) -> None:
    add_mend_arguments(parser, "VAE checkpoint whose sampling prior is (re)fitted in place")
    parser.add_argument("--data", required=True, help="CelebA folder in the official layout (train split used)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--device", default="auto")


@register_trainer("vae-fit-prior", add_fit_prior_arguments)
def refit_prior(args: argparse.Namespace) -> None:
    """Refit the sampling prior of a trained VAE (checkpoints written before the prior existed get one too)."""
    set_threads(args)
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint, device, allow_missing=("prior_mean", "prior_scale_tril"))
    if checkpoint.family != "vae":
        raise SystemExit(f"vae-fit-prior: {args.checkpoint} is a {checkpoint.family} checkpoint, not a vae")
    split = load_split(args.data, "train", checkpoint.preprocess, args.limit)
    metrics = {**checkpoint.metrics, **fit_sampling_prior(checkpoint.model_as(VAE), split, device)}
    rewrite_checkpoint(args.checkpoint, checkpoint, checkpoint.model, metrics)
    print(f"{args.checkpoint}: {metrics['sampling_prior']}")


@register_trainer("vae", add_arguments)
def train(args: argparse.Namespace) -> None:
    loop.train(args, vae_task)


def vae_task(run: Run) -> Task:
    """The VAE's part of the loop: one model, Adam with cosine decay, validation MSE and a refitted prior per epoch."""
    args, device = run.args, run.device
    valid_split = run.split("valid")
    config = VAEConfig(
        image_size=run.spec.size, widths=args.widths, latent_dim=args.latent_dim, lambda_kl=args.lambda_kl
    )
    model = VAE(config).to(device)
    run.modules_built()
    model_call = run.prepare(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scaler = run.grad_scaler()
    total_steps = args.epochs * run.steps_per_epoch
    # Cosine decay to 5% lets late epochs polish the reconstructions instead of bouncing around.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total_steps), eta_min=args.lr * 0.05)
    fixed_noise = draw_noise(model.latent_shape, 32, torch.Generator().manual_seed(args.seed))

    def step(batch: Batch, epoch: int, number: int) -> Logged:
        images = run.to_batch(batch.images)
        with run.autocast():
            reconstruction, mu, logvar = model_call(images)
            loss, mse, kl = vae_loss(reconstruction.float(), images, mu.float(), logvar.float(), config.lambda_kl)
        optimiser_step(loss, optimizer, scaler)
        scheduler.step()
        return Logged({"loss": loss.item(), "mse": mse.item(), "kl": kl.item()})

    def end_epoch(end: EpochEnd) -> Checkpoint:
        valid_mse = validation_mse(model, valid_split, device)
        print(f"epoch {end.epoch}: valid MSE {valid_mse:.5f}", flush=True)
        metrics = {
            "valid_mse": round(valid_mse, 6),
            "valid_images": len(valid_split),
            **fit_sampling_prior(model, run.train, device),
        }
        model.eval()
        with torch.inference_mode():
            save_grid(model.generate(fixed_noise.to(device)), run.out_dir / f"samples_epoch{end.epoch:03d}.png")
        model.train()
        end.log.plot(run.out_dir / "curves.png", {"reconstruction (MSE)": ["mse"], "KL": ["kl"]})
        return Checkpoint(model, metrics)

    def start(position: RunPosition) -> None:
        fast_forward(scheduler, position.step)

    def postfix(scalars: dict[str, float]) -> dict[str, str]:
        return {"mse": f"{scalars['mse']:.4f}", "kl": f"{scalars['kl']:.0f}"}

    parts = one_model(model, optimizer, scaler)  # the train state's names
    return Task("vae", ["loss", "mse", "kl"], step, end_epoch, postfix, start=start, **parts)
