"""The whole Glow: invertibility, likelihood, sampling, checkpoints."""

from __future__ import annotations

import pytest
import torch

from app.models.checkpoint import load_checkpoint, save_checkpoint
from app.models.flows import MAX_INVERSE_ACTIVATION
from app.models.glow import Glow, GlowConfig, dequantize, interpolate_latents, postprocess
from app.models.preprocess import PreprocessSpec
from tests.conftest import TINY_CONFIGS
from tests.families.glow import brute_force_logdet, random_attributes, random_images, tiny_glow

torch.set_num_threads(1)


# ---- the whole flow --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_whole_flow_inverts(coupling):
    model = tiny_glow(coupling=coupling)
    x = dequantize(random_images(3, 16, seed=1).double(), 8, "uniform", torch.Generator().manual_seed(0))
    z_list, logdet = model.encode(x)
    assert [tuple(z.shape[1:]) for z in z_list] == model.latent_shapes == [(6, 8, 8), (24, 4, 4)]
    assert model.latent_dim == 3 * 16 * 16 and torch.isfinite(logdet).all()
    assert (model.decode(z_list) - x).abs().max() < 1e-10

    model32 = model.float()
    z32, _ = model32.encode(x.float())
    assert (model32.decode(z32) - x.float()).abs().max() < 1e-3
    flat = model32.flatten_latents(z32)
    assert all(torch.equal(a, b) for a, b in zip(model32.unflatten_latents(flat), z32))


@pytest.mark.parametrize(
    "config",
    [{"image_size": 4, "levels": 1}, {"image_size": 4, "levels": 2}, {"image_size": 8, "levels": 2, "steps": 1}],
)
def test_flow_logdet_matches_brute_force_jacobian(config):
    model = tiny_glow(**config)
    x = dequantize(
        random_images(1, config["image_size"], seed=2).double(), 8, "uniform", torch.Generator().manual_seed(1)
    )
    expected = brute_force_logdet(lambda v: model.flatten_latents(model.encode(v)[0]), x)
    assert torch.allclose(model.encode(x)[1][0], expected, atol=1e-8), (model.encode(x)[1][0], expected)


def test_dequantize_and_postprocess_round_trip_8_and_5_bits():
    pixels = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    images = pixels / 127.5 - 1
    centre = dequantize(images, 8, "center")
    assert centre.min() > -0.5 and centre.max() < 0.5
    assert torch.allclose(postprocess(centre, 8), images, atol=1e-6)
    noisy = dequantize(images, 8, "uniform", torch.Generator().manual_seed(0))
    assert ((noisy - dequantize(images, 8, "center")).abs() <= 0.5 / 256 + 1e-7).all()
    five = postprocess(dequantize(images, 5, "center"), 5)
    assert five.unique().numel() == 32 and (five - images).abs().max() <= 4 / 127.5 + 1e-6


