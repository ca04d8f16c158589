"""InfoGAN training on the shared adversarial loop (:mod:`training.gan`).

The body that D and Q share learns the real/fake task only; Q's head learns the codes on D's side from the
(detached) body features of the fakes, and G minimises the non-saturating adversarial loss plus ``--info-weight``
x Q's cross-entropy on the codes it was given, summed over the codes (the paper's lambda = 1 for categorical codes),
through the body and the head. Two variants failed on this data: training Q only in G's step (Q's head then learns
only as G's side-kick: 26% code accuracy after 5 epochs) and letting the info loss train the shared body too (D
then told real from fake perfectly from the first epoch on; with the paper's FC stem G collapsed to one face).

With ``--q-augment``, Q reads randomly shifted, zoomed and low-passed copies of the fakes (:func:`augment_for_q`),
in both steps, while D's real/fake head reads them as they are: a code must then survive what does not change a
face to be recovered at all.
"""

from __future__ import annotations

import argparse
from typing import cast

import torch
import torch.nn.functional as F

from app.models.infogan import (
    InfoGANConfig,
    InfoGANDiscriminator,
    InfoGANGenerator,
    draw_codes,
    recognizer_extras,
    sweep_inputs,
)
from app.models.sampling import draw_noise

from .distributed import unwrap
from .gan import D_COLUMNS, GANRecipe, add_gan_arguments, bce_real_fake, discriminator_scalars, train_gan
from .registry import register_trainer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gan_arguments(parser)
    parser.set_defaults(
        latent_dim=InfoGANConfig.noise_dim,
        g_width=InfoGANConfig.generator_width,
        d_width=InfoGANConfig.discriminator_width,
    )
    parser.add_argument("--codes", type=int, default=InfoGANConfig.n_codes, help="number of categorical codes")
    parser.add_argument("--categories", type=int, default=InfoGANConfig.n_categories, help="categories per code")
    parser.add_argument("--q-hidden", type=int, default=InfoGANConfig.q_hidden, help="width of Q's hidden layer")
    parser.add_argument(
        "--q-augment",
        type=float,
        default=0.0,
        help="Q reads fakes randomly shifted by up to this fraction of the side, zoomed by up to as much and "
        "low-passed to half resolution (0: Q reads the fakes as they are)",
    )
    parser.add_argument(
        "--info-weight",
        type=float,
        default=1.0,
        help="weight of the mutual-information loss (sum over codes of Q's cross-entropy)",
    )


def code_cross_entropy(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean over the batch and the codes of Q's cross-entropy; (N, K, C) logits, (N, K) codes."""
    return F.cross_entropy(logits.flatten(0, 1), codes.flatten())


def augment_for_q(images: torch.Tensor, strength: float, rng: torch.Generator) -> torch.Tensor:
    """Per-image random shift and zoom (up to ``strength`` of the side), then a low-pass to half resolution.

    A code Q can read only through these must live in what survives them: the face's layout, shapes and colours,
    not a pixel-exact pattern. (With the paper's 10 codes this alone did not make them stronger; with 3 codes each
    moves an attribute visibly: docs/results.md, "InfoGAN's codes".)"""
    n = images.shape[0]
    shift = (torch.rand(n, 2, generator=rng) * 2 - 1) * 2 * strength  # affine_grid's coordinates span 2
    zoom = 1 + (torch.rand(n, generator=rng) * 2 - 1) * strength
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = zoom
    theta[:, :, 2] = shift
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return F.interpolate(F.avg_pool2d(moved, 2), scale_factor=2, mode="bilinear", align_corners=False)


def infogan_recipe(args: argparse.Namespace, attribute_names: list[str], labels: torch.Tensor) -> GANRecipe:
    config = InfoGANConfig(
        noise_dim=args.latent_dim,
        n_codes=args.codes,
        n_categories=args.categories,
        generator_width=args.g_width,
        discriminator_width=args.d_width,
        q_hidden=args.q_hidden,
        image_size=args.image_size,
    )
    generator, discriminator = InfoGANGenerator(config), InfoGANDiscriminator(config)
    augment_stream = torch.Generator().manual_seed(args.seed + 2)  # the same on every rank: ranks draw alike

    def q_view(fake: torch.Tensor) -> torch.Tensor | None:
        return augment_for_q(fake, args.q_augment, augment_stream) if args.q_augment > 0 else None

    def draw_inputs(n: int, batch_labels: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return draw_noise(generator.noise_shape, n, rng), draw_codes(n, config.n_codes, config.n_categories, rng)

    def discriminator_loss(d, real, attributes, fake, inputs):
        logits_real = cast(InfoGANDiscriminator, unwrap(d)).real_fake(real)  # custom: DDP forwards only forward()
        # Q's head learns here; the body stays D's alone
        logits_fake, code_logits = d(fake, detach_q=True, q_images=q_view(fake))
        loss_real, loss_fake = bce_real_fake(logits_real, True), bce_real_fake(logits_fake, False)
        info = code_cross_entropy(code_logits, inputs[1])
        loss = loss_real + loss_fake + args.info_weight * config.n_codes * info
        return loss, discriminator_scalars(logits_real, logits_fake, loss_real, loss_fake, loss)

    def generator_loss(d, fake, inputs):
        codes = inputs[1]
        logits, code_logits = d(fake, q_images=q_view(fake))
        adversarial = bce_real_fake(logits, True)  # non-saturating loss
        info = code_cross_entropy(code_logits, codes)
        loss = adversarial + args.info_weight * config.n_codes * info
        return loss, {
            "loss_g": loss.item(),
            "loss_g_adv": adversarial.item(),
            "loss_info": info.item(),
            "acc_q": (code_logits.argmax(-1) == codes).float().mean().item(),
        }

    # Per-epoch grid: 8 rows, each one noise vector with code 0 walked through its categories.
    preview_rng = torch.Generator().manual_seed(args.seed)
    preview = sweep_inputs(
        draw_noise(generator.noise_shape, 8, preview_rng),
        draw_codes(8, config.n_codes, config.n_categories, preview_rng),
        0,
        config.n_categories,
    )

    return GANRecipe(
        generator,
        discriminator,
        draw_inputs,
        discriminator_loss,
        generator_loss,
        columns=[*D_COLUMNS, "loss_g", "loss_g_adv", "loss_info", "acc_q"],
        panels={
            "D loss": ["loss_d_real", "loss_d_fake"],
            "D accuracy": ["acc_real", "acc_fake"],
            "G adversarial loss": ["loss_g_adv"],
            "Q cross-entropy per code": ["loss_info"],
            "Q code accuracy": ["acc_q"],
        },
        preview_inputs=preview,
        preview_rows=config.n_categories,
        extras=lambda: recognizer_extras(discriminator),
        summary_columns=["acc_real", "acc_fake", "acc_q"],
        generators={"q_augment": augment_stream} if args.q_augment > 0 else {},
    )


@register_trainer("infogan", add_arguments)
def train_infogan(args: argparse.Namespace) -> None:
    train_gan(args, infogan_recipe)
