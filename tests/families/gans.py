"""Tiny ACGAN and InfoGAN generators, checkpoints and requests for tests."""

from __future__ import annotations

from math import comb
from pathlib import Path

import torch

from app.models import build_model
from app.models.acgan import ACGANGenerator
from app.models.attributes import FREQUENCIES_KEY, LABEL_VECTORS_KEY, pack_label_vectors
from app.models.infogan import InfoGANGenerator
from tests.conftest import TINY_CONFIGS, write_tiny_checkpoint

ACGAN_NAMES = TINY_CONFIGS["acgan"]["attributes"]  # Smiling, Male, Blond_Hair
ACGAN_FREQUENCIES = torch.tensor([0.9, 0.1, 0.5])
INFOGAN_CONFIG = TINY_CONFIGS["infogan"]  # 3 codes of 10 categories, noise 8, 16 px
SIDE = 16 + 2  # tiny image side plus the grid's 2-px gutter


def tiny_acgan() -> ACGANGenerator:
    torch.manual_seed(0)
    return build_model("acgan", TINY_CONFIGS["acgan"]).eval()


def tiny_infogan() -> InfoGANGenerator:
    torch.manual_seed(0)
    return build_model("infogan", INFOGAN_CONFIG).eval()


def write_acgan_weights(directory: Path) -> Path:
    write_tiny_checkpoint(directory, "acgan", attributes=ACGAN_NAMES, extras={FREQUENCIES_KEY: ACGAN_FREQUENCIES})
    return directory


def binomial_bounds(p: float, n: int, level: float = 0.99) -> tuple[int, int]:
    """The central ``level`` interval of Binomial(n, p) counts, exactly (no normal approximation: p is near 0)."""
    cdf, low, high, tail = 0.0, None, n, (1 - level) / 2
    for k in range(n + 1):
        cdf += comb(n, k) * p**k * (1 - p) ** (n - k)
        if low is None and cdf > tail:
            low = k
        if cdf >= 1 - tail:
            high = k
            break
    return int(low or 0), high


def joint_labels() -> torch.Tensor:
    """(200, 3) label vectors over ACGAN_NAMES with strong correlations: the 60 men all smile and none is blond;
    the 140 women never smile and half are blond. No face is a blond man."""
    men = torch.tensor([[1.0, 1.0, 0.0]]).expand(60, -1)
    women = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]).repeat(70, 1)
    return torch.cat([men, women])


def write_joint_acgan_weights(directory: Path) -> Path:
    """A tiny ACGAN checkpoint that carries :func:`joint_labels` as its training faces' label vectors."""
    labels = joint_labels()
    extras = {FREQUENCIES_KEY: labels.mean(0), LABEL_VECTORS_KEY: pack_label_vectors(labels)}
    write_tiny_checkpoint(directory, "acgan", attributes=ACGAN_NAMES, extras=extras)
    return directory


def write_infogan_weights(directory: Path) -> Path:
    write_tiny_checkpoint(directory, "infogan")
    return directory


def post_acgan(client, **body):
    return client.post("/generate/acgan", json=body)


def post_infogan(client, **body):
    return client.post("/generate/infogan", json=body)
