"""Tiny Glows for tests: perturbed off their identity initialisation, with random inputs."""

from __future__ import annotations

from pathlib import Path

import torch

from app.models.artefacts import ARTEFACT_LIMITS_KEY
from app.models.attributes import FREQUENCIES_KEY
from app.models.checkpoint import load_checkpoint, save_checkpoint
from app.models.glow import DIRECTIONS_KEY, Glow, GlowConfig
from app.models.pipelines.glow import GlowPipeline
from app.models.preprocess import PreprocessSpec
from tests.conftest import ATTRIBUTE_NAMES, TINY_CONFIGS


def perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its (often zero / identity) initialisation, so tests see a generic flow."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module


def random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def random_attributes(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand((n, 40), generator=torch.Generator().manual_seed(seed)) < 0.5).float()


def brute_force_logdet(function, x: torch.Tensor) -> torch.Tensor:
    jacobian = torch.autograd.functional.jacobian(lambda v: function(v.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jacobian)[1]


def tiny_glow(dtype: torch.dtype = torch.float64, **overrides) -> Glow:
    """The tiny config, actnorm initialised on random images, then perturbed; eval mode."""
    torch.manual_seed(0)
    model = Glow(GlowConfig(**{**TINY_CONFIGS["glow"], **overrides}))
    model.initialize(random_images(8, model.config.image_size), random_attributes(8))
    return perturb(model).to(dtype).eval()


def write_served_tiny_glow(directory: Path) -> Path:
    """``directory/glow.safetensors``: a perturbed tiny Glow (so its outputs are not trivial) with attribute directions
    (small: manipulation strength 1 is MANIPULATION_UNIT (2) directions, and a tiny flow diverges quickly) and
    training frequencies, stored as float32: what the service loads."""
    model = tiny_glow(torch.float32)
    generator = torch.Generator().manual_seed(0)
    extras = {
        DIRECTIONS_KEY: torch.randn((40, model.latent_dim), generator=generator) * 0.1,
        FREQUENCIES_KEY: torch.rand(40, generator=generator),
    }
    return save_checkpoint(
        directory / "glow.safetensors",
        model,
        preprocess=PreprocessSpec(size=16),
        attributes=list(ATTRIBUTE_NAMES),
        extras=extras,
        dtype=None,
    )


def tiny_glow_pipeline(
    directory, artefact_limits: torch.Tensor | None = None, extras: dict[str, torch.Tensor] | None = None
) -> GlowPipeline:
    """A served tiny Glow (float32, 16x16) with small attribute directions and, when given, artefact limits and other
    ``extras`` (label vectors, frequencies)."""
    model = tiny_glow(torch.float32)
    extras = {
        DIRECTIONS_KEY: torch.randn((40, model.latent_dim), generator=torch.Generator().manual_seed(0)) * 0.1,
        **(extras or {}),
    }
    if artefact_limits is not None:
        extras[ARTEFACT_LIMITS_KEY] = artefact_limits
    path = directory / "glow.safetensors"
    save_checkpoint(
        path, model, preprocess=PreprocessSpec(size=16), attributes=list(ATTRIBUTE_NAMES), extras=extras, dtype=None
    )
    return GlowPipeline(load_checkpoint(path, "cpu"))
