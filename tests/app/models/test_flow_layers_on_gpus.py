"""What the Glow layers do for GPU training and serving: ActNorm reads its ``initialized`` buffer (a device-to-host
sync) only until it has seen it true, and InvConv1x1 inverts its weight once while serving, again whenever the
weights change, and never from a stale cache in training."""

from __future__ import annotations

import pytest
import torch

from app.models.flows import ActNorm, InvConv1x1


def unreadable() -> torch.Tensor:
    """A buffer whose value cannot be read: ``bool()`` of a meta tensor raises, as a sync would show on a GPU."""
    return torch.empty((), dtype=torch.bool, device="meta")


def test_actnorm_reads_its_flag_only_until_it_is_initialised():
    norm = ActNorm(3).train()
    x = torch.randn(16, 3, 4, 4) * 3 + 1
    norm(x)  # initialises from this batch
    bias = norm.bias.detach().clone()
    norm.initialized = unreadable()
    for _ in range(3):
        norm(x * 5)  # would raise if the buffer were read
    assert torch.equal(norm.bias, bias)


def test_a_loaded_actnorm_reads_the_loaded_flag_once():
    trained = ActNorm(3).train()
    trained(torch.randn(16, 3, 4, 4) + 2)
    fresh = ActNorm(3).train()
    fresh(torch.randn(16, 3, 4, 4))  # initialised from its own batch...
    fresh.load_state_dict(trained.state_dict())  # ...then given the trained weights
    fresh(torch.randn(16, 3, 4, 4) * 9)
    assert torch.equal(fresh.bias, trained.bias), "a loaded, initialised actnorm never re-initialises"
    fresh.initialized = unreadable()
    fresh(torch.randn(16, 3, 4, 4))  # and the flag is not read again


def test_loading_an_uninitialised_state_makes_it_initialise_again():
    norm = ActNorm(3).train()
    norm(torch.randn(16, 3, 4, 4))
    norm.load_state_dict(ActNorm(3).state_dict())
    x = torch.randn(16, 3, 4, 4) * 4 + 3
    y, _ = norm(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert list(norm.state_dict()) == ["bias", "log_scale", "initialized"]


@pytest.fixture
def inversions(monkeypatch):
    """Counts torch.linalg.inv calls."""
    calls = []
    original = torch.linalg.inv

    def counted(matrix):
        calls.append(tuple(matrix.shape))
        return original(matrix)

    monkeypatch.setattr(torch.linalg, "inv", counted)
    return calls


def uncached_reverse(conv: InvConv1x1, y: torch.Tensor) -> torch.Tensor:
    inverse = torch.linalg.inv(conv.weight().double()).to(y.dtype)
    return torch.nn.functional.conv2d(y, inverse[:, :, None, None])


def test_invconv_inverts_once_while_serving_and_again_after_any_change(inversions):
    torch.manual_seed(0)
    conv = InvConv1x1(6).eval()
    x = torch.randn(4, 6, 5, 5)
    with torch.inference_mode():
        y, _ = conv(x)
        first = conv.reverse(y)
        second = conv.reverse(y)
    assert len(inversions) == 1, "the second reverse reused the inverse"
    assert torch.equal(first, second) and (first - x).abs().max() < 1e-5

    with torch.no_grad():
        conv.log_s.add_(0.3)  # as an optimiser step does
    with torch.inference_mode():
        y, _ = conv(x)
        changed = conv.reverse(y)
    assert len(inversions) == 2 and (changed - x).abs().max() < 1e-5

    other = InvConv1x1(6)
    conv.load_state_dict(other.state_dict())
    with torch.inference_mode():
        y, _ = conv(x)
        assert torch.equal(conv.reverse(y), uncached_reverse(other, y))
        assert (conv.reverse(y) - x).abs().max() < 1e-5


def test_invconv_never_caches_in_training_or_with_gradients(inversions):
    torch.manual_seed(0)
    conv = InvConv1x1(4).train()
    y = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        conv.reverse(y)
        conv.reverse(y)
    assert len(inversions) == 2
    conv.eval()
    out = conv.reverse(y.requires_grad_())
    out.sum().backward()
    assert conv.log_s.grad is not None and len(inversions) == 3, "gradients still flow through the inverse"


def test_a_cached_inverse_made_under_inference_mode_serves_outside_it():
    conv = InvConv1x1(4).eval()
    y = torch.randn(2, 4, 3, 3)
    with torch.inference_mode():
        inside = conv.reverse(y)
    with torch.no_grad():
        outside = conv.reverse(y)
    assert torch.equal(inside, outside) and not outside.is_inference()
