"""VAE training: MSE + lambda_KL * KL, validation MSE every epoch, checkpoint rewritten every epoch."""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from app.models.checkpoint import load_checkpoint, save_checkpoint
from app.models.sampling import draw_noise
from app.models.vae import VAE, VAEConfig, vae_loss

from .common import (
    StepLog,
    add_common_arguments,
    autocast,
    grad_scaler,
    prepare_for_training,
    preprocess_spec,
    resolve_device,
    run_dir,
    save_grid,
    seed_rank,
    setup,
    shuffled_batches,
    to_batch,
    training_metadata,
)
from .data import PackedSplit, load_split
from .distributed import barrier, check_batch, mean_scalars, shard
from .registry import register_trainer
from .train_state import (
    RunPosition,
    TrainState,
    fast_forward,
    load_run_state,
    rng_streams,
    save_run_state,
)


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
    parser.add_argument("checkpoint", help="VAE checkpoint whose sampling prior is (re)fitted in place")
    parser.add_argument("--data", required=True, help="CelebA folder in the official layout (train split used)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)


@register_trainer("vae-fit-prior", add_fit_prior_arguments)
def refit_prior(args: argparse.Namespace) -> None:
    """Refit the sampling prior of a trained VAE (checkpoints written before the prior existed get one too)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint, device, allow_missing=("prior_mean", "prior_scale_tril"))
    if checkpoint.family != "vae":
        raise SystemExit(f"vae-fit-prior: {args.checkpoint} is a {checkpoint.family} checkpoint, not a vae")
    split = load_split(args.data, "train", checkpoint.preprocess, args.limit)
    metrics = {**checkpoint.metrics, **fit_sampling_prior(checkpoint.model_as(VAE), split, device)}
    save_checkpoint(
        args.checkpoint,
        checkpoint.model,
        preprocess=checkpoint.preprocess,
        attributes=checkpoint.attributes,
        metrics=metrics,
        training=checkpoint.training,
        extras=checkpoint.extras,
    )
    print(f"{args.checkpoint}: {metrics['sampling_prior']}")


@register_trainer("vae", add_arguments)
def train(args: argparse.Namespace) -> None:
    device = setup(args)
    spec = preprocess_spec(args)
    train_split = load_split(args.data, "train", spec, args.limit)
    valid_split = load_split(args.data, "valid", spec, args.limit)
    config = VAEConfig(image_size=spec.size, widths=args.widths, latent_dim=args.latent_dim, lambda_kl=args.lambda_kl)
    model = VAE(config).to(device)
    world = seed_rank(args)
    check_batch(args.batch_size, world)
    model_call = prepare_for_training(model, world, device, args)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scaler = grad_scaler(args, device)
    total_steps = args.epochs * (len(train_split) // args.batch_size)
    # Cosine decay to 5% lets late epochs polish the reconstructions instead of bouncing around.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total_steps), eta_min=args.lr * 0.05)
    out_dir = run_dir(args)
    order = torch.Generator().manual_seed(args.seed)
    fixed_noise = draw_noise(model.latent_shape, 32, torch.Generator().manual_seed(args.seed))
    state: TrainState = {
        "modules": {"model": model},
        "optimizers": {"optimizer": optimizer},
        "generators": {"order": order, **rng_streams(device)},
        "scalers": {"scaler": scaler},
    }
    barrier(world)
    position = load_run_state(out_dir, world.rank, state) if args.resume else RunPosition(0, 0, 0.0)
    fast_forward(scheduler, position.step)
    log = (
        StepLog(out_dir / "losses.csv", ["loss", "mse", "kl"], position.step if args.resume else None)
        if world.is_main
        else None
    )
    started, step = time.time() - position.seconds, position.step
    for epoch in range(position.epoch + 1, args.epochs + 1):
        progress = tqdm(
            list(shuffled_batches(len(train_split), args.batch_size, order)),
            desc=f"vae epoch {epoch}",
            disable=not world.is_main,
        )
        for global_indices in progress:
            images, _ = train_split.batch(shard(global_indices, world))
            images = to_batch(images, args, device)
            with autocast(args, device):
                reconstruction, mu, logvar = model_call(images)
                loss, mse, kl = vae_loss(reconstruction.float(), images, mu.float(), logvar.float(), config.lambda_kl)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            scalars = mean_scalars({"loss": loss.item(), "mse": mse.item(), "kl": kl.item()}, world, device)
            if log is not None:
                log.append(epoch=epoch, step=step, **scalars)
            progress.set_postfix(mse=f"{scalars['mse']:.4f}", kl=f"{scalars['kl']:.0f}")
            if args.max_steps and step >= args.max_steps:
                break
        if log is not None:
            valid_mse = validation_mse(model, valid_split, device)
            print(f"epoch {epoch}: valid MSE {valid_mse:.5f}", flush=True)
            metrics = {
                "valid_mse": round(valid_mse, 6),
                "valid_images": len(valid_split),
                **fit_sampling_prior(model, train_split, device),
            }
            model.eval()
            with torch.inference_mode():
                save_grid(model.generate(fixed_noise.to(device)), out_dir / f"samples_epoch{epoch:03d}.png")
            model.train()
            log.plot(out_dir / "curves.png", {"reconstruction (MSE)": ["mse"], "KL": ["kl"]})
            save_checkpoint(
                args.out,
                model,
                preprocess=spec,
                attributes=train_split.attribute_names,
                metrics=metrics,
                training=training_metadata(
                    args, images=len(train_split), epochs_done=epoch, steps=step, started=started, device=device
                ),
            )
        save_run_state(out_dir, world.rank, RunPosition(epoch, step, time.time() - started), state)
        barrier(world)
        if (args.max_steps and step >= args.max_steps) or epoch == args.stop_after:
            break
