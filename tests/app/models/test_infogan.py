"""InfoGAN's architecture: codes, sweeps, the recognition head, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.models.checkpoint import load_checkpoint, save_checkpoint
from app.models.infogan import (
    InfoGANConfig,
    InfoGANDiscriminator,
    InfoGANGenerator,
    draw_codes,
    recognizer_extras,
    recognizer_from_extras,
    sweep_inputs,
)
from app.models.preprocess import PreprocessSpec
from app.models.sampling import draw_noise, seeded_generator
from tests.families.gans import tiny_infogan as tiny_generator

torch.set_num_threads(1)

# --- model ----------------------------------------------------------------------------------------------------------


def test_shapes_ranges_and_d_q_heads():
    generator = tiny_generator()
    assert generator.noise_shape == (8,) and generator.n_codes == 3 and generator.n_categories == 10
    noise, codes = torch.randn(5, 8), draw_codes(5, 3, 10, seeded_generator(0))
    images = generator.generate(noise, codes)
    assert images.shape == (5, 3, 16, 16) and images.abs().max() <= 1 and torch.isfinite(images).all()
    discriminator = InfoGANDiscriminator(generator.config)
    real_fake, code_logits = discriminator(images)
    assert real_fake.shape == (5,) and code_logits.shape == (5, 3, 10)
    assert torch.equal(discriminator.eval().real_fake(images), discriminator(images)[0])
    with pytest.raises(ValueError, match=r"codes must have shape \(5, 3\)"):
        generator.generate(noise, codes[:, :2])


def test_paper_setting_is_the_default():
    config = InfoGANConfig()
    assert (config.noise_dim, config.n_codes, config.n_categories) == (128, 10, 10)
    generator = InfoGANGenerator(config).eval()
    assert generator.net[0].in_channels == 128 + 10 * 10  # noise and one-hot codes enter the ladder together
    assert generator.generate(torch.randn(2, 128), torch.zeros(2, 10, dtype=torch.long)).shape == (2, 3, 64, 64)
    slopes = {m.negative_slope for m in InfoGANDiscriminator(config).modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}
    with pytest.raises(ValueError, match="categories"):
        InfoGANConfig(n_categories=1)


def test_changing_only_a_code_changes_the_output_and_same_inputs_same_output():
    generator = tiny_generator()
    noise = draw_noise(generator.noise_shape, 4, seeded_generator(1))
    codes = torch.zeros(4, 3, dtype=torch.long)
    moved = codes.clone()
    moved[:, 2] = 7
    first = generator.generate(noise, codes)
    assert torch.equal(first, generator.generate(noise.clone(), codes.clone()))
    assert ((generator.generate(noise, moved) - first).abs().flatten(1).amax(1) > 0).all()


def test_sweep_inputs_walk_one_code_and_keep_the_rest():
    noise, codes = torch.randn(2, 8), torch.tensor([[1, 2, 3], [4, 5, 6]])
    swept_noise, swept_codes = sweep_inputs(noise, codes, 1, 10)
    assert swept_noise.shape == (20, 8) and swept_codes.shape == (20, 3)
    for row in range(2):
        block = slice(10 * row, 10 * row + 10)
        assert (swept_noise[block] == noise[row]).all()
        assert swept_codes[block, 1].tolist() == list(range(10))
        assert (swept_codes[block, 0] == codes[row, 0]).all() and (swept_codes[block, 2] == codes[row, 2]).all()


def test_checkpoint_round_trip_with_recognizer_extras(tmp_path):
    generator = tiny_generator()
    torch.manual_seed(1)
    recognizer = InfoGANDiscriminator(generator.config)
    path = save_checkpoint(
        tmp_path / "i.safetensors",
        generator,
        dtype=None,
        preprocess=PreprocessSpec(size=16),
        extras=recognizer_extras(recognizer, dtype=torch.float32),
    )
    loaded = load_checkpoint(path)
    assert loaded.family == "infogan" and loaded.model.config == generator.config
    noise, codes = torch.randn(3, 8), draw_codes(3, 3, 10, seeded_generator(2))
    assert torch.equal(loaded.model.generate(noise, codes), generator.generate(noise, codes))
    rebuilt = recognizer_from_extras(loaded.model.config, loaded.extras)
    for name, tensor in recognizer.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    assert recognizer_from_extras(loaded.model.config, {}) is None
