"""Conditional Glow (Kingma & Dhariwal 2018) on faces, conditioned on the 40 CelebA attributes.

Multi-scale: ``levels`` times (squeeze -> ``steps`` x (actnorm, invertible 1x1 conv, coupling) -> split), the last
level without a split. The flow f itself is unconditional; the attribute vector y enters only the priors (the top one
and every split's), ``log p(x | y) = log p(f(x) | y) + log |det df/dx|``, plus an optional class head on the top
latent (the paper's ``ycond``) whose BCE loss makes that latent carry the attributes, so the conditional prior has
something to shift.

Because y is only in the prior, the latent ``z = f(x)`` of an image does not depend on any label: interpolation,
attribute directions and manipulation work on the raw latents (all levels, flattened and concatenated, ``latent_dim``
= 3*S*S numbers) of uploaded faces without needing their attributes, and decoding a face's own z reconstructs it
exactly whatever y is. Sampling draws standard normal noise on the CPU and maps it through the conditional priors.

Images arrive in [-1, 1] (the shared preprocessing); :func:`dequantize` reduces them to ``n_bits`` and maps them to
[-0.5, 0.5] with uniform noise (training) or half a bin (serving); :func:`postprocess` goes back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from .flows import (
    MAX_INVERSE_ACTIVATION,
    ConditionalPrior,
    Coupling,
    FlowStep,
    Split,
    gaussian_log_p,
    squeeze2d,
    unsqueeze2d,
)
from .registry import FamilyModule, register_family

# Checkpoint extra holding the (num_attributes, latent_dim) attribute directions the service moves faces along.
DIRECTIONS_KEY = "attribute_directions"
COVARIANCE_KEY = "attribute_covariance"  # (A, A) covariance of the training labels, for conditioning on several
# (A,) per attribute, the partial directions that make manipulation strength 1 (`python -m training calibrate-glow`)
MANIPULATION_UNITS_KEY = "manipulation_units"
# (A, latents) per attribute, the weight of each latent (finest split first, the top last) in its manipulation direction
# (`calibrate-glow`). A push on the top latent passes through every coupling's inverse, so it is the first to diverge;
# some attributes change more cleanly without it (figures in docs/results.md).
MANIPULATION_LEVELS_KEY = "manipulation_levels"
# (couplings,) the largest |activation| each coupling's inverse produced on training faces (`calibrate-glow`): decoding
# clamps there. Faces stay within (so they still reconstruct exactly; figures in docs/results.md), while a latent pushed
# far off the faces' distribution saturates a few values instead of cascading into a frame of noise.
INVERSE_BOUNDS_KEY = "inverse_bounds"


@dataclass(frozen=True)
class GlowConfig:
    image_size: int = 64  # side of the square RGB images; must halve `levels` times
    levels: int = 3  # L: scales, each squeeze -> K steps -> split (the last without split)
    steps: int = 8  # K: flow steps (actnorm, 1x1 conv, coupling) per level
    hidden: int = 128  # channels of the coupling networks' hidden layers
    coupling: str = "affine"  # "affine" (sigmoid-bounded scale and shift) or "additive" (shift only)
    n_bits: int = 8  # pixel depth the model is trained on (5 smooths samples; bits/dim compare only at equal n_bits)
    num_attributes: int = 40  # length of the 0/1 attribute vector conditioning the priors
    y_condition: float = (
        0.01  # weight of the class head's BCE (bits per image) against bits/dim; 0 = no class head loss
    )

    def __post_init__(self) -> None:
        if self.coupling not in ("affine", "additive"):
            raise ValueError(f"coupling must be 'affine' or 'additive', got {self.coupling!r}")
        if not 1 <= self.n_bits <= 8:
            raise ValueError(f"n_bits must be in 1..8, got {self.n_bits}")
        if self.levels < 1 or self.steps < 1 or self.hidden < 1:
            raise ValueError("levels, steps and hidden must be positive")
        if self.image_size % 2**self.levels:
            raise ValueError(f"image_size {self.image_size} does not halve {self.levels} times evenly")


def dequantize(
    images: torch.Tensor,
    n_bits: int,
    noise: Literal["uniform", "center"] = "center",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[-1, 1] images -> flow inputs in [-0.5, 0.5]: quantised to ``n_bits``, plus uniform noise within each bin
    (training: the objective is then a bound on the discrete likelihood) or half a bin (serving: deterministic).

    Noise is drawn on the CPU from ``generator`` so a seed gives the same noise on any device.
    """
    bins = 2**n_bits
    pixels = torch.round((images.clamp(-1, 1) + 1) * 127.5)
    levels = torch.floor(pixels / 2 ** (8 - n_bits))
    if noise == "uniform":
        offset = torch.rand(levels.shape, generator=generator, dtype=levels.dtype).to(levels.device)
    elif noise == "center":
        offset = torch.full_like(levels, 0.5)
    else:
        raise ValueError(f"noise must be 'uniform' or 'center', got {noise!r}")
    return (levels + offset) / bins - 0.5


