"""Glow's condition at sampling time: each requested attribute moves the samples along its latent direction by
strength * (value - training frequency). (The inverse flow's safety for latents far off the distribution is tested on
the shipped Glow, in tests/weights/test_shipped_weights.py: a tiny random flow does not diverge.)"""

from __future__ import annotations

import pytest
import torch

from app.models import build_model
from app.models.attributes import FREQUENCIES_KEY
from app.models.checkpoint import load_checkpoint
from app.models.glow import COVARIANCE_KEY, DIRECTIONS_KEY
from app.models.pipelines import build_pipeline
from app.models.pipelines.glow import CORRELATION_RIDGE
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
    assert torch.allclose(pushes[:, male], expected_push.expand(3), rtol=1e-4)
    assert (pushes[:, torch.arange(40) != male] == 0).all(), "attributes left open are not pushed"
    shift = pushes[:1, male] * extras[DIRECTIONS_KEY][male]
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
    assert torch.allclose(off[:, male], -extras[FREQUENCIES_KEY][male].expand(2), rtol=1e-4)
    prepared = pipeline.prepare_samples(2, 5, {"Male": True}, strength=0.0)
    vectors, eps, temperature, pushes = prepared.inputs
    assert not pushes.any()
    with torch.inference_mode():
        prior_only = pipeline.model.sample_from_noise(vectors, eps, temperature)
    assert torch.allclose(pipeline(prepared)[0], prior_only.clamp(-1, 1), atol=1e-6)


def test_several_attributes_are_conditioned_jointly_through_the_label_covariance(tmp_path):
    """Two perfectly correlated attributes requested together move the sample once, not twice: the push is
    Cov(z, y_R) Cov(y_R)^-1 (y_R - p_R), here with a covariance saved in the checkpoint."""
    torch.manual_seed(0)
    pipeline, extras = glow_pipeline(tmp_path)
    male, goatee = pipeline.attributes.index("Male"), pipeline.attributes.index("Goatee")
    frequencies = extras[FREQUENCIES_KEY]
    covariance = torch.diag(frequencies * (1 - frequencies))
    shared = 0.2
    covariance[male, male] = covariance[goatee, goatee] = covariance[male, goatee] = covariance[goatee, male] = shared
    path = write_tiny_checkpoint(tmp_path / "cov", "glow", extras={**extras, COVARIANCE_KEY: covariance})
    joint = build_pipeline(load_checkpoint(path))
    frequencies = joint.attribute_means
    pushes = joint.prepare_samples(1, 0, {"Male": True, "Goatee": True}).inputs[3][0]
    alone = joint.prepare_samples(1, 0, {"Male": True}).inputs[3][0]
    # The two are one attribute: together they move the sample about as far as one of them alone (the ridge
    # splits the push), never the sum of two pushes nor an exploding difference.
    deviation = ((1 - frequencies[male]) + (1 - frequencies[goatee])) / 2
    assert torch.allclose(pushes[male] + pushes[goatee], 1.5 * deviation, rtol=0.1)
    assert pushes.abs().max() <= 1.5 * (1 + CORRELATION_RIDGE) / CORRELATION_RIDGE, "bounded by the ridge"
    assert torch.allclose(alone[male], 1.5 * (1 - frequencies[male]), rtol=1e-4)


def test_manipulation_moves_along_the_partial_direction_in_units_that_turn_an_attribute_on(tmp_path):
    """Without correlations the partial direction is the stored one; with them, it is corrected for what the
    correlated attributes contribute (moving Male alone should not also grow a goatee)."""
    from app.models.pipelines.glow import MANIPULATION_UNIT

    pipeline, extras = glow_pipeline(tmp_path)
    male, goatee = pipeline.attributes.index("Male"), pipeline.attributes.index("Goatee")
    directions = extras[DIRECTIONS_KEY]
    latent = torch.zeros(pipeline.latent_dim)
    moved = pipeline.manipulation_latents(latent, "Male", [-1.0, 0.0, 0.5])
    assert torch.allclose(
        moved, torch.tensor([-1.0, 0.0, 0.5])[:, None] * MANIPULATION_UNIT * directions[male], atol=1e-4
    )

    frequencies = extras[FREQUENCIES_KEY]
    covariance = torch.diag(frequencies * (1 - frequencies))
    covariance[male, goatee] = covariance[goatee, male] = (
        0.6 * (covariance[male, male] * covariance[goatee, goatee]).sqrt()
    )
    path = write_tiny_checkpoint(tmp_path / "cov", "glow", extras={**extras, COVARIANCE_KEY: covariance})
    effect = build_pipeline(load_checkpoint(path)).attribute_effects[male]
    # The raw Male direction carries part of Goatee's; the partial one takes it out.
    along_goatee = torch.dot(effect, directions[goatee]) / directions[goatee].norm()
    raw_along_goatee = torch.dot(directions[male], directions[goatee]) / directions[goatee].norm()
    assert along_goatee < raw_along_goatee


