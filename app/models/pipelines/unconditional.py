"""Pipelines of the families that sample from noise alone: DCGAN, and the VAE (which also reconstructs uploads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..dcgan import DCGANGenerator
from ..sampling import draw_noise, seeded_generator
from ..vae import VAE
from .base import ENCODE, SAMPLE, BenchRequest, Pipeline, Prepared, finite_images, register_pipeline


class NoisePipeline(Pipeline):
    """``n`` images from ``n`` standard normal noise vectors drawn with the seed."""

    model: DCGANGenerator | VAE

    def prepare_samples(self, n: int, seed: int) -> Prepared:
        return Prepared("sample", (draw_noise(self.model.latent_shape, n, seeded_generator(seed)),))

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        return finite_images(self.model.generate(noise))

    def operations(self) -> dict[str, Callable[..., Any]]:
        return {"sample": self.generate}

    def warmup(self) -> Prepared:
        return self.prepare_samples(2, 0)


@register_pipeline("dcgan", SAMPLE, bench=BenchRequest("/generate/dcgan", fields={"format": "png"}))
class DCGANPipeline(NoisePipeline):
    model: DCGANGenerator


@register_pipeline("vae", SAMPLE, ENCODE, bench=BenchRequest("/generate/vae", fields={"format": "png"}))
class VAEPipeline(NoisePipeline):
    """Samples decode draws of the Gaussian fitted to the training latents (the model's prior, N(0, I) until fitted);
    ``reconstruct`` passes uploads through the posterior mean."""

    model: VAE

    def prepare_reconstruction(self, images: torch.Tensor) -> Prepared:
        """[-1, 1] images (N, 3, S, S), already preprocessed."""
        return Prepared("reconstruct", (images,))

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstructions, per-image MSE on the [-1, 1] scale, whether each reconstruction had non-finite values
        before :func:`finite_images`: the service refuses to return those)."""
        raw = self.model.reconstruct(images)
        reconstructions = finite_images(raw)
        errors = ((reconstructions - images.float()) ** 2).flatten(1).mean(1)
        return reconstructions, errors, ~torch.isfinite(raw).flatten(1).all(1)

    def operations(self) -> dict[str, Callable[..., Any]]:
        return {"sample": self.generate, "reconstruct": self.reconstruct}
