"""The invertible layers of Glow (Kingma & Dhariwal 2018), each exact in both directions.

Every layer maps ``forward(x) -> (y, logdet)`` with ``logdet`` of shape (N,) (log |det dy/dx| per sample) and
``reverse(y) -> x``. Tensors are (N, C, H, W). Nothing here knows about images, attributes or checkpoints; the
model in :mod:`app.models.glow` assembles these into the multi-scale flow.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 4C, H/2, W/2): each 2x2 patch becomes 4 channels (a permutation, log-det 0)."""
    n, c, h, w = x.shape
    x = x.view(n, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(n, c * 4, h // 2, w // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`squeeze2d`."""
    n, c, h, w = x.shape
    x = x.view(n, c // 4, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, h * 2, w * 2)


def gaussian_log_p(z: torch.Tensor, mean: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mean, exp(logs)^2)."""
    return -0.5 * (LOG_2PI + 2.0 * logs + (z - mean) ** 2 * torch.exp(-2.0 * logs))


class ActNorm(nn.Module):
    """Per-channel affine ``y = (x + bias) * exp(log_scale)``, initialised from the first batch it sees in training
    mode so that the output has zero mean and unit variance per channel.

    ``initialized`` is a buffer, so it is saved with the weights: a loaded model never re-initialises. Reading it is a
    device-to-host sync (and a graph break under ``torch.compile``), so a training forward reads it only until it has
    seen it true: ``_known_initialized`` remembers that on the Python side, and loading a state dict resets it.
    """

    initialized: torch.Tensor  # buffer (register_buffer), declared for the type checker

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.eps = eps
        self._known_initialized = False

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._known_initialized = True

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # the loaded buffer decides, at the next training forward

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self._known_initialized:
            if not bool(self.initialized):
                self.initialize(x)
            self._known_initialized = True
        y = (x + self.bias) * torch.exp(self.log_scale)
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution in LU form: ``W = P L (U + diag(sign * exp(log_s)))``.

    P (a permutation) and the signs are fixed at initialisation from a random rotation; the log-determinant is then
    ``H * W * sum(log_s)``, O(C) instead of O(C^3). P and sign are buffers, saved with the weights.
    """

    # buffers (register_buffer), declared for the type checker
    permutation: torch.Tensor
    sign_s: torch.Tensor
    lower_mask: torch.Tensor
    eye: torch.Tensor

    def __init__(self, channels: int):
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", torch.sign(diagonal))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1), persistent=False)
        self.register_buffer("eye", torch.eye(channels), persistent=False)
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(diagonal)))
        self._inverse_cache: tuple[tuple, tuple, torch.Tensor] | None = None  # see inverse()

    def weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.weight()
        logdet = self.log_s.sum() * (x.shape[2] * x.shape[3])
        return F.conv2d(x, weight[:, :, None, None]), logdet.expand(x.shape[0])

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv2d(y, self.inverse(y.dtype)[:, :, None, None])

    def inverse(self, dtype: torch.dtype) -> torch.Tensor:
        """``weight()``'s inverse, inverted in float64 (float32 round-off here is what breaks invertibility).

        Serving (eval mode, no gradients) reuses the last one while the weights are unchanged, rather than inverting
        on every call; anything that changes them (an optimiser step, ``load_state_dict``, ``.to()``) changes the
        tensors' versions, storage or device, and so the key."""
        tensors = (self.lower, self.upper, self.log_s, self.sign_s, self.permutation)
        # Inference tensors carry no version counter: weights made under inference_mode are never cached.
        if self.training or torch.is_grad_enabled() or any(t.is_inference() for t in tensors):
            self._inverse_cache = None
            return torch.linalg.inv(self.weight().double()).to(dtype)
        state = (dtype, *((t.device, t.data_ptr(), t._version) for t in tensors))
        cached = self._inverse_cache
        # The tensors themselves are held and compared by identity, so that a freed one's address cannot come back
        # as a match.
        if cached is None or cached[1] != state or any(a is not b for a, b in zip(cached[0], tensors)):
            # A plain tensor even under inference_mode, so that a later call outside it may use it too.
            with torch.inference_mode(False), torch.no_grad():
                cached = (tensors, state, torch.linalg.inv(self.weight().double()).to(dtype))
            self._inverse_cache = cached
        return cached[2]


class ZeroConv2d(nn.Module):
    """3x3 convolution initialised to output zero, with a learned per-channel output scale ``exp(3 * logs)``
    (openai/glow's ``conv2d_zeros``): each coupling starts as the identity and each prior as N(0, I)."""

    def __init__(self, in_channels: int, out_channels: int, logscale_factor: float = 3.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        assert self.conv.bias is not None  # Conv2d's bias is optional; this one has it
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.logscale_factor = logscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.logs * self.logscale_factor)


class ConvActNorm(nn.Module):
    """Bias-free convolution followed by actnorm (which provides the bias), then ReLU: Glow's coupling-net block."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.normal_(self.conv.weight, std=0.05)
        self.norm = ActNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x))[0])


# The inverse divides by the coupling's scale. Faces keep it well above this floor, but a latent moved off the
# training distribution (sampling with an attribute shift, strong manipulation) can drive it towards zero, and a
# division by a near-zero scale overflows to inf and then NaN several steps later. Below this floor the inverse is
# no longer exact; above it, which covers every face, it is.
MIN_INVERSE_SCALE = 0.02
# And a bound on the inverse's activations, far above any a face produces (they are standardised by actnorm, so of
# order 1-10): a latent far off the distribution then decodes to a saturated image instead of inf/NaN. A checkpoint
# can carry a tighter bound per coupling, measured on training faces (:meth:`Glow.set_inverse_bounds`).
MAX_INVERSE_ACTIVATION = 1e4


class Coupling(nn.Module):
    """Affine or additive coupling: the second half of the channels is shifted (and scaled) by a function of the first.

    Affine: ``y_b = (x_b + shift) * sigmoid(raw + 2)``; the sigmoid bounds the scale in (0, 1) and starts it near 0.88,
    which keeps early training from blowing up (openai/glow). Additive: ``y_b = x_b + shift`` (volume preserving).
    """

    def __init__(self, channels: int, hidden: int, affine: bool = True):
        super().__init__()
        self.affine = affine
        # Not weights: set from the checkpoint's measured envelope (or left at the generic bound).
        self.inverse_bound = MAX_INVERSE_ACTIVATION
        # While measuring that envelope: the largest |activation| the inverse has produced so far, else None.
        self.envelope: torch.Tensor | None = None
        half = channels // 2
        self.net = nn.Sequential(
            ConvActNorm(half, hidden, 3),
            ConvActNorm(hidden, hidden, 1),
            ZeroConv2d(hidden, 2 * (channels - half) if affine else channels - half),
        )

    def _shift_scale(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.net(x_a)
        if not self.affine:
            return h, None
        return h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x.chunk(2, dim=1)
        shift, scale = self._shift_scale(x_a)
        if scale is None:
            return torch.cat([x_a, x_b + shift], 1), x.new_zeros(x.shape[0])
        y_b = (x_b + shift) * scale
        return torch.cat([x_a, y_b], 1), torch.log(scale).flatten(1).sum(1)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        y_a, y_b = y.chunk(2, dim=1)
        shift, scale = self._shift_scale(y_a)
        x_b = y_b - shift if scale is None else y_b / scale.clamp_min(MIN_INVERSE_SCALE) - shift
        x = torch.cat([y_a, x_b], 1)
        if self.envelope is not None:
            self.envelope = torch.maximum(self.envelope, x.detach().abs().amax())
        return x.clamp(-self.inverse_bound, self.inverse_bound)


class FlowStep(nn.Module):
    """One step of flow: actnorm -> invertible 1x1 conv -> coupling."""

    def __init__(self, channels: int, hidden: int, affine: bool = True):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels)
        self.coupling = Coupling(channels, hidden, affine)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in (self.actnorm, self.invconv, self.coupling):
            x, layer_logdet = layer(x)
            logdet = logdet + layer_logdet
        return x, logdet

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in (self.coupling, self.invconv, self.actnorm):
            y = layer.reverse(y)
        return y


class ConditionalPrior(nn.Module):
    """Diagonal Gaussian over a latent of shape (C, H, W), conditioned on an attribute vector y and, for a split,
    on the channels that stay in the flow (the "context").

    ``h = base(context) + linear(y)``, mean and log-std interleaved in h's channels. The y map gives every position
    its own shift (not only per channel as in openai/glow), so attributes such as Smiling can move the mouth region
    alone. Everything starts at zero: the prior starts as N(0, I).
    """

    def __init__(self, shape: tuple[int, int, int], num_attributes: int, context_channels: int | None = None):
        super().__init__()
        self.shape = shape
        channels, height, width = shape
        if context_channels is None:
            self.context = None
            self.learned = nn.Parameter(torch.zeros(1, 2 * channels, height, width))
        else:
            self.context = ZeroConv2d(context_channels, 2 * channels)
        self.condition = nn.Linear(num_attributes, 2 * channels * height * width)
        nn.init.zeros_(self.condition.weight)
        nn.init.zeros_(self.condition.bias)

    def base(self, context: torch.Tensor | None) -> torch.Tensor:
        """The y-independent part of h: (N, 2C, H, W), or (1, 2C, H, W) for the top prior."""
        return self.learned if self.context is None else self.context(context)

    def conditional(self, y: torch.Tensor) -> torch.Tensor:
        """The y part of h: y (..., A) -> (..., 2C, H, W)."""
        channels, height, width = self.shape
        return self.condition(y).unflatten(-1, (2 * channels, height, width))

    @staticmethod
    def split_h(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h[..., 0::2, :, :], h[..., 1::2, :, :]

    def forward(self, context: torch.Tensor | None, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std, each (N, C, H, W)."""
        return self.split_h(self.base(context) + self.conditional(y))

    def log_prob(self, z: torch.Tensor, context: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        mean, logs = self(context, y)
        return gaussian_log_p(z, mean, logs).flatten(1).sum(1)

    def sample(
        self, context: torch.Tensor | None, y: torch.Tensor, eps: torch.Tensor, temperature: float | torch.Tensor
    ) -> torch.Tensor:
        """``mean + temperature * std * eps``: the latent whose standardised noise is ``eps``."""
        mean, logs = self(context, y)
        return mean + temperature * torch.exp(logs) * eps


class Split(nn.Module):
    """Multi-scale split: half the channels leave the flow as a latent z, modelled by a prior conditioned on the
    half that stays (and on y); the other half continues to the next level."""

    def __init__(self, channels: int, height: int, width: int, num_attributes: int):
        super().__init__()
        stay = channels // 2
        self.prior = ConditionalPrior((channels - stay, height, width), num_attributes, context_channels=stay)
        self.stay = stay

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h) -> (the half that stays, the latent that leaves)."""
        return h[:, : self.stay], h[:, self.stay :]

    def reverse(self, stay: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([stay, z], 1)
