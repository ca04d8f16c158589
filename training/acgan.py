"""ACGAN training on the shared adversarial loop (:mod:`training.gan`).

D: real/fake BCE on real and fake images plus ``--class-weight`` x the attribute loss on *real* images only (it
learns the attributes from labelled data, never from G's attempts). G: fool D plus ``--g-class-weight`` (default
``--class-weight``) x the attribute loss of its fakes against the attributes it was asked for. The attribute loss
is the negative log-likelihood of the whole attribute vector (BCE summed over attributes, averaged over the batch),
the multi-label analogue of the paper's class cross-entropy: averaged over attributes instead, each attribute
weighed 1/13 as much as realism and the shipped G obeyed Smiling in only 39% of on/off pairs.
``--attribute-weights`` scales single attributes' terms, so that one attribute can win where a request contradicts
the data's correlations (Smiling off with High_Cheekbones and Mouth_Slightly_Open on). D takes
``--d-steps`` updates per G update (course report 1: twice). The checkpoint stores the trained attribute set, each
attribute's training-set frequency, and the training faces' label vectors (packed bits), from which the service
draws the attributes a request leaves open jointly (:mod:`app.models.attributes`).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from app.models.acgan import DEFAULT_ATTRIBUTES, ACGANConfig, ACGANDiscriminator, ACGANGenerator, toggle_pairs
from app.models.attributes import FREQUENCIES_KEY, LABEL_VECTORS_KEY, pack_label_vectors
from app.models.sampling import draw_noise

from .gan import D_COLUMNS, GANRecipe, add_gan_arguments, bce_real_fake, discriminator_scalars, train_gan
from .registry import register_trainer

FAKE_LABELS = ("batch", "shuffled", "frequencies")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gan_arguments(parser)
    parser.add_argument(
        "--attributes",
        default=",".join(DEFAULT_ATTRIBUTES),
        help="comma-separated CelebA attributes to condition on, or 'all' for the 40 "
        "(default: the 13 of the classic course set)",
    )
    parser.add_argument("--d-steps", type=int, default=2, help="discriminator updates per generator update")
    parser.add_argument(
        "--class-weight",
        type=float,
        default=1.0,
        help="weight of the attribute loss in D's loss (and in G's, unless --g-class-weight)",
    )
    parser.add_argument(
        "--g-class-weight",
        type=float,
        help="weight of the attribute loss in G's loss (default: --class-weight); above 1, G shows "
        "the requested attributes more unmistakably than real faces do",
    )
    parser.add_argument(
        "--attribute-weights",
        default="",
        help="comma-separated NAME=WEIGHT: that attribute's term of the attribute loss (D's and G's) "
        "is multiplied by WEIGHT (others 1), e.g. Smiling=3 so that the toggled attribute wins "
        "where the requested attributes contradict the data's correlations",
    )
    parser.add_argument(
        "--fake-labels",
        choices=FAKE_LABELS,
        default="batch",
        help="attributes asked of G: the real batch's label vectors (batch), each attribute "
        "shuffled independently within the batch (shuffled), or Bernoulli draws from the "
        "training-set frequencies (frequencies, as the service draws open attributes)",
    )
    parser.add_argument("--toggle", help="attribute of the per-epoch on/off grid (default Smiling, else the first)")


def attribute_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of each attribute vector under D's independent Bernoullis, averaged over the batch;
    ``weights`` (A,) scales each attribute's term."""
    terms = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weights is not None:
        terms = terms * weights.to(terms.device)
    return terms.sum() / len(logits)


def parse_attribute_weights(text: str, names: tuple[str, ...]) -> torch.Tensor | None:
    """``--attribute-weights`` -> an (A,) weight per trained attribute (1 where not named), or None when empty."""
    if not text.strip():
        return None
    weights = torch.ones(len(names))
    for item in text.split(","):
        name, separator, value = item.strip().partition("=")
        if name not in names:
            raise SystemExit(
                f"acgan: --attribute-weights names {name!r}, not a trained attribute; trained: {', '.join(names)}"
            )
        try:
            weight = float(value) if separator else float("nan")
        except ValueError:
            weight = float("nan")
        if not weight >= 0:  # also refuses NaN
            raise SystemExit(f"acgan: --attribute-weights needs NAME=WEIGHT with WEIGHT >= 0, got {item.strip()!r}")
        weights[names.index(name)] = weight
    return weights


def choose_attributes(text: str, available: list[str]) -> tuple[str, ...]:
    """Parse ``--attributes``; unknown names exit with the list of valid ones."""
    if text.strip() == "all":
        return tuple(available)
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise SystemExit(f"acgan: unknown attribute(s) {unknown or [text]}; valid: {', '.join(available)}")
    if len(set(names)) != len(names):
        raise SystemExit(f"acgan: --attributes repeats a name: {list(names)}")
    return names


