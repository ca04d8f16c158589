"""ACGAN's architecture: conditioning, the toggle's on/off pairs and strength, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.models.acgan import (
    ACGANConfig,
    ACGANDiscriminator,
    toggle_pairs,
)
from app.models.attributes import FREQUENCIES_KEY
from app.models.checkpoint import load_checkpoint, save_checkpoint
from app.models.preprocess import PreprocessSpec
from app.models.sampling import draw_noise, seeded_generator
from tests.families.gans import ACGAN_FREQUENCIES as FREQUENCIES
from tests.families.gans import ACGAN_NAMES as NAMES
from tests.families.gans import tiny_acgan as tiny_generator

torch.set_num_threads(1)

# --- model ----------------------------------------------------------------------------------------------------------


def test_shapes_ranges_and_discriminator_heads():
    generator = tiny_generator()
    noise, attributes = torch.randn(5, 8), torch.randint(0, 2, (5, 3)).float()
    images = generator.generate(noise, attributes)
    assert images.shape == (5, 3, 16, 16) and images.abs().max() <= 1 and torch.isfinite(images).all()
    assert generator.latent_shape == (8,) and generator.attribute_names == NAMES
    real_fake, classes = ACGANDiscriminator(generator.config)(images)
    assert real_fake.shape == (5,) and classes.shape == (5, 3)
    with pytest.raises(ValueError, match=r"attributes must have shape \(5, 3\)"):
        generator.generate(noise, attributes[:, :2])


def test_discriminator_has_no_batchnorm_on_its_first_layer():
    config = ACGANConfig(image_size=16, discriminator_width=4)
    body = ACGANDiscriminator(config).body
    assert isinstance(body[0], nn.Conv2d) and isinstance(body[1], nn.LeakyReLU)
    assert any(isinstance(layer, nn.BatchNorm2d) for layer in body), "later layers keep theirs"
    assert len(config.attributes) == 13 and "Smiling" in config.attributes  # the classic course set


def test_config_refuses_no_or_repeated_attributes():
    with pytest.raises(ValueError, match="at least one"):
        ACGANConfig(attributes=())
    with pytest.raises(ValueError, match="repeat"):
        ACGANConfig(attributes=("Smiling", "Smiling"))


def test_changing_only_an_attribute_changes_the_output_and_same_inputs_same_output():
    generator = tiny_generator()
    noise = draw_noise(generator.latent_shape, 4, seeded_generator(1))
    attributes = torch.zeros(4, 3)
    flipped = attributes.clone()
    flipped[:, 0] = 1
    first = generator.generate(noise, attributes)
    assert torch.equal(first, generator.generate(noise.clone(), attributes.clone()))
    changed = (generator.generate(noise, flipped) - first).abs().flatten(1).amax(1)
    assert (changed > 0).all(), "every image reacts to its attribute"


def test_toggle_pairs_share_noise_and_other_attributes():
    noise, attributes = torch.randn(3, 8), torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1]])
    pair_noise, pair_attributes = toggle_pairs(noise, attributes, 1)
    assert torch.equal(pair_noise[:3], noise) and torch.equal(pair_noise[3:], noise)
    assert (pair_attributes[:3, 1] == 0).all() and (pair_attributes[3:, 1] == 1).all()
    others = [0, 2]
    assert torch.equal(pair_attributes[:3, others], attributes[:, others])
    assert torch.equal(pair_attributes[3:, others], attributes[:, others])
    assert torch.equal(attributes[:, 1], torch.tensor([0.0, 1, 1])), "the input is not modified"


def test_checkpoint_round_trip_keeps_attributes_and_frequencies(tmp_path):
    generator = tiny_generator()
    path = save_checkpoint(
        tmp_path / "a.safetensors",
        generator,
        attributes=NAMES,
        dtype=None,
        preprocess=PreprocessSpec(size=16),
        extras={FREQUENCIES_KEY: FREQUENCIES},
    )
    loaded = load_checkpoint(path)
    assert loaded.family == "acgan" and loaded.attributes == NAMES and loaded.model.config == generator.config
    assert torch.equal(loaded.extras[FREQUENCIES_KEY], FREQUENCIES)
    noise, attributes = torch.randn(2, 8), torch.ones(2, 3)
    assert torch.equal(loaded.model.generate(noise, attributes), generator.generate(noise, attributes))
