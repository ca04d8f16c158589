"""The Glow pipeline's artefact guard: a failing manipulation frame is retried at smaller strengths and refused alone,
interpolation frames are refused alone, and a flagged sample is redrawn from its own noise at a lower temperature."""

from __future__ import annotations

import asyncio

import pytest
import torch

from app.models.artefacts import colour_noise
from app.models.checkpoint import CheckpointError
from app.models.pipelines.glow import STRENGTH_BACKOFF, GlowPipeline
from tests.families.glow import random_images, tiny_glow_pipeline

torch.set_num_threads(1)


# The tiny flow is random, so its own frames are noisy (colour noise 1.2-1.4, samples at temperature 1 about 2.6);
# these limits sit above them and below the injected speckles (2.5).
TINY_LIMITS = torch.tensor([3.0, 0.5])


def pipeline_with(tmp_path, limits: torch.Tensor | None) -> GlowPipeline:
    return tiny_glow_pipeline(tmp_path, limits)


def noisy_beyond(pipeline: GlowPipeline, base: torch.Tensor, attribute: str, threshold: float):
    """A decode that paints colour noise on every frame moved further than ``threshold`` strengths from ``base``."""
    unit = pipeline.manipulation_latents(base, attribute, [1.0])[0] - base
    # saturated colours flipping from pixel to pixel: far noisier than the tiny random flow's own frames
    speckle = torch.randint(0, 2, (3, 16, 16), generator=torch.Generator().manual_seed(3)).float() * 2 - 1

    async def decode(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, unusable = pipeline.run("decode", (latents,))
        strengths = ((latents - base) @ unit / unit.dot(unit)).abs()
        images = images.clone()
        images[strengths > threshold + 1e-6] = speckle
        return images, unusable

    return decode


@pytest.mark.parametrize(
    ("threshold", "applied", "statuses"),
    [
        (2.0, [-1.0, 0.0, 0.5, 1.0], ["ok", "ok", "ok", "ok"]),
        (0.6, [-0.5, 0.0, 0.5, 0.5], ["reduced", "ok", "ok", "reduced"]),
        (0.3, [-0.25, 0.0, 0.25, 0.25], ["reduced", "ok", "reduced", "reduced"]),
        (0.1, [None, 0.0, None, None], ["refused", "ok", "refused", "refused"]),
    ],
)
def test_manipulation_backs_off_then_refuses_frames_alone(tmp_path, threshold, applied, statuses):
    pipeline = pipeline_with(tmp_path, TINY_LIMITS)
    latent = pipeline.run("encode", (random_images(1, 16, seed=5),))[0][0]
    decode = noisy_beyond(pipeline, latent, "Smiling", threshold)
    frames = asyncio.run(pipeline.manipulate(latent, "Smiling", [-1.0, 0.0, 0.5, 1.0], decode))
    assert frames.applied == pytest.approx(applied) if None not in applied else frames.applied == applied
    assert frames.statuses() == statuses and frames.requested == [-1.0, 0.0, 0.5, 1.0]
    refused = torch.tensor([status == "refused" for status in statuses])
    assert (frames.images[refused] == 0).all(), "a refused frame is a grey tile"
    assert not pipeline.speckled(frames.images[~refused], colour_noise(frames.images[1:2])).any()
    assert len(STRENGTH_BACKOFF) == 3


def test_without_limits_frames_are_checked_for_divergence_only(tmp_path):
    pipeline = pipeline_with(tmp_path, None)
    latent = pipeline.run("encode", (random_images(1, 16, seed=5),))[0][0]
    frames = asyncio.run(
        pipeline.manipulate(latent, "Smiling", [-1.0, 1.0], noisy_beyond(pipeline, latent, "Smiling", 0.1))
    )
    assert frames.statuses() == ["ok", "ok"]


def test_interpolation_refuses_noisy_frames_alone(tmp_path):
    pipeline = pipeline_with(tmp_path, TINY_LIMITS)
    images = pipeline.run("decode", (torch.zeros((5, pipeline.latent_dim)),))[0].clone()
    images[2] = torch.randint(0, 2, (3, 16, 16), generator=torch.Generator().manual_seed(1)).float() * 2 - 1
    unusable = torch.tensor([False, False, False, True, False])
    frames = pipeline.interpolation_frames(images, unusable)
    assert frames.statuses() == ["ok", "ok", "refused", "refused", "ok"] and frames.refused == [2, 3]
    assert (frames.images[2:4] == 0).all() and torch.equal(frames.images[0], images[0])


def test_flagged_samples_are_redrawn_colder_row_by_row(tmp_path):
    pipeline = pipeline_with(tmp_path, None)
    prepared = pipeline.prepare_samples(6, seed=4, temperature=1.0)
    vectors, eps, temperature, pushes = prepared.inputs
    hot = pipeline.run("sample", prepared.inputs)[0]
    cold = pipeline.run("sample", (vectors, eps, temperature * 0, pushes))[0]
    # a ceiling between the coldest and the noisiest samples: some rows pass, the others are redrawn
    hot_scores, cold_scores = colour_noise(hot), colour_noise(cold)
    ceiling = float((hot_scores.median() + hot_scores.min()) / 2)
    assert cold_scores.max() < ceiling < hot_scores.max()
    guarded = pipeline_with(tmp_path, torch.tensor([ceiling, 0.5]))
    images = guarded.run("sample", prepared.inputs)[0]
    assert not guarded.speckled(images).any()
    kept = hot_scores <= ceiling
    assert torch.equal(images[kept], hot[kept]) and not torch.equal(images[~kept], hot[~kept])
    one_by_one = torch.cat([guarded.run("sample", tuple(x[i : i + 1] for x in prepared.inputs))[0] for i in range(6)])
    assert torch.allclose(one_by_one, images, atol=1e-3), "the redraw is row-wise: batching changes no seeded sample"


@pytest.mark.parametrize("bad", [torch.tensor([0.3]), torch.tensor([0.3, -1.0]), torch.tensor([float("nan"), 0.1])])
def test_malformed_limits_are_refused_at_load(tmp_path, bad):
    with pytest.raises(CheckpointError, match="artefact_limits"):
        pipeline_with(tmp_path, bad)