def preview_attribute(names: tuple[str, ...], wanted: str | None) -> int:
    """Index of the attribute the per-epoch grid toggles."""
    if wanted is not None:
        if wanted not in names:
            raise SystemExit(f"acgan: --toggle {wanted!r} is not among the trained attributes {list(names)}")
        return names.index(wanted)
    return names.index("Smiling") if "Smiling" in names else 0


def acgan_recipe(args: argparse.Namespace, attribute_names: list[str], labels: torch.Tensor) -> GANRecipe:
    names = choose_attributes(args.attributes, attribute_names)
    columns = torch.tensor([attribute_names.index(name) for name in names])
    frequencies = labels[:, columns].float().mean(0)
    label_vectors = pack_label_vectors(labels[:, columns])
    config = ACGANConfig(
        attributes=names,
        latent_dim=args.latent_dim,
        generator_width=args.g_width,
        discriminator_width=args.d_width,
        image_size=args.image_size,
    )
    generator = ACGANGenerator(config)
    toggled = preview_attribute(names, args.toggle)
    weight = args.class_weight
    per_attribute = parse_attribute_weights(args.attribute_weights, names)
    generator_weight = weight if args.g_class_weight is None else args.g_class_weight

    def conditions(n: int, batch_labels: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        chosen = batch_labels[:, columns].float()
        if args.fake_labels == "batch":  # real combinations: G learns the data's correlations too
            return chosen.clone()
        if args.fake_labels == "shuffled":  # same marginals, correlations broken
            order = torch.argsort(torch.rand(chosen.shape, generator=rng), dim=0)
            return chosen.gather(0, order)
        return (torch.rand((n, len(names)), generator=rng) < frequencies).float()

    def draw_inputs(n: int, batch_labels: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return draw_noise(generator.latent_shape, n, rng), conditions(n, batch_labels, rng)

    def discriminator_loss(d, real, attributes, fake, inputs):
        logits_real, classes_real = d(real)
        logits_fake, _ = d(fake)
        target = attributes[:, columns.to(attributes.device)]
        loss_real, loss_fake = bce_real_fake(logits_real, True), bce_real_fake(logits_fake, False)
        loss_class = attribute_loss(classes_real, target, per_attribute)
        loss = loss_real + loss_fake + weight * loss_class
        return loss, {
            **discriminator_scalars(logits_real, logits_fake, loss_real, loss_fake, loss),
            "loss_cls_real": loss_class.item(),
            "acc_cls_real": ((classes_real > 0).float() == target).float().mean().item(),
        }

    def generator_loss(d, fake, inputs):
        logits, classes = d(fake)
        requested = inputs[1]
        adversarial = bce_real_fake(logits, True)  # non-saturating loss
        loss_class = attribute_loss(classes, requested, per_attribute)
        loss = adversarial + generator_weight * loss_class
        return loss, {
            "loss_g": loss.item(),
            "loss_g_adv": adversarial.item(),
            "loss_cls_fake": loss_class.item(),
            "acc_cls_fake": ((classes > 0).float() == requested).float().mean().item(),
        }

    # Per-epoch grid: 2 blocks of 8 pairs, each an "off" row over an "on" row from the same noise and attributes.
    preview_rng = torch.Generator().manual_seed(args.seed)
    noise = draw_noise(generator.latent_shape, 16, preview_rng)
    attributes = (torch.rand((16, len(names)), generator=preview_rng) < frequencies).float()
    blocks = [toggle_pairs(noise[i : i + 8], attributes[i : i + 8], toggled) for i in (0, 8)]
    preview = (torch.cat([b[0] for b in blocks]), torch.cat([b[1] for b in blocks]))

    return GANRecipe(
        generator,
        ACGANDiscriminator(config),
        draw_inputs,
        discriminator_loss,
        generator_loss,
        columns=[
            *D_COLUMNS,
            "loss_cls_real",
            "acc_cls_real",
            "loss_g",
            "loss_g_adv",
            "loss_cls_fake",
            "acc_cls_fake",
        ],
        panels={
            "D real/fake loss": ["loss_d_real", "loss_d_fake"],
            "D real/fake accuracy": ["acc_real", "acc_fake"],
            "classification loss": ["loss_cls_real", "loss_cls_fake"],
            "classification accuracy": ["acc_cls_real", "acc_cls_fake"],
            "G adversarial loss": ["loss_g_adv"],
        },
        preview_inputs=preview,
        preview_rows=8,
        d_steps=args.d_steps,
        attributes=list(names),
        extras=lambda: {FREQUENCIES_KEY: frequencies, LABEL_VECTORS_KEY: label_vectors},
        summary_columns=["acc_real", "acc_fake", "acc_cls_real", "acc_cls_fake"],
    )


@register_trainer("acgan", add_arguments)
def train_acgan(args: argparse.Namespace) -> None:
    if args.class_weight < 0 or (args.g_class_weight or 0) < 0:
        raise SystemExit("acgan: --class-weight and --g-class-weight must be >= 0")
    if args.d_steps < 1:
        raise SystemExit(f"acgan: --d-steps must be >= 1, got {args.d_steps}")
    train_gan(args, acgan_recipe)
