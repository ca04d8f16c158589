"""Label vectors with CelebA's strongest correlations, for the tests of the joint draw of open attributes in every
attribute-conditioned family (ACGAN, Glow)."""

from __future__ import annotations

import torch

from app.models.sampling import seeded_generator

# CelebA's rates among men and among women (approximately): what independent draws got wrong
MAKE_UP_RATES = {"Wearing_Lipstick": (0.02, 0.6), "Heavy_Makeup": (0.01, 0.5)}
MEN_ONLY = "Goatee"  # no woman of these labels has one: Male false with Goatee true is a combination no face has


def make_up_labels(names: list[str], faces: int = 5000, seed: int = 0) -> torch.Tensor:
    """(faces, len(names)) 0/1 labels: 42 % men; lipstick and heavy make-up at MAKE_UP_RATES, a goatee on a fifth
    of the men and no woman; every other attribute on for 30 % of faces, independently."""
    rng = seeded_generator(seed)
    male = torch.rand(faces, generator=rng) < 0.42
    labels = torch.rand((faces, len(names)), generator=rng) < 0.3
    columns = {name: k for k, name in enumerate(names)}
    if "Male" in columns:
        labels[:, columns["Male"]] = male
    for name, (men, women) in MAKE_UP_RATES.items():
        if name in columns:
            labels[:, columns[name]] = torch.rand(faces, generator=rng) < torch.where(male, men, women)
    if MEN_ONLY in columns:
        labels[:, columns[MEN_ONLY]] = male & (torch.rand(faces, generator=rng) < 0.2)
    return labels.float()
