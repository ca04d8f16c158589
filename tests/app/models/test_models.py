"""Every registered family: builds from its tiny config, round-trips through a checkpoint; VAE/DCGAN behaviour."""

from __future__ import annotations

import pytest
import torch

from app.models import build_model, list_families
from app.models.checkpoint import load_checkpoint, save_checkpoint
from app.models.dcgan import DCGANConfig, DCGANDiscriminator, DCGANGenerator
from app.models.preprocess import PreprocessSpec
from app.models.registry import UnknownFamilyError, config_from_dict
from app.models.sampling import draw_noise, seeded_generator
from app.models.vae import VAE, VAEConfig, vae_loss
from tests.conftest import TINY_CONFIGS


def test_every_family_has_a_tiny_test_config():
    assert set(TINY_CONFIGS) == set(list_families())


@pytest.mark.parametrize("family", list_families())
def test_checkpoint_round_trip_is_exact_in_float32(family, tmp_path):
    torch.manual_seed(0)
    model = build_model(family, TINY_CONFIGS[family])
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        model,
        dtype=None,
        metrics={"x": 1.5},
        training={"epochs": 2},
        preprocess=PreprocessSpec(size=model.config.image_size),
    )
    loaded = load_checkpoint(path)
    assert loaded.family == family and loaded.metrics == {"x": 1.5} and loaded.training == {"epochs": 2}
    assert type(loaded.model) is type(model) and loaded.model.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert not loaded.model.training, "served models must be in eval mode"


def test_preprocess_must_match_the_model_size(tmp_path):
    with pytest.raises(ValueError, match="preprocess size 64 does not match the model's image_size 16"):
        save_checkpoint(tmp_path / "m.safetensors", build_model("vae", TINY_CONFIGS["vae"]))


def test_unknown_family_and_config_fields_are_refused():
    with pytest.raises(UnknownFamilyError, match="unknown model family 'nope'.*vae"):
        build_model("nope")
    with pytest.raises(ValueError, match="has no field.*'colour'"):
        config_from_dict(VAEConfig, {"colour": 3})


def test_vae_shapes_ranges_and_loss():
    model = VAE(VAEConfig(widths=(4, 8, 8, 8), latent_dim=12))
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    reconstruction, mu, logvar = model(images)
    assert reconstruction.shape == images.shape and mu.shape == logvar.shape == (3, 12)
    assert reconstruction.abs().max() <= 1
    loss, mse, kl = vae_loss(reconstruction, images, mu, logvar, 1e-3)
    assert torch.isclose(loss, mse + 1e-3 * kl) and kl >= 0
    model.eval()
    assert torch.equal(model.reconstruct(images), model.reconstruct(images)), "eval reconstructions are deterministic"


def test_vae_kl_is_zero_at_the_prior():
    mu, logvar = torch.zeros(2, 5), torch.zeros(2, 5)
    images = torch.zeros(2, 3, 4, 4)
    _, mse, kl = vae_loss(images, images, mu, logvar, 1.0)
    assert mse == 0 and kl == 0


def test_vae_refuses_sizes_that_do_not_halve_evenly():
    with pytest.raises(ValueError, match="does not halve"):
        VAE(VAEConfig(image_size=48, widths=(4, 4, 4, 4, 4)))


@pytest.mark.parametrize("size", [16, 32, 64])
def test_dcgan_generator_and_discriminator_shapes(size):
    config = DCGANConfig(latent_dim=10, generator_width=4, discriminator_width=4, image_size=size)
    generator, discriminator = DCGANGenerator(config).eval(), DCGANDiscriminator(config)
    images = generator.generate(torch.randn(5, 10))
    assert images.shape == (5, 3, size, size) and images.abs().max() <= 1
    assert discriminator(images).shape == (5,)


def test_same_seed_same_noise_and_images():
    model = DCGANGenerator(DCGANConfig(latent_dim=10, generator_width=4, image_size=16)).eval()
    first = draw_noise(model.latent_shape, 4, seeded_generator(7))
    second = draw_noise(model.latent_shape, 4, seeded_generator(7))
    assert torch.equal(first, second) and not torch.equal(first, draw_noise(model.latent_shape, 4, seeded_generator(8)))
    assert torch.equal(model.generate(first), model.generate(second))


def test_vae_prior_starts_standard_and_fits_the_latents():
    model = VAE(VAEConfig(widths=(4, 8), latent_dim=3, image_size=16)).eval()
    noise = torch.randn(5, 3)
    assert torch.equal(model.generate(noise), model.decode(noise)), "before fitting, the prior is N(0, I)"
    mixing = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, -1.0, 0.3]])
    latents = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(0)) @ mixing.T + torch.tensor(
        [1.0, -2.0, 0.5]
    )
    model.fit_prior(latents)
    draws = model.prior_mean + torch.randn(20_000, 3) @ model.prior_scale_tril.T
    assert torch.allclose(draws.mean(0), latents.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(draws.T), torch.cov(latents.T), atol=0.1)
    assert torch.equal(model.generate(noise), model.decode(model.prior_mean + noise @ model.prior_scale_tril.T))
