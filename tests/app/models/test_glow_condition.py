"""Glow's condition at sampling time: each requested attribute moves the samples along its latent direction by
strength * (value - training frequency). (The inverse flow's safety for latents far off the distribution is tested on
the shipped Glow, in tests/test_shipped_weights.py: a tiny random flow does not diverge.)"""

from __future__ import annotations

import torch

from app.models import build_model
from app.models.attributes import FREQUENCIES_KEY
from app.models.checkpoint import load_checkpoint
from app.models.glow import DIRECTIONS_KEY
from app.models.pipelines import build_pipeline
from tests.conftest import TINY_CONFIGS, write_tiny_checkpoint


def glow_pipeline(tmp_path):
    torch.manual_seed(0)
    latent_dim = build_model("glow", TINY_CONFIGS["glow"]).latent_dim
    generator = torch.Generator().manual_seed(1)
    extras = {
        DIRECTIONS_KEY: torch.randn(40, latent_dim, generator=generator),
        FREQUENCIES_KEY: torch.rand(40, generator=generator),
    }
    path = write_tiny_checkpoint(tmp_path, "glow", extras=extras)
    return build_pipeline(load_checkpoint(path)), extras


def test_a_requested_attribute_shifts_each_level_by_its_direction(tmp_path):
    pipeline, extras = glow_pipeline(tmp_path)
    male = pipeline.attributes.index("Male")
    prepared = pipeline.prepare_samples(3, 5, {"Male": True}, temperature=0.6, strength=1.5)
    vectors, eps, temperature, pushes = prepared.inputs
    expected_push = 1.5 * (1 - extras[FREQUENCIES_KEY][male])
    assert torch.allclose(pushes[:, male], expected_push.expand(3))
    assert (pushes[:, torch.arange(40) != male] == 0).all(), "attributes left open are not pushed"
    shift = expected_push * extras[DIRECTIONS_KEY][male]
    with torch.inference_mode():
        expected = pipeline.model.sample_from_noise(vectors, eps, temperature, shift.expand(3, -1))
        unshifted = pipeline.model.sample_from_noise(vectors, eps, temperature)
    images = pipeline(prepared)[0]
    assert torch.allclose(images, expected.clamp(-1, 1), atol=1e-5)
    assert not torch.allclose(images, unshifted.clamp(-1, 1), atol=1e-3)


def test_strength_zero_is_the_prior_alone_and_off_pushes_the_other_way(tmp_path):
    pipeline, extras = glow_pipeline(tmp_path)
    male = pipeline.attributes.index("Male")
    off = pipeline.prepare_samples(2, 5, {"Male": False}, strength=1.0).inputs[3]
    assert torch.allclose(off[:, male], -extras[FREQUENCIES_KEY][male].expand(2))
    prepared = pipeline.prepare_samples(2, 5, {"Male": True}, strength=0.0)
    vectors, eps, temperature, pushes = prepared.inputs
    assert not pushes.any()
    with torch.inference_mode():
        prior_only = pipeline.model.sample_from_noise(vectors, eps, temperature)
    assert torch.allclose(pipeline(prepared)[0], prior_only.clamp(-1, 1), atol=1e-6)
