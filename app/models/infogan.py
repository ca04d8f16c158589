"""InfoGAN (Chen et al. 2016) in the paper's CelebA setting: noise plus 10 categorical codes of 10 categories each.

G: the DCGAN ladder the other GANs here use, fed the noise and the one-hot codes (a 4x4 transposed conv from 1x1,
then stride-2 transposed convs with BatchNorm and ReLU, Tanh out), which trains well here for the DCGAN and ACGAN.
With the paper's stem (a fully connected layer to 448x2x2) two CPU runs collapsed to one face for every noise vector
by epoch 3, and a third barely varied; the two also let the info loss train D's body, so the stem is not the only
suspect (see training/infogan.py). D and the recognition network Q share a convolutional body (LeakyReLU 0.1); D's
head says real/fake, Q's head gives logits for every category of every code. Only G is served; D/Q live here too so
architectures stay in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dcgan import _ladder, discriminator_body, generator_trunk, init_dcgan_weights
from .registry import FamilyModule, register_family


@dataclass(frozen=True)
class InfoGANConfig:
    noise_dim: int = 128  # length of the incompressible noise z
    n_codes: int = 10  # number of categorical latent codes c_1..c_K
    n_categories: int = 10  # categories per code (each code is fed to G one-hot)
    generator_width: int = 32  # channels of G's last hidden layer (doubles per layer towards the input)
    discriminator_width: int = 64  # channels of the D/Q body's first layer (doubles per layer)
    q_hidden: int = 128  # width of Q's hidden layer on top of the shared body
    image_size: int = 64  # output side, a power of two >= 8

    def __post_init__(self) -> None:
        if self.n_codes < 1 or self.n_categories < 2:
            raise ValueError(f"InfoGAN needs >= 1 code of >= 2 categories, got {self.n_codes} x {self.n_categories}")
        _ladder(self.image_size)  # refuses sizes the conv ladders cannot reach


def sweep_inputs(
    noise: torch.Tensor, codes: torch.Tensor, code: int, n_categories: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major sweep: for each of the R rows (one noise vector and its codes), code ``code`` walked through every
    category. Returns (R * n_categories) noise vectors and codes; the other codes stay those of the row."""
    rows = noise.shape[0]
    swept = codes.repeat_interleave(n_categories, dim=0)
    swept[:, code] = torch.arange(n_categories).repeat(rows)
    return noise.repeat_interleave(n_categories, dim=0), swept


def draw_codes(n: int, n_codes: int, n_categories: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform categorical codes (n, n_codes) on the CPU, the prior InfoGAN trains with."""
    return torch.randint(n_categories, (n, n_codes), generator=generator)


@register_family(
    "infogan",
    summary="InfoGAN generator with categorical codes (and its recognizer Q): code sweeps",
    tiny={
        "noise_dim": 8,
        "n_codes": 3,
        "n_categories": 10,
        "generator_width": 4,
        "discriminator_width": 4,
        "q_hidden": 8,
        "image_size": 16,
    },
)
class InfoGANGenerator(FamilyModule):
    """(noise (N, noise_dim), codes LongTensor (N, n_codes) of category indices) -> images (N, 3, S, S) in [-1, 1]."""

    config_class = InfoGANConfig

    def __init__(self, config: InfoGANConfig):
        super().__init__()
        self.config = config
        inputs = config.noise_dim + config.n_codes * config.n_categories
        self.net = generator_trunk(inputs, config.generator_width, config.image_size)
        self.apply(init_dcgan_weights)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.config.noise_dim,)

    @property
    def n_codes(self) -> int:
        return self.config.n_codes

    @property
    def n_categories(self) -> int:
        return self.config.n_categories

    def forward(self, noise: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if codes.shape != (noise.shape[0], self.n_codes):
            raise ValueError(f"codes must have shape ({noise.shape[0]}, {self.n_codes}), got {tuple(codes.shape)}")
        one_hot = F.one_hot(codes.long(), self.n_categories).flatten(1).to(noise.dtype)
        return self.net(torch.cat([noise, one_hot], dim=1)[:, :, None, None])

    def generate(self, noise: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self(noise, codes)


class InfoGANDiscriminator(nn.Module):
    """D and Q on one body: images -> (real/fake logit (N,), code logits (N, n_codes, n_categories))."""

    def __init__(self, config: InfoGANConfig):
        super().__init__()
        self.config = config
        self.body, channels = discriminator_body(config.discriminator_width, config.image_size, slope=0.1)
        self.real_fake_head = nn.Conv2d(channels, 1, 4, 1, 0)
        self.q_head = nn.Sequential(
            nn.Conv2d(channels, config.q_hidden, 4, 1, 0, bias=False),
            nn.BatchNorm2d(config.q_hidden),
            nn.LeakyReLU(0.1, True),
            nn.Flatten(),
            nn.Linear(config.q_hidden, config.n_codes * config.n_categories),
        )
        self.apply(init_dcgan_weights)

    def real_fake(self, images: torch.Tensor) -> torch.Tensor:
        return self.real_fake_head(self.body(images)).flatten()

    def code_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Q's head on body features: (N, n_codes, n_categories) logits."""
        return self.q_head(features).view(-1, self.config.n_codes, self.config.n_categories)

    def forward(
        self, images: torch.Tensor, detach_q: bool = False, q_images: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``detach_q``: Q's head reads the body's features without passing gradients back into the body.
        ``q_images``: Q reads these (same batch, e.g. augmented copies of ``images``) instead of ``images``."""
        features = self.body(images)
        if q_images is None:
            q_features = features
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_q):
                q_features = self.body(q_images)
        return self.real_fake_head(features).flatten(), self.code_logits(
            q_features.detach() if detach_q else q_features
        )


# The D/Q module is training-only, but evaluation measures Q's accuracy on fresh samples, so trainers save its
# weights as checkpoint extras under this prefix (the service never uses them).
RECOGNIZER_PREFIX = "recognizer."


def recognizer_extras(
    discriminator: InfoGANDiscriminator, dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """D/Q weights as checkpoint extras (floating tensors in ``dtype``, like the module weights)."""
    return {
        RECOGNIZER_PREFIX + name: (t.detach().to(dtype) if t.is_floating_point() else t.detach())
        for name, t in discriminator.state_dict().items()
    }


def recognizer_from_extras(config: InfoGANConfig, extras: dict[str, torch.Tensor]) -> InfoGANDiscriminator | None:
    """Rebuild D/Q from a checkpoint's extras (strict), or None when the checkpoint has none."""
    state = {name[len(RECOGNIZER_PREFIX) :]: t for name, t in extras.items() if name.startswith(RECOGNIZER_PREFIX)}
    if not state:
        return None
    recognizer = InfoGANDiscriminator(config)
    device = next(iter(state.values())).device
    recognizer.load_state_dict(state, strict=True)  # copies into the module's dtypes (int64 counters included)
    return recognizer.to(device).requires_grad_(False)
