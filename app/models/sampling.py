"""Seeded noise: always drawn on the CPU from a private generator, so a seed gives the same images whatever the
device or batch the request lands in."""

from __future__ import annotations

import torch


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def draw_noise(shape: tuple[int, ...], n: int, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of shape (n, *shape) on the CPU."""
    return torch.randn((n, *shape), generator=generator)
