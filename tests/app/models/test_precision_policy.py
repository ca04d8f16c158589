"""The CUDA precision policy, tested on the CPU with TF32 emulated: float32 convolution and matmul operands are rounded
to TF32's 10-bit mantissa whenever torch's flags would let CUDA use TF32. With torch's CUDA defaults (TF32 for
convolutions) the service's promises break: Glow reconstructions are no longer exact and seeded 8-bit images change.
Under the serving policy (:func:`app.services.device.configure_for_serving`) the emulation rounds nothing, so the
images are the exact float32 ones, byte for byte."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from app.models import build_model
from app.services.device import configure_for_serving
from tests.conftest import TINY_CONFIGS

aten = torch.ops.aten
# Composite ops are listed too: under inference mode they reach the dispatch mode before they are decomposed.
CONVOLUTIONS = {aten.convolution.default, aten.conv2d.default, aten.conv_transpose2d.input}
MATMULS = {
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.baddbmm.default,
    aten.linear.default,
    aten.matmul.default,
}


def to_tf32(tensor: torch.Tensor) -> torch.Tensor:
    """float32 rounded to nearest on TF32's 10 explicit mantissa bits (the low 13 of float32's 23 cleared)."""
    bits = tensor.contiguous().view(torch.int32)
    rounded = (bits + 0x1000) & ~0x1FFF
    return rounded.view(torch.float32).view_as(tensor)


class EmulatedTF32(TorchDispatchMode):
    """Rounds the float32 operands of convolutions and matmuls to TF32 where torch's flags allow TF32 on CUDA."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rounds = (func in CONVOLUTIONS and torch.backends.cudnn.conv.fp32_precision == "tf32") or (
            func in MATMULS and torch.backends.cuda.matmul.fp32_precision == "tf32"
        )
        if rounds:
            args = tuple(to_tf32(a) if isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a for a in args)
        return func(*args, **kwargs)


@pytest.fixture
def cuda_defaults():
    """torch's defaults on a CUDA host (TF32 convolutions, IEEE matmuls), restored afterwards."""
    saved = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    yield
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
    torch.backends.cudnn.benchmark = benchmark


def perturbed(family: str) -> torch.nn.Module:
    """A tiny model whose every parameter is moved off its initial value (zero-initialised couplings and priors
    would make a Glow nearly the identity, which hides rounding)."""
    torch.manual_seed(0)
    model = build_model(family, TINY_CONFIGS[family])
    if family == "glow":
        model.initialize(torch.rand(8, 3, 16, 16) * 2 - 1, torch.zeros(8, model.config.num_attributes))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def eight_bit(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def glow_round_trip_error(model, x: torch.Tensor) -> float:
    """Largest |decode(encode(x)) - x| of the flow itself (before the images are quantised to its bins)."""
    with torch.inference_mode():
        return float((model.decode(model.encode(x)[0]) - x).abs().max())


def dcgan_bytes(model) -> torch.Tensor:
    noise = torch.randn((32, *model.latent_shape), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        return eight_bit(model.generate(noise))


def test_the_emulation_rounds_to_ten_mantissa_bits():
    x = torch.tensor([1.0 + 2**-10, 1.0 + 2**-11 + 2**-13, 1.0 + 2**-12, 3.0])
    assert to_tf32(x).tolist() == [1.0 + 2**-10, 1.0 + 2**-10, 1.0, 3.0]


def test_tf32_breaks_the_promises_and_the_serving_policy_keeps_them(cuda_defaults):
    glow, dcgan = perturbed("glow"), perturbed("dcgan")
    faces = torch.rand((8, 3, 16, 16), generator=torch.Generator().manual_seed(0)) - 0.5  # within the bounds
    exact_error, exact_bytes = glow_round_trip_error(glow, faces), dcgan_bytes(dcgan)
    assert exact_error < 1e-4

    with EmulatedTF32():  # torch's CUDA defaults: TF32 convolutions
        tf32_error, tf32_bytes = glow_round_trip_error(glow, faces), dcgan_bytes(dcgan)
    assert tf32_error > 10 * exact_error, (tf32_error, exact_error)
    assert (tf32_bytes != exact_bytes).any(), "TF32 changed no seeded 8-bit value"

    configure_for_serving(torch.device("cuda"))
    with EmulatedTF32():
        served_error, served_bytes = glow_round_trip_error(glow, faces), dcgan_bytes(dcgan)
    assert served_error == exact_error
    assert torch.equal(served_bytes, exact_bytes)