def postprocess(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Inverse of :func:`dequantize` (continuous): the centre of bin q goes to the centre of the 8-bit values it
    stands for, on the [-1, 1] scale. A reconstruction of an 8-bit image gives back its exact pixels."""
    step = 2 ** (8 - n_bits)
    levels = (x + 0.5) * 2**n_bits - 0.5
    return (levels * step + (step - 1) / 2).div(127.5).sub(1.0).clamp(-1, 1)


class GlowLevel(nn.Module):
    def __init__(self, channels: int, size: int, config: GlowConfig, split: bool):
        super().__init__()
        self.steps = nn.ModuleList(
            FlowStep(channels, config.hidden, config.coupling == "affine") for _ in range(config.steps)
        )
        self.split = Split(channels, size, size, config.num_attributes) if split else None

    @property
    def flow_steps(self) -> Sequence[FlowStep]:
        """``steps`` as what they are (iterating an nn.ModuleList gives a type checker plain Modules)."""
        return cast("Sequence[FlowStep]", self.steps)


@register_family(
    "glow",
    summary="conditional Glow (prior conditioned on the 40 attributes): samples, interpolation, manipulation, bits/dim",
    tiny={"image_size": 16, "levels": 2, "steps": 2, "hidden": 8},
)
class Glow(FamilyModule):
    config_class = GlowConfig

    def __init__(self, config: GlowConfig):
        super().__init__()
        self.config = config
        levels, shapes = [], []
        channels, size = 3, config.image_size
        for index in range(config.levels):
            channels, size = channels * 4, size // 2
            split = index < config.levels - 1
            levels.append(GlowLevel(channels, size, config, split))
            if split:
                shapes.append((channels - channels // 2, size, size))
                channels = channels // 2
        shapes.append((channels, size, size))
        self.levels = nn.ModuleList(levels)
        self.top_prior = ConditionalPrior((channels, size, size), config.num_attributes)
        # ycond: predict the attributes from the spatial mean of the top latent (zero-initialised, as openai/glow).
        self.class_head = nn.Linear(channels, config.num_attributes)
        nn.init.zeros_(self.class_head.weight)
        nn.init.zeros_(self.class_head.bias)
        self._latent_shapes = shapes

    @property
    def glow_levels(self) -> Sequence[GlowLevel]:
        """``levels`` as what they are (iterating an nn.ModuleList gives a type checker plain Modules)."""
        return cast("Sequence[GlowLevel]", self.levels)

    @property
    def couplings(self) -> list[Coupling]:
        """Every coupling, in the order the flow applies them (the order of :data:`INVERSE_BOUNDS_KEY`)."""
        return [step.coupling for level in self.glow_levels for step in level.flow_steps]

    def set_inverse_bounds(self, bounds: torch.Tensor | None) -> None:
        """Clamp each coupling's inverse at its bound (``None``: the generic :data:`MAX_INVERSE_ACTIVATION`)."""
        couplings = self.couplings
        if bounds is not None and (bounds.shape != (len(couplings),) or not bool((bounds > 0).all())):
            raise ValueError(f"inverse bounds must be {len(couplings)} positive numbers, got {tuple(bounds.shape)}")
        for index, coupling in enumerate(couplings):
            coupling.inverse_bound = MAX_INVERSE_ACTIVATION if bounds is None else float(bounds[index])

    @torch.inference_mode()
    def measure_inverse_bounds(self, batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """(couplings,) the largest |activation| each coupling's inverse produces while faces ([-1, 1] batches) are
        encoded and decoded, with the generic bound in place."""
        couplings = self.couplings
        kept = [coupling.inverse_bound for coupling in couplings]
        device = self.class_head.weight.device
        try:
            for coupling in couplings:
                coupling.inverse_bound, coupling.envelope = MAX_INVERSE_ACTIVATION, torch.zeros((), device=device)
            for images in batches:
                self.decode_images(self.encode_images(images.to(device)))
            return torch.stack([cast(torch.Tensor, coupling.envelope).float().cpu() for coupling in couplings])
        finally:
            for coupling, bound in zip(couplings, kept):
                coupling.inverse_bound, coupling.envelope = bound, None

    # ---- shapes ------------------------------------------------------------------------------------------------
    @property
    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Shapes of the latents in the order :meth:`encode` returns them: each split's, finest first, then the top."""
        return list(self._latent_shapes)

    @property
    def latent_dim(self) -> int:
        return sum(math.prod(shape) for shape in self._latent_shapes)

    def spread_over_latents(self, weights: torch.Tensor) -> torch.Tensor:
        """(..., len(latent_shapes)) one number per latent -> (..., latent_dim), each repeated over its latent."""
        sizes = torch.tensor([math.prod(shape) for shape in self._latent_shapes], device=weights.device)
        return weights.repeat_interleave(sizes, dim=-1)

    def flatten_latents(self, z_list: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([z.flatten(1) for z in z_list], 1)

    def unflatten_latents(self, flat: torch.Tensor) -> list[torch.Tensor]:
        sizes = [math.prod(shape) for shape in self._latent_shapes]
        return [part.unflatten(1, shape) for part, shape in zip(flat.split(sizes, 1), self._latent_shapes)]

    # ---- the bijection -----------------------------------------------------------------------------------------
    def _flow(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """x in [-0.5, 0.5] -> (latents, the context each split's prior sees, log-det), independent of y."""
        logdet = x.new_zeros(x.shape[0])
        z_list, contexts = [], []
        h = x
        for level in self.glow_levels:
            h = squeeze2d(h)
            for step in level.flow_steps:
                h, step_logdet = step(h)
                logdet = logdet + step_logdet
            if level.split is not None:
                h, z = level.split(h)
                z_list.append(z)
                contexts.append(h)
        z_list.append(h)
        return z_list, contexts, logdet

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Flow inputs (N, 3, S, S) in [-0.5, 0.5] -> (latents shaped as :attr:`latent_shapes`, log |det| (N,))."""
        z_list, _, logdet = self._flow(x)
        return z_list, logdet

    def decode(self, z_list: list[torch.Tensor]) -> torch.Tensor:
        """Exact inverse of :meth:`encode`: latents -> flow inputs."""
        h = z_list[-1]
        split_latents = iter(reversed(z_list[:-1]))
        for level in reversed(self.glow_levels):
            if level.split is not None:
                h = level.split.reverse(h, next(split_latents))
            for step in reversed(level.flow_steps):
                h = step.reverse(h)
            h = unsqueeze2d(h)
        return h

    # ---- likelihood --------------------------------------------------------------------------------------------
    def _priors(self) -> list[ConditionalPrior]:
        return [level.split.prior for level in self.glow_levels if level.split is not None] + [self.top_prior]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (log p(x | y) in nats per image (N,), class-head logits (N, A))."""
        z_list, contexts, logdet = self._flow(x)
        log_p = logdet
        for prior, z, context in zip(self._priors(), z_list, [*contexts, None]):
            log_p = log_p + prior.log_prob(z, context, y)
        logits = self.class_head(z_list[-1].mean(dim=(2, 3)))
        return log_p, logits

    def bits_per_dim_from_log_p(self, log_p: torch.Tensor) -> torch.Tensor:
        """Continuous log-density on [-0.5, 0.5]^D -> bits per dimension of the discrete ``n_bits`` image."""
        dims = 3 * self.config.image_size**2
        return (-log_p + dims * self.config.n_bits * math.log(2)) / (dims * math.log(2))

    def loss(
        self, images: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(objective, mean bits/dim, mean class bits) of [-1, 1] images under uniform dequantisation."""
        log_p, logits = self(dequantize(images, self.config.n_bits, "uniform", generator), y)
        bits_per_dim = self.bits_per_dim_from_log_p(log_p).mean()
        class_bits = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1).mean() / math.log(2)
        return bits_per_dim + self.config.y_condition * class_bits, bits_per_dim, class_bits

    def bits_per_dim(
        self,
        images: torch.Tensor,
        y: torch.Tensor,
        noise: Literal["uniform", "center"] = "center",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Bits/dim of each [-1, 1] image under p(x | y), (N,)."""
        return self.bits_per_dim_from_log_p(self(dequantize(images, self.config.n_bits, noise, generator), y)[0])

    def marginal_bits_per_dim(self, images: torch.Tensor, attribute_draws: torch.Tensor) -> torch.Tensor:
        """Bits/dim under p(x) = E_y p(x | y), estimated with the given K attribute vectors (K, A):
        ``log p(x) ~ logsumexp_k log p(x | y_k) - log K``. The flow runs once; only the priors see each y_k."""
        z_list, contexts, logdet = self._flow(dequantize(images, self.config.n_bits, "center"))
        log_p = logdet[:, None]
        for prior, z, context in zip(self._priors(), z_list, [*contexts, None]):
            h = prior.base(context)[:, None] + prior.conditional(attribute_draws)[None]  # (N, K, 2C, H, W)
            mean, logs = prior.split_h(h)
            log_p = log_p + gaussian_log_p(z[:, None], mean, logs).flatten(2).sum(2)
        log_p = torch.logsumexp(log_p, dim=1) - math.log(attribute_draws.shape[0])
        return self.bits_per_dim_from_log_p(log_p)

    def predict_attributes(self, images: torch.Tensor) -> torch.Tensor:
        """The class head's attribute probabilities (N, A) for [-1, 1] images (meaningful when y_condition > 0)."""
        z_top = self.encode(dequantize(images, self.config.n_bits, "center"))[0][-1]
        return torch.sigmoid(self.class_head(z_top.mean(dim=(2, 3))))

    # ---- what the service calls --------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> their flattened latents (N, latent_dim), deterministically (half-bin dequantisation)."""
        return self.flatten_latents(self.encode(dequantize(images, self.config.n_bits, "center"))[0])

    def decode_images(self, flat: torch.Tensor) -> torch.Tensor:
        """Flattened latents (N, latent_dim) -> [-1, 1] images."""
        return postprocess(self.decode(self.unflatten_latents(flat)), self.config.n_bits)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_images(self.encode_images(images))

    def sample(
        self, y: torch.Tensor, temperature: float = 0.7, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images (N, 3, S, S) in [-1, 1] for attribute vectors y (N, A) on the model's device.

        All noise is one (N, latent_dim) standard normal draw on the CPU from ``generator``, made before anything
        touches the device: the same seed gives the same images on any device.
        """
        eps = torch.randn((y.shape[0], self.latent_dim), generator=generator)
        return self.sample_from_noise(y, eps.to(y.device, y.dtype), temperature)

    def sample_from_noise(
        self,
        y: torch.Tensor,
        eps: torch.Tensor,
        temperature: float | torch.Tensor,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images for attribute vectors y (N, A) and standard normal noise eps (N, latent_dim). Each latent is
        ``mean + temperature * std * eps`` under its conditional prior, from the top down; ``temperature`` is a
        number or one per image (N,), so requests at different temperatures can share a batch. ``shift`` (N,
        latent_dim), when given, is added to each level's latent as it is drawn, so the finer levels' priors see
        the shifted coarser ones."""
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.to(eps)[:, None, None, None]
        eps_list = self.unflatten_latents(eps)
        no_shift: list[float] = [0.0] * len(eps_list)
        shifts: Sequence[torch.Tensor | float] = self.unflatten_latents(shift) if shift is not None else no_shift
        h = self.top_prior.sample(None, y, eps_list[-1], temperature) + shifts[-1]
        split_eps = iter(zip(reversed(eps_list[:-1]), reversed(shifts[:-1])))
        for level in reversed(self.glow_levels):
            if level.split is not None:
                level_eps, level_shift = next(split_eps)
                h = level.split.reverse(h, level.split.prior.sample(h, y, level_eps, temperature) + level_shift)
            for step in reversed(level.flow_steps):
                h = step.reverse(h)
            h = unsqueeze2d(h)
        return postprocess(h, self.config.n_bits)

    @torch.no_grad()
    def initialize(self, images: torch.Tensor, y: torch.Tensor) -> None:
        """Data-dependent actnorm initialisation from one batch of [-1, 1] images (a no-op once initialised)."""
        was_training = self.training
        self.train()
        self(dequantize(images, self.config.n_bits, "center"), y)
        self.train(was_training)


def interpolate_latents(
    z_a: torch.Tensor, z_b: torch.Tensor, steps: int, method: Literal["linear", "slerp"] = "linear"
) -> torch.Tensor:
    """(D,) and (D,) -> (steps, D) from z_a to z_b inclusive; the endpoints are exactly z_a and z_b."""
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype, device=z_a.device)[:, None]
    if method == "linear":
        frames = (1 - t) * z_a + t * z_b
    elif method == "slerp":
        cosine = F.cosine_similarity(z_a, z_b, dim=0).clamp(-1, 1)
        omega = torch.arccos(cosine)
        if torch.sin(omega).abs() < 1e-6:  # (anti)parallel: slerp degenerates to a line
            frames = (1 - t) * z_a + t * z_b
        else:
            frames = (torch.sin((1 - t) * omega) * z_a + torch.sin(t * omega) * z_b) / torch.sin(omega)
    else:
        raise ValueError(f"method must be 'linear' or 'slerp', got {method!r}")
    frames[0], frames[-1] = z_a, z_b
    return frames