def test_bits_per_dim_is_finite_and_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = Glow(GlowConfig(**TINY_CONFIGS["glow"]))
    images = (random_images(8, 16, seed=3) * 0.3).round(decimals=1)  # structured, learnable
    attributes = random_attributes(8, seed=3)
    model.initialize(images, attributes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(12):
        loss, bits_per_dim, class_bits = model.loss(images, attributes, torch.Generator().manual_seed(0))
        assert torch.isfinite(loss) and torch.isfinite(class_bits)
        history.append(bits_per_dim.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert history[-1] < history[0] - 0.1, history
    assert all(b < a + 0.05 for a, b in zip(history, history[1:])), history


def test_marginal_likelihood_with_one_draw_is_the_conditional():
    model = tiny_glow()
    images, y = random_images(2, 16).double(), random_attributes(1).double()
    conditional = model.bits_per_dim(images, y.expand(2, 40))
    assert torch.allclose(model.marginal_bits_per_dim(images, y), conditional, atol=1e-10)
    several = model.marginal_bits_per_dim(images, random_attributes(5).double())
    assert torch.isfinite(several).all()


def test_same_seed_same_samples_and_temperature_zero_is_the_prior_mean():
    model = tiny_glow(torch.float32)
    y = random_attributes(3)
    first = model.sample(y, 0.7, torch.Generator().manual_seed(5))
    assert first.shape == (3, 3, 16, 16) and first.abs().max() <= 1
    assert torch.equal(first, model.sample(y, 0.7, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, model.sample(y, 0.7, torch.Generator().manual_seed(6)))
    cold = [model.sample(y, 0.0, torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert torch.equal(cold[0], cold[1]), "at temperature 0 the noise does not matter"


def test_conditioning_changes_samples():
    model = tiny_glow(torch.float32)
    off, on = torch.zeros(1, 40), torch.ones(1, 40)
    assert not torch.allclose(
        model.sample(off, 0.7, torch.Generator().manual_seed(0)),
        model.sample(on, 0.7, torch.Generator().manual_seed(0)),
    )


def test_interpolation_endpoints_are_the_reconstructions():
    model = tiny_glow(torch.float32)
    images = random_images(2, 16, seed=4)
    latents = model.encode_images(images)
    for method in ("linear", "slerp"):
        frames = interpolate_latents(latents[0], latents[1], 6, method)
        assert frames.shape == (6, model.latent_dim)
        assert torch.equal(frames[0], latents[0]) and torch.equal(frames[-1], latents[1])
        decoded = model.decode_images(frames)
        assert torch.equal(decoded[[0, -1]], model.reconstruct(images))
    # An 8-bit reconstruction is the quantised input itself.
    quantised = torch.round((images + 1) * 127.5) / 127.5 - 1
    assert (model.reconstruct(images) - quantised).abs().max() < 1e-3
    middle = interpolate_latents(latents[0], latents[1], 3, "slerp")[1]
    assert torch.isclose(middle.norm(), (latents[0].norm() + latents[1].norm()) / 2, rtol=0.05)


def test_config_is_validated():
    with pytest.raises(ValueError, match="coupling"):
        GlowConfig(coupling="spline")
    with pytest.raises(ValueError, match="does not halve"):
        GlowConfig(image_size=20, levels=3)
    with pytest.raises(ValueError, match="n_bits"):
        GlowConfig(n_bits=9)


def test_loaded_checkpoint_keeps_actnorm_init_and_is_float32(tmp_path):
    model = tiny_glow(torch.float32)
    path = save_checkpoint(tmp_path / "glow.safetensors", model, preprocess=PreprocessSpec(size=16), dtype=None)
    loaded = load_checkpoint(path).model
    images, y = random_images(2, 16), random_attributes(2)
    assert torch.equal(loaded.bits_per_dim(images, y), model.bits_per_dim(images, y))
    loaded.train()
    loaded.initialize(images * 0.1, y)  # initialised already: a no-op
    assert torch.equal(loaded.bits_per_dim(images, y), model.bits_per_dim(images, y))


def test_measured_inverse_bounds_keep_faces_exact_and_bound_far_latents():
    model = tiny_glow(torch.float32)
    images = random_images(6, 16, seed=5)
    latents = model.encode_images(images)
    exact = model.decode_images(latents)
    bounds = model.measure_inverse_bounds(images.split(3))
    assert bounds.shape == (len(model.couplings),) and bool((bounds > 0).all())
    assert all(coupling.inverse_bound == MAX_INVERSE_ACTIVATION for coupling in model.couplings)  # measuring only

    model.set_inverse_bounds(bounds)
    assert [coupling.inverse_bound for coupling in model.couplings] == pytest.approx(bounds.tolist())
    assert torch.equal(model.decode_images(latents), exact)  # inside the envelope nothing is clamped

    far = latents * 1e3
    tight = model.decode(model.unflatten_latents(far))
    model.set_inverse_bounds(None)
    loose = model.decode(model.unflatten_latents(far))
    assert torch.isfinite(tight).all() and tight.abs().max() < loose.abs().max()
    with pytest.raises(ValueError, match=f"{len(model.couplings)} positive numbers"):
        model.set_inverse_bounds(torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        model.set_inverse_bounds(-bounds)
