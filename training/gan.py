"""The adversarial loop shared by the GAN families. DCGAN registers here; a family plugs in by supplying a
:class:`GANRecipe` (build G and D, draw G's inputs, compute the losses)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.models.checkpoint import load_checkpoint
from app.models.dcgan import DCGANConfig, DCGANDiscriminator, DCGANGenerator
from app.models.registry import FamilyModule
from app.models.sampling import draw_noise

from . import loop
from .distributed import World, no_sync, shard
from .loop import Batch, Checkpoint, EpochEnd, Logged, Run, Task, ema_copy, optimiser_step, update_ema
from .registry import register_trainer
from .runtime import StepLog, add_common_arguments, add_mend_arguments, rewrite_checkpoint, save_grid, set_threads

# G's inputs: one tensor, or a tuple of tensors passed as positional arguments (noise, condition)
GInputs = torch.Tensor | tuple[torch.Tensor, ...]


def to_device(inputs: GInputs, device: torch.device) -> GInputs:
    return tuple(t.to(device) for t in inputs) if isinstance(inputs, tuple) else inputs.to(device)


def run_generator(generator: nn.Module, inputs: GInputs) -> torch.Tensor:
    return generator(*inputs) if isinstance(inputs, tuple) else generator(inputs)


@dataclass
class GANRecipe:
    """Family-specific pieces of the adversarial loop."""

    generator: FamilyModule  # the servable module (registered family)
    discriminator: nn.Module
    # (batch size, real attributes, generator) -> G inputs (a tensor or a tuple of tensors), on the CPU
    draw_inputs: Callable[[int, torch.Tensor, torch.Generator], GInputs]
    # (D, real images, real attributes, fake images, G inputs) -> (D loss, scalars to log)
    discriminator_loss: Callable[..., tuple[torch.Tensor, dict[str, float]]]
    # (D, fake images, G inputs) -> (G loss, scalars to log)
    generator_loss: Callable[..., tuple[torch.Tensor, dict[str, float]]]
    columns: list[str]
    panels: dict[str, list[str]]
    preview_inputs: GInputs  # fixed G inputs for the per-epoch grid
    preview_rows: int = 8  # images per row of the per-epoch grid
    d_steps: int = 1  # discriminator updates per generator update
    attributes: list[str] | None = None  # the checkpoint's `attributes` (None: the data set's 40 names)
    extras: Callable[[], dict[str, torch.Tensor]] | None = None  # extra tensors to save, called at each save
    summary_columns: list[str] = field(default_factory=list)  # columns whose last-epoch mean goes into `metrics`
    # random streams the losses draw from (e.g. augmentations), saved with the train state so a resume is exact
    generators: dict[str, torch.Generator] = field(default_factory=dict)


def add_gan_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, epochs=25, batch_size=64, lr=2e-4)
    parser.add_argument("--beta1", type=float, default=0.5)
    parser.add_argument("--latent-dim", type=int, default=DCGANConfig.latent_dim)
    parser.add_argument("--g-width", type=int, default=DCGANConfig.generator_width)
    parser.add_argument("--d-width", type=int, default=DCGANConfig.discriminator_width)
    parser.add_argument(
        "--ema",
        type=float,
        default=0.999,
        help="decay of the exponential moving average of G's weights that is shipped (0 = off)",
    )
    parser.add_argument(
        "--lr-decay-after",
        type=int,
        metavar="EPOCH",
        help="after this epoch both learning rates fall linearly, epoch by epoch, towards 0 at "
        "--epochs (default: constant), to settle G where a constant rate keeps it drifting",
    )


def epoch_lr(base: float, epoch: int, epochs: int, decay_after: int | None) -> float:
    """The learning rate of ``epoch`` (1-based): ``base`` up to ``decay_after``, then a linear fall whose last
    epoch still takes 1/(epochs - decay_after + 1) of ``base``. A function of the epoch alone, so resuming needs no
    scheduler state."""
    if decay_after is None or epoch <= decay_after:
        return base
    return base * (1 - (epoch - decay_after) / (epochs - decay_after + 1))


def bce_real_fake(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))


# What every GAN's discriminator logs first: its real/fake losses, its whole loss, its real/fake accuracies.
D_COLUMNS = ["loss_d_real", "loss_d_fake", "loss_d", "acc_real", "acc_fake"]


def discriminator_scalars(
    logits_real: torch.Tensor,
    logits_fake: torch.Tensor,
    loss_real: torch.Tensor,
    loss_fake: torch.Tensor,
    loss: torch.Tensor,
) -> dict[str, float]:
    """The :data:`D_COLUMNS` of one discriminator step."""
    return {
        "loss_d_real": loss_real.item(),
        "loss_d_fake": loss_fake.item(),
        "loss_d": loss.item(),
        "acc_real": (logits_real > 0).float().mean().item(),
        "acc_fake": (logits_fake < 0).float().mean().item(),
    }


RecipeFactory = Callable[[argparse.Namespace, list[str], torch.Tensor], GANRecipe]


def slice_inputs(inputs: GInputs, world: World) -> GInputs:
    """This rank's rows of G's inputs drawn for the whole global batch (the one-process run's draws)."""
    if isinstance(inputs, tuple):
        return tuple(shard(t, world) for t in inputs)
    return shard(inputs, world)


def train_gan(args: argparse.Namespace, make_recipe: RecipeFactory) -> None:
    """``make_recipe(args, attribute names, training-set attributes (N, 40))`` supplies the family's pieces.

    Under torchrun, G and D train in DistributedDataParallel (see :mod:`.distributed`); one process is the loop it
    always was, so train states written before DDP existed still resume step for step.
    """
    if args.lr_decay_after is not None and not 0 <= args.lr_decay_after < args.epochs:
        raise SystemExit(
            f"--lr-decay-after must be in [0, --epochs), got {args.lr_decay_after} with --epochs {args.epochs}"
        )
    loop.train(args, lambda run: gan_task(run, make_recipe))


def gan_task(run: Run, make_recipe: RecipeFactory) -> Task:
    """The adversarial part of the loop: ``recipe.d_steps`` updates of D per update of G, a moving average of G
    shipped with its BatchNorm statistics recalibrated, learning rates set per epoch."""
    args, device, train_split = run.args, run.device, run.train
    recipe = make_recipe(args, train_split.attribute_names, train_split.attributes)
    world = run.modules_built()
    generator, discriminator = recipe.generator.to(device), recipe.discriminator.to(device)
    # A moving average of G smooths the GAN's oscillation; it is what gets shipped (Karras et al., progressive GAN).
    shipped = ema_copy(generator, args.ema)
    # The modules called in the step: DDP-wrapped (several processes), compiled (--compile); saved: the plain ones.
    g_call, d_call = run.prepare(generator), run.prepare(discriminator)
    betas = (args.beta1, 0.999)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=betas)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=betas)
    scaler_g, scaler_d = run.grad_scaler(), run.grad_scaler()
    noise_generator = torch.Generator().manual_seed(args.seed + 1)

    def start_epoch(epoch: int) -> None:
        for optimizer in (optimizer_g, optimizer_d):
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr(args.lr, epoch, args.epochs, args.lr_decay_after)

    def step(batch: Batch, epoch: int, number: int) -> Logged | None:
        real, attributes = run.to_batch(batch.images), batch.attributes.to(device)
        # G's inputs for the whole global batch, from the one stream every rank holds; this rank's rows
        inputs = recipe.draw_inputs(len(batch.indices), train_split.attributes[batch.indices], noise_generator)
        inputs = to_device(slice_inputs(inputs, world), device)
        update_g = batch.number % recipe.d_steps == 0  # else a D-only step: G waits for its turn
        with run.autocast():
            with torch.set_grad_enabled(update_g):  # no graph (and no DDP reduction) for a fake only D sees
                fake = run_generator(g_call, inputs)
            loss_d, scalars_d = recipe.discriminator_loss(d_call, real, attributes, fake.detach(), inputs)
        optimiser_step(loss_d, optimizer_d, scaler_d)
        if not update_g:
            return None
        with run.autocast(), no_sync(d_call):  # D's gradients of G's loss are thrown away
            loss_g, scalars_g = recipe.generator_loss(d_call, fake, inputs)
        optimiser_step(loss_g, optimizer_g, scaler_g)
        update_ema(shipped, generator, args.ema)
        return Logged({**scalars_d, **scalars_g})

    def end_epoch(end: EpochEnd) -> Checkpoint:
        if shipped is not generator:
            recalibrate_batchnorm(
                shipped,
                lambda n, rng: recipe.draw_inputs(
                    n, train_split.attributes[torch.randint(len(train_split), (n,), generator=rng)], rng
                ),
                device,
            )
        with torch.inference_mode():
            shipped.eval()
            preview = run_generator(shipped, to_device(recipe.preview_inputs, device))
            save_grid(preview, run.out_dir / f"samples_epoch{end.epoch:03d}.png", nrow=recipe.preview_rows)
        end.log.plot(run.out_dir / "curves.png", recipe.panels)
        return Checkpoint(
            shipped,
            epoch_means(end.log, end.epoch, recipe.summary_columns),
            extras=recipe.extras() if recipe.extras else None,
            attributes=recipe.attributes,
        )

    return Task(
        name=generator.family,
        columns=recipe.columns,
        modules={"generator": generator, "discriminator": discriminator, "shipped": shipped},
        optimizers={"optimizer_g": optimizer_g, "optimizer_d": optimizer_d},
        scalers={"scaler_g": scaler_g, "scaler_d": scaler_d},
        generators={"noise": noise_generator, **recipe.generators},
        global_streams=False,  # every draw is from the named streams (train states were always written so)
        step=step,
        end_epoch=end_epoch,
        postfix=lambda scalars: {k: f"{v:.3f}" for k, v in scalars.items() if k in ("loss_d", "loss_g")},
        start_epoch=start_epoch,
    )


