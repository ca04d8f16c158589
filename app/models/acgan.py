"""ACGAN (Odena et al. 2017) conditioned on CelebA attributes: G draws a face from noise and a 0/1 attribute vector;
D says real/fake and, from a second head, which attributes a face has (multi-label, BCE with logits). Only G is
served; D lives here so that each family's architectures stay in one module. G and D reuse the DCGAN ladders.

The conditioning attribute names are part of the config, so a checkpoint rebuilds the exact input layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .dcgan import discriminator_body, generator_trunk, init_dcgan_weights
from .registry import FamilyModule, register_family

# The 13 attributes of the classic course set (hair, smile, make-up, sex, mouth).
DEFAULT_ATTRIBUTES = (
    "Bangs",
    "Big_Lips",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Lipstick",
)


@dataclass(frozen=True)
class ACGANConfig:
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES  # conditioning attributes, in the order of G's input and D's head
    latent_dim: int = 100  # length of the noise vector z (the attribute vector is appended to it)
    generator_width: int = 64  # channels of G's last hidden layer (doubles per layer towards the input)
    discriminator_width: int = 64  # channels of D's first layer (doubles per layer)
    image_size: int = 64  # output side, a power of two >= 8

    def __post_init__(self) -> None:
        if not self.attributes:
            raise ValueError("ACGAN needs at least one conditioning attribute")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"ACGAN attributes repeat a name: {list(self.attributes)}")


def condition_signal(attributes: torch.Tensor) -> torch.Tensor:
    """0/1 attributes -> -1/+1: "off" is then a signal of its own, not an input that zeroes its weights."""
    return attributes.float() * 2 - 1


# How far the service pushes a toggled attribute: G's condition input for it is -1.75 (off) and +1.75 (on) instead of
# the trained -1/+1, the others staying at -1/+1, because at the trained strength too many pairs show no visible
# change; pushed harder, more pairs are judged right by the classifier at no measurable FID cost (the checkpoint's
# ``toggle_success_by_strength`` and FID metrics, from ``python -m training evaluate --fid``, and docs/results.md's
# generated table). Pushing every attribute instead gains nothing (the toggled one must outweigh the attributes it
# contradicts, e.g. High_Cheekbones with Smiling off) and costs agreement on the others. Far beyond, the off faces
# visibly degrade, hence the cap on what a request may ask.
# 1.75 rather than 1.5 since the pairs' other attributes are drawn from real faces' label vectors: half the pairs then
# carry a smiler's High_Cheekbones and Mouth_Slightly_Open, which the off image must overcome.
DEFAULT_TOGGLE_STRENGTH = 1.75
MAX_TOGGLE_STRENGTH = 3.0


def emphasis(attribute_count: int, index: int, strength: float) -> torch.Tensor:
    """(A,) multipliers of G's condition signal: ``strength`` for attribute ``index``, 1 for the others."""
    multipliers = torch.ones(attribute_count)
    multipliers[index] = strength
    return multipliers


def toggle_pairs(noise: torch.Tensor, attributes: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """On/off pairs: (2N, ...) inputs, first the N with attribute ``index`` off, then the same N with it on.

    Everything but that attribute (noise and the other attributes) is shared by the two halves.
    """
    off, on = attributes.clone(), attributes.clone()
    off[:, index], on[:, index] = 0.0, 1.0
    return torch.cat([noise, noise]), torch.cat([off, on])


@register_family(
    "acgan",
    summary="auxiliary-classifier GAN generator conditioned on CelebA attributes: samples, on/off pairs",
    tiny={
        "attributes": ["Smiling", "Male", "Blond_Hair"],
        "latent_dim": 8,
        "generator_width": 4,
        "discriminator_width": 4,
        "image_size": 16,
    },
)
class ACGANGenerator(FamilyModule):
    """(noise (N, latent_dim), attributes (N, A) of 0/1) -> images (N, 3, S, S) in [-1, 1]."""

    config_class = ACGANConfig

    def __init__(self, config: ACGANConfig):
        super().__init__()
        self.config = config
        inputs = config.latent_dim + len(config.attributes)
        self.net = generator_trunk(inputs, config.generator_width, config.image_size)
        self.apply(init_dcgan_weights)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dim,)

    @property
    def attribute_names(self) -> list[str]:
        return list(self.config.attributes)

    def forward(
        self, noise: torch.Tensor, attributes: torch.Tensor, strength: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``strength`` (A,): multiplies each attribute's -1/+1 condition signal (default 1: as trained)."""
        if attributes.shape != (noise.shape[0], len(self.config.attributes)):
            raise ValueError(
                f"attributes must have shape ({noise.shape[0]}, {len(self.config.attributes)}), "
                f"got {tuple(attributes.shape)}"
            )
        signal = condition_signal(attributes).to(noise.dtype)
        if strength is not None:
            signal = signal * strength.to(signal)
        return self.net(torch.cat([noise, signal], dim=1)[:, :, None, None])

    def generate(
        self, noise: torch.Tensor, attributes: torch.Tensor, strength: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self(noise, attributes, strength)


class ACGANDiscriminator(nn.Module):
    """Images -> (real/fake logit (N,), attribute logits (N, A)). No BatchNorm on the first layer (course report 1)."""

    def __init__(self, config: ACGANConfig):
        super().__init__()
        self.body, channels = discriminator_body(config.discriminator_width, config.image_size, first_norm=False)
        self.real_fake = nn.Conv2d(channels, 1, 4, 1, 0, bias=False)
        self.classes = nn.Conv2d(channels, len(config.attributes), 4, 1, 0)
        self.apply(init_dcgan_weights)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)
        return self.real_fake(features).flatten(), self.classes(features).flatten(1)
