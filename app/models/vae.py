"""Convolutional VAE after the first course report: 4x4 stride-2 encoder, conv heads for mu / log-variance,
mirrored transposed-conv decoder with a Tanh output. Images live in [-1, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .registry import FamilyModule, register_family


@dataclass(frozen=True)
class VAEConfig:
    image_size: int = 64  # side of the square RGB images, a power of two >= 16
    widths: tuple[int, ...] = (32, 64, 128, 256)  # encoder channels per stride-2 stage (decoder mirrors them)
    latent_dim: int = 1024  # channels of the 1x1 latent produced by the 4x4 conv heads
    lambda_kl: float = 3e-6  # weight of KL (summed over latent dims) against per-pixel mean MSE


@register_family(
    "vae",
    summary="convolutional variational autoencoder: samples, reconstructions, latents",
    tiny={"widths": [4, 8], "latent_dim": 6, "image_size": 16},
)
class VAE(FamilyModule):
    config_class = VAEConfig
    prior_mean: torch.Tensor  # buffers (register_buffer), declared for the type checker
    prior_scale_tril: torch.Tensor

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        bottom = config.image_size // 2 ** len(config.widths)
        if bottom < 1 or config.image_size != bottom * 2 ** len(config.widths):
            raise ValueError(f"image_size {config.image_size} does not halve {len(config.widths)} times evenly")

        layers: list[nn.Module] = []
        channels = 3
        for width in config.widths:
            layers += [nn.Conv2d(channels, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.encoder = nn.Sequential(*layers)
        # A kernel the size of the remaining feature map collapses it to a 1x1 latent, as in the report.
        self.mu_head = nn.Conv2d(channels, config.latent_dim, bottom)
        self.logvar_head = nn.Conv2d(channels, config.latent_dim, bottom)

        widths = list(reversed(config.widths))
        layers = [nn.ConvTranspose2d(config.latent_dim, widths[0], bottom), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(width_in, width_out, 4, 2, 1), nn.BatchNorm2d(width_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)

        # The sampling prior: N(prior_mean, L L^T). Identity at first (the textbook N(0, I)); after training,
        # :meth:`fit_prior` sets it to a Gaussian fitted to the training latents. With the small lambda_KL that sharp
        # reconstructions need, the encoder's codes do not fill N(0, I), and decoding draws from N(0, I) gives mush;
        # a fitted Gaussian ("ex-post density estimation", Ghosh et al. 2020) samples where the decoder has learned.
        self.register_buffer("prior_mean", torch.zeros(config.latent_dim))
        self.register_buffer("prior_scale_tril", torch.eye(config.latent_dim))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dim,)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) in [-1, 1] -> mu, logvar, each (N, latent_dim)."""
        features = self.encoder(images)
        return self.mu_head(features).flatten(1), self.logvar_head(features).flatten(1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents[:, :, None, None])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: reconstruction of a reparameterised sample, with mu and logvar for the KL term."""
        mu, logvar = self.encode(images)
        latents = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(latents), mu, logvar

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction through the posterior mean."""
        return self.decode(self.encode(images)[0])

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Decode samples of the prior; ``noise`` is standard normal from :func:`app.models.sampling.draw_noise`."""
        return self.decode(self.prior_mean + noise @ self.prior_scale_tril.T)

    @torch.no_grad()
    def fit_prior(self, latent_means: torch.Tensor, shrinkage: float = 1e-3) -> None:
        """Set the sampling prior to a full-covariance Gaussian fitted to encoder means (N, latent_dim)."""
        latent_means = latent_means.double()
        mean = latent_means.mean(0)
        covariance = torch.cov(latent_means.T)
        # Shrink towards the diagonal's scale so the factorisation is stable with N not >> latent_dim.
        covariance += shrinkage * covariance.diagonal().mean() * torch.eye(len(mean), dtype=covariance.dtype)
        self.prior_mean.copy_(mean.float())
        self.prior_scale_tril.copy_(torch.linalg.cholesky(covariance).float())


def vae_loss(
    reconstruction: torch.Tensor, images: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, lambda_kl: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel mean MSE + lambda_kl * KL (summed over latent dims, mean over the batch)."""
    mse = torch.mean((reconstruction - images) ** 2)
    kl = torch.mean(-0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1))
    return mse + lambda_kl * kl, mse, kl
