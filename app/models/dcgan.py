"""DCGAN (Radford et al. 2016) for 64x64 faces: 4x4 transposed convs with BatchNorm/ReLU and a Tanh output in G;
4x4 stride-2 convs with LeakyReLU 0.2 in D. Only the generator is served; the discriminator lives here too so
architectures stay in one place."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .registry import FamilyModule, register_family


@dataclass(frozen=True)
class DCGANConfig:
    latent_dim: int = 100  # length of the noise vector z
    generator_width: int = 64  # channels of G's last hidden layer (doubles per layer towards the input)
    discriminator_width: int = 64  # channels of D's first layer (doubles per layer)
    image_size: int = 64  # output side; 64 gives the classic 4 -> 8 -> 16 -> 32 -> 64 ladder


def _ladder(image_size: int) -> int:
    """Number of stride-2 stages between a 4x4 map and ``image_size``."""
    stages = (image_size // 4).bit_length() - 1
    if image_size < 8 or 4 * 2**stages != image_size:
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    return stages


def generator_trunk(in_channels: int, width: int, image_size: int) -> nn.Sequential:
    """Project an (N, in_channels, 1, 1) input to a 4x4 map and upsample to (N, 3, image_size, image_size)."""
    stages = _ladder(image_size)
    channels = width * 2 ** (stages - 1)
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(in_channels, channels, 4, 1, 0, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(True),
    ]
    for _ in range(stages - 1):
        layers += [
            nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(channels // 2),
            nn.ReLU(True),
        ]
        channels //= 2
    layers += [nn.ConvTranspose2d(channels, 3, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def discriminator_body(
    width: int, image_size: int, first_norm: bool = False, slope: float = 0.2
) -> tuple[nn.Sequential, int]:
    """(N, 3, S, S) -> (N, C, 4, 4) features; returns the module and C. No BatchNorm on the first layer."""
    stages = _ladder(image_size)
    layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1, bias=False)]
    if first_norm:
        layers.append(nn.BatchNorm2d(width))
    layers.append(nn.LeakyReLU(slope, True))
    channels = width
    for _ in range(stages - 1):
        layers += [
            nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(channels * 2),
            nn.LeakyReLU(slope, True),
        ]
        channels *= 2
    return nn.Sequential(*layers), channels


def init_dcgan_weights(module: nn.Module) -> None:
    """N(0, 0.02) convs and N(1, 0.02) BatchNorm scales, as the DCGAN paper prescribes."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@register_family(
    "dcgan",
    summary="DCGAN generator (exponential moving average of G's weights): unconditional samples",
    tiny={"latent_dim": 8, "generator_width": 4, "discriminator_width": 4, "image_size": 16},
)
class DCGANGenerator(FamilyModule):
    config_class = DCGANConfig

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        self.net = generator_trunk(config.latent_dim, config.generator_width, config.image_size)
        self.apply(init_dcgan_weights)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dim,)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.net(noise[:, :, None, None])

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        return self(noise)


class DCGANDiscriminator(nn.Module):
    """Real/fake logit per image (BCE-with-logits in training: the sigmoid is folded into the loss for stability)."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.body, channels = discriminator_body(config.discriminator_width, config.image_size)
        self.head = nn.Conv2d(channels, 1, 4, 1, 0, bias=False)
        self.apply(init_dcgan_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images)).flatten()