def test_calibrated_units_set_each_attributes_strength_one(tmp_path):
    """A checkpoint calibrated per attribute (``python -m training calibrate-glow``) moves each attribute by its own
    unit; without calibration every attribute moves MANIPULATION_UNIT partial directions."""
    from app.models.glow import MANIPULATION_UNITS_KEY
    from app.models.pipelines.glow import MANIPULATION_UNIT

    plain, extras = glow_pipeline(tmp_path / "plain")
    assert torch.equal(plain.manipulation_units, torch.full((40,), MANIPULATION_UNIT))
    units = torch.linspace(1, 8, 40)
    path = write_tiny_checkpoint(tmp_path / "calibrated", "glow", extras={**extras, MANIPULATION_UNITS_KEY: units})
    calibrated = build_pipeline(load_checkpoint(path))
    latent = torch.zeros(calibrated.latent_dim)
    for attribute in ("Male", "Young"):
        index = calibrated.attributes.index(attribute)
        moved = calibrated.manipulation_latents(latent, attribute, [1.0, -0.5])
        expected = torch.tensor([1.0, -0.5])[:, None] * units[index] * plain.attribute_effects[index]
        assert torch.allclose(moved, expected, atol=1e-4)


@pytest.mark.parametrize("units", [torch.ones(39), torch.full((40,), -1.0), torch.full((40,), float("nan"))])
def test_malformed_units_are_refused_when_the_pipeline_is_built(tmp_path, units):
    from app.models.checkpoint import CheckpointError
    from app.models.glow import MANIPULATION_UNITS_KEY

    _, extras = glow_pipeline(tmp_path / "plain")
    path = write_tiny_checkpoint(tmp_path / "bad", "glow", extras={**extras, MANIPULATION_UNITS_KEY: units})
    with pytest.raises(CheckpointError, match="manipulation_units"):  # NaN: refused by the loader already
        build_pipeline(load_checkpoint(path))


def test_calibrated_latents_restrict_an_attributes_direction(tmp_path):
    """An attribute calibrated to leave the top latent alone moves only the split latents, by its unit times the
    partial direction there; the others still move every latent."""
    from app.models.glow import MANIPULATION_LEVELS_KEY

    plain, extras = glow_pipeline(tmp_path / "plain")
    shapes = plain.model.latent_shapes
    assert torch.equal(plain.manipulation_levels, torch.ones(40, len(shapes)))
    levels = torch.ones(40, len(shapes))
    eyeglasses = plain.attributes.index("Eyeglasses")
    levels[eyeglasses, -1] = 0.0
    path = write_tiny_checkpoint(tmp_path / "levels", "glow", extras={**extras, MANIPULATION_LEVELS_KEY: levels})
    calibrated = build_pipeline(load_checkpoint(path))
    latent = torch.zeros(calibrated.latent_dim)
    top = shapes[-1][0] * shapes[-1][1] * shapes[-1][2]
    moved = calibrated.manipulation_latents(latent, "Eyeglasses", [1.0])[0]
    effect = plain.attribute_effects[eyeglasses]
    assert (moved[-top:] == 0).all() and (moved[:-top] != 0).any()
    assert torch.allclose(moved[:-top], calibrated.manipulation_units[eyeglasses] * effect[:-top], atol=1e-5)
    assert torch.allclose(
        calibrated.manipulation_latents(latent, "Male", [1.0])[0], plain.manipulation_latents(latent, "Male", [1.0])[0]
    )


@pytest.mark.parametrize("shape_or_value", [(40, 1), (39, 2), -1.0, 0.0])
def test_malformed_latent_weights_are_refused_when_the_pipeline_is_built(tmp_path, shape_or_value):
    from app.models.checkpoint import CheckpointError
    from app.models.glow import MANIPULATION_LEVELS_KEY

    plain, extras = glow_pipeline(tmp_path / "plain")
    if isinstance(shape_or_value, tuple):
        levels = torch.ones(shape_or_value)
    else:  # a negative weight, or a row with no latent to move
        levels = torch.ones(40, len(plain.model.latent_shapes))
        levels[3] = shape_or_value
    path = write_tiny_checkpoint(tmp_path / "bad", "glow", extras={**extras, MANIPULATION_LEVELS_KEY: levels})
    with pytest.raises(CheckpointError, match="manipulation_levels must be 40 rows of 2 non-negative weights"):
        build_pipeline(load_checkpoint(path))
