"""The checkpoints committed in weights/: they load strictly and produce varied, non-degenerate faces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.models.checkpoint import load_checkpoint
from app.models.sampling import draw_noise, seeded_generator

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = sorted(WEIGHTS.glob("*.safetensors"))
SAMPLING_FAMILIES = {"vae", "dcgan"}


def test_the_foundation_families_are_shipped():
    assert {"vae.safetensors", "dcgan.safetensors"} <= {path.name for path in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_shipped_checkpoint_loads_small_and_documented(path):
    checkpoint = load_checkpoint(path)
    assert path.stat().st_size < 40 * 1024 * 1024
    assert checkpoint.preprocess.size == 64 and len(checkpoint.attributes) == 40
    assert checkpoint.training["train_images"] > 10_000, "shipped weights are trained on real CelebA faces"


@pytest.mark.parametrize("family", sorted(SAMPLING_FAMILIES))
def test_shipped_samples_are_not_degenerate(family):
    checkpoint = load_checkpoint(WEIGHTS / f"{family}.safetensors")
    noise = draw_noise(checkpoint.model.latent_shape, 16, seeded_generator(0))
    with torch.inference_mode():
        images = checkpoint.model.generate(noise)
    assert images.shape == (16, 3, 64, 64) and torch.isfinite(images).all()
    assert images.std(dim=0).mean() > 0.05, "samples differ from one another"
    assert images.std(dim=(1, 2, 3)).min() > 0.05, "no sample is a flat colour"
    assert -0.9 < images.mean() < 0.9, "not saturated to black or white"


def test_shipped_vae_reconstructs_real_faces(face_paths):
    from PIL import Image

    from app.models.preprocess import preprocess

    checkpoint = load_checkpoint(WEIGHTS / "vae.safetensors")
    faces = torch.stack([preprocess(Image.open(path), checkpoint.preprocess) for path in face_paths])
    with torch.inference_mode():
        errors = ((checkpoint.model.reconstruct(faces) - faces) ** 2).flatten(1).mean(1)
    # Far better than painting each face its own mean colour: the model has learned faces.
    flat_colour_error = faces.flatten(2).var(dim=2, unbiased=False).mean(1)
    assert errors.mean() < 0.5 * flat_colour_error.mean(), (errors, flat_colour_error)
    assert checkpoint.metrics["valid_mse"] < 0.1
