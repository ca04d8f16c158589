"""Glow's layers: actnorm, invertible 1x1 convolutions, couplings, squeeze and split, the conditional priors."""

from __future__ import annotations

import pytest
import torch

from app.models.flows import ActNorm, ConditionalPrior, Coupling, FlowStep, InvConv1x1, Split, squeeze2d, unsqueeze2d
from tests.families.glow import brute_force_logdet, perturb, random_attributes

torch.set_num_threads(1)


# ---- layers ----------------------------------------------------------------------------------------------------


def make_layer(kind: str) -> torch.nn.Module:
    torch.manual_seed(1)
    layer = {
        "actnorm": lambda: ActNorm(4),
        "invconv": lambda: InvConv1x1(4),
        "affine": lambda: Coupling(4, 8, True),
        "additive": lambda: Coupling(4, 8, False),
        "step": lambda: FlowStep(4, 8, True),
    }[kind]()
    layer(torch.randn(16, 4, 4, 4) * 3 + 1)  # data-dependent init of any actnorm inside
    return perturb(layer, 0.1).double().eval()


@pytest.mark.parametrize("kind", ["actnorm", "invconv", "affine", "additive", "step"])
def test_each_layer_inverts_and_its_logdet_matches_the_jacobian(kind):
    layer = make_layer(kind)
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    y, logdet = layer(x)
    assert not torch.allclose(y, x), "the layer should not be the identity here"
    assert torch.allclose(layer.reverse(y), x, atol=1e-10, rtol=0)
    assert logdet.shape == (3,)
    one = x[:1]
    assert torch.allclose(brute_force_logdet(lambda v: layer(v)[0], one), layer(one)[1][0], atol=1e-8)

    layer32 = layer.float()
    y32, _ = layer32(x.float())
    assert (layer32.reverse(y32) - x.float()).abs().max() < 1e-3


def test_actnorm_data_dependent_init_standardises_and_is_saved_as_a_buffer():
    norm = ActNorm(3)
    x = torch.randn(64, 3, 5, 5) * torch.tensor([1.0, 4.0, 0.2])[None, :, None, None] + 7
    y, _ = norm(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    assert bool(norm.state_dict()["initialized"])
    before = norm.bias.detach().clone()
    norm(x * 10)  # already initialised: a second batch changes nothing
    assert torch.equal(norm.bias, before)
    fresh = ActNorm(3)
    fresh.load_state_dict(norm.state_dict())
    fresh.train()(x * 10)  # a loaded (initialised) actnorm never re-initialises, even in training mode
    assert torch.equal(fresh.bias, before)
    assert not bool(ActNorm(3).eval()(x)[0].sub(x).abs().max()), "eval mode never initialises"


def test_invconv_is_lu_parametrised_and_its_logdet_is_cheap():
    conv = make_layer("invconv")
    weight = conv.weight()
    assert torch.allclose(torch.linalg.slogdet(weight)[1], conv.log_s.sum())
    assert {"permutation", "sign_s", "lower", "upper", "log_s"} <= set(conv.state_dict())


def test_coupling_starts_as_identity_with_zero_initialised_last_conv():
    coupling = Coupling(4, 8, affine=False)
    x = torch.randn(2, 4, 3, 3)
    y, logdet = coupling(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(2))


def test_squeeze_and_split_invert():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    squeezed = squeeze2d(x)
    assert squeezed.shape == (2, 12, 4, 4) and torch.equal(unsqueeze2d(squeezed), x)
    assert torch.equal(squeezed[0, :4, 0, 0], torch.stack([x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]))

    split = perturb(Split(12, 4, 4, num_attributes=40)).double()
    stay, z = split(squeezed)
    assert stay.shape == z.shape == (2, 6, 4, 4) and torch.equal(split.reverse(stay, z), squeezed)
    # The split's prior maps standard noise to z and back.
    y = random_attributes(2).double()
    eps = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    sampled = split.prior.sample(stay, y, eps, temperature=1.0)
    mean, logs = split.prior(stay, y)
    assert torch.allclose((sampled - mean) * torch.exp(-logs), eps, atol=1e-12)


def test_conditional_prior_starts_as_standard_normal_and_depends_on_y():
    prior = ConditionalPrior((2, 3, 3), num_attributes=40)
    mean, logs = prior(None, random_attributes(4))
    assert torch.equal(mean, torch.zeros(4, 2, 3, 3)) and torch.equal(logs, torch.zeros(4, 2, 3, 3))
    perturb(prior)
    mean_a, _ = prior(None, torch.zeros(1, 40))
    mean_b, _ = prior(None, torch.ones(1, 40))
    assert not torch.allclose(mean_a, mean_b)