@torch.no_grad()
def recalibrate_batchnorm(
    generator: nn.Module,
    draw_inputs: Callable[[int, torch.Generator], Any],
    device: torch.device,
    batches: int = 32,
    batch_size: int = 64,
    seed: int = 0,
) -> None:
    """Re-estimate the BatchNorm statistics of an averaged (EMA) generator by running it on fresh inputs.

    The running statistics copied from the live generator belong to other weights than the averaged ones; served
    as they are, they give washed-out, low-contrast faces. A cumulative average (momentum None) over ``batches``
    forward passes in train mode gives the statistics the averaged weights really produce.
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    rng = torch.Generator().manual_seed(seed)
    generator.train()
    for _ in range(batches):
        run_generator(generator, to_device(draw_inputs(batch_size, rng), device))
    for norm in norms:
        norm.momentum = 0.1  # PyTorch's default, so later training steps behave as usual
    generator.eval()


def add_recalibrate_arguments(parser: argparse.ArgumentParser) -> None:
    add_mend_arguments(parser, "noise-only GAN generator checkpoint (dcgan) to recalibrate in place")
    parser.add_argument("--batches", type=int, default=32)


@register_trainer("gan-recalibrate", add_recalibrate_arguments)
def recalibrate_checkpoint(args: argparse.Namespace) -> None:
    """Recalibrate the BatchNorm statistics of a checkpoint written before training did it (see above)."""
    set_threads(args)
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.family != "dcgan":
        raise SystemExit(f"gan-recalibrate: only dcgan checkpoints (noise-only inputs); got {checkpoint.family}")
    model = checkpoint.model_as(DCGANGenerator)
    recalibrate_batchnorm(
        model, lambda n, rng: draw_noise(model.latent_shape, n, rng), torch.device("cpu"), args.batches
    )
    rewrite_checkpoint(args.checkpoint, checkpoint, model, {**checkpoint.metrics, "batchnorm_recalibrated": True})
    print(f"{args.checkpoint}: BatchNorm statistics recalibrated over {args.batches} batches")


def epoch_means(log: StepLog, epoch: int, columns: list[str]) -> dict[str, Any]:
    """``train_<column>``: the mean of each column over the steps of ``epoch`` (what the model cards show)."""
    if not columns or not any(row["epoch"] == epoch for row in log.rows):
        return {}
    return {f"train_{column}": round(log.epoch_mean(epoch, column), 4) for column in columns}


def dcgan_recipe(args: argparse.Namespace, attribute_names: list[str], labels: torch.Tensor | None = None) -> GANRecipe:
    config = DCGANConfig(
        latent_dim=args.latent_dim,
        generator_width=args.g_width,
        discriminator_width=args.d_width,
        image_size=args.image_size,
    )
    generator = DCGANGenerator(config)

    def draw_inputs(n: int, attributes: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return draw_noise(generator.latent_shape, n, rng)

    def discriminator_loss(d, real, attributes, fake, inputs):
        logits_real, logits_fake = d(real), d(fake)
        loss_real, loss_fake = bce_real_fake(logits_real, True), bce_real_fake(logits_fake, False)
        loss = loss_real + loss_fake
        return loss, discriminator_scalars(logits_real, logits_fake, loss_real, loss_fake, loss)

    def generator_loss(d, fake, inputs):
        loss = bce_real_fake(d(fake), True)  # non-saturating loss
        return loss, {"loss_g": loss.item()}

    return GANRecipe(
        generator,
        DCGANDiscriminator(config),
        draw_inputs,
        discriminator_loss,
        generator_loss,
        columns=[*D_COLUMNS, "loss_g"],
        panels={"D loss": ["loss_d_real", "loss_d_fake"], "D accuracy": ["acc_real", "acc_fake"], "G loss": ["loss_g"]},
        preview_inputs=draw_noise(generator.latent_shape, 32, torch.Generator().manual_seed(args.seed)),
    )


@register_trainer("dcgan", add_gan_arguments)
def train_dcgan(args: argparse.Namespace) -> None:
    train_gan(args, dcgan_recipe)
