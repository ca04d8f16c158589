"""Conditional Glow pipeline: conditional samples at a temperature, encoding uploads to latents and decoding latents
back (interpolation and attribute manipulation happen between the two, on the CPU), and bits per dimension."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..artefacts import ARTEFACT_LIMITS_KEY, ArtefactLimits, colour_noise, speckled
from ..attributes import (
    FREQUENCIES_KEY,
    LABEL_VECTORS_KEY,
    AttributeDraw,
    AttributeSource,
    AttributeSourceError,
    InvalidRequest,
    attribute_source,
    check_attribute_names,
    resolve_attributes,
)
from ..checkpoint import CheckpointError
from ..glow import (
    COVARIANCE_KEY,
    DIRECTIONS_KEY,
    INVERSE_BOUNDS_KEY,
    MANIPULATION_LEVELS_KEY,
    MANIPULATION_UNITS_KEY,
    Glow,
    interpolate_latents,
    postprocess,
)
from ..sampling import seeded_generator
from .base import ENCODE, SAMPLE, SCORE, BenchRequest, Pipeline, Prepared, finite_images, register_pipeline

logger = logging.getLogger("facegen.models")


LIKELIHOOD_DRAWS = 32  # attribute vectors averaged over for the marginal likelihood of an unlabelled upload
LIKELIHOOD_SEED = 0  # fixed: the same image always gets the same bits/dim
MAX_TEMPERATURE = 1.5
# The served temperature: where the FID of the shipped flow's samples is lowest (0.7 is the Glow paper's choice for a
# far larger model; here it leaves blotches). Figures in docs/results.md, from `python -m training evaluate`.
DEFAULT_TEMPERATURE = 0.3
# How far a requested attribute moves a sample, in units of the move from the training mean latent to the mean latent
# of faces with (without) it: a little beyond 1, where the project's classifier finds every attribute it can judge
# obeyed with no sample degenerating (figures in docs/results.md, from `python -m training evaluate`).
DEFAULT_CONDITION_STRENGTH = 1.5
MAX_CONDITION_STRENGTH = 3.0
CORRELATION_RIDGE = 0.05
# Manipulation strength 1, in partial directions (see manipulation_latents), for a checkpoint without calibrated
# per-attribute units: enough for the classifier to see Smiling change on most faces while the other attributes stay.
MANIPULATION_UNIT = 2.0
# A decoded value beyond twice the data range ([-0.5, 0.5] before postprocessing) is where the inverse flow diverged.
# Frames of aligned faces at the served strengths have almost no such values, the black frames of an unaligned
# portrait most of theirs: a frame with more than MAX_DIVERGED_FRACTION of them is refused, not served.
DIVERGENCE_THRESHOLD = 1.0
MAX_DIVERGED_FRACTION = 0.05
# A sample the artefact detector flags is drawn again from its own noise at these fractions of its temperature (the
# noise's outliers are what a flow's inverse turns into speckles; at 0 the sample is the prior's mean face).
SAMPLE_RETRY_TEMPERATURES = (0.5, 0.0)
# A manipulated frame that fails (diverged or speckled) is decoded again at these fractions of its strength, and the
# largest clean one is served (its applied strength reported); if none is clean the frame is refused.
STRENGTH_BACKOFF = (0.75, 0.5, 0.25)

Decode = Callable[[torch.Tensor], Awaitable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class Frames:
    """Frames decoded for one request: images (refused ones a neutral grey tile), and per frame the strength
    applied (None where refused) beside the one requested."""

    images: torch.Tensor
    requested: list[float]
    applied: list[float | None]

    @property
    def refused(self) -> list[int]:
        return [index for index, value in enumerate(self.applied) if value is None]

    def statuses(self) -> list[str]:
        """Per frame: ``ok``, ``reduced`` (served at a smaller strength) or ``refused``."""
        return [
            "refused" if applied is None else "ok" if applied == requested else "reduced"
            for requested, applied in zip(self.requested, self.applied)
        ]


def neutral_tiles(images: torch.Tensor, refused: torch.Tensor) -> torch.Tensor:
    """``images`` with the refused rows replaced by mid-grey: what a strip or GIF shows in place of a refused frame."""
    return torch.where(refused[:, None, None, None], torch.zeros_like(images), images)


# Benchmarked with the route's defaults for the rest of the body: attributes drawn, the served temperature, PNG.
@register_pipeline("glow", SAMPLE, ENCODE, SCORE, bench=BenchRequest("/generate/glow"))
class GlowPipeline(Pipeline):
    """Sampling draw order, from one generator seeded with the request's seed: the n attribute vectors (open ones
    ~ Bernoulli(training frequency)), then one (n, latent_dim) standard normal draw. The temperature travels per row,
    so requests at different temperatures share a batch."""

    model: Glow
    reduced_precision = False

    def validate(self) -> None:
        self.check_attributes_match_outputs(self.model.config.num_attributes, "condition inputs")
        try:
            self.attribute_source: AttributeSource = attribute_source(self.attributes, self.checkpoint.extras)
        except AttributeSourceError as error:
            raise CheckpointError(f"the glow checkpoint's {error}") from None
        if not self.attribute_source.joint:
            logger.warning(
                "the glow checkpoint has no %s: attributes a request leaves open are drawn independently from "
                "their training frequencies (add them with `python -m training label-vectors`)",
                LABEL_VECTORS_KEY,
            )
        # Fixed once, independent draws as before joint sampling (so bits/dim stay comparable): the marginal
        # likelihood averages over these attribute vectors for every upload.
        self.likelihood_draws = resolve_attributes(
            {},
            self.attributes,
            self.checkpoint.extras.get(FREQUENCIES_KEY),
            LIKELIHOOD_DRAWS,
            seeded_generator(LIKELIHOOD_SEED),
        )
        # a malformed calibration is refused at start-up, not at the first request
        _ = self.manipulation_units, self.manipulation_levels
        limits = self.checkpoint.extras.get(ARTEFACT_LIMITS_KEY)
        try:
            self.artefact_limits = None if limits is None else ArtefactLimits.from_tensor(limits.float().cpu())
        except ValueError as error:
            raise CheckpointError(f"the glow checkpoint's {ARTEFACT_LIMITS_KEY}: {error}") from None
        if self.artefact_limits is None:
            logger.warning(
                "the glow checkpoint has no %s: its frames are checked for divergence only, not for pixel noise "
                "(`python -m training calibrate-glow` adds them)",
                ARTEFACT_LIMITS_KEY,
            )
        bounds = self.checkpoint.extras.get(INVERSE_BOUNDS_KEY)
        try:
            self.model.set_inverse_bounds(None if bounds is None else bounds.float())
        except ValueError as error:
            raise CheckpointError(f"the glow checkpoint's {INVERSE_BOUNDS_KEY}: {error}") from None

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    def speckled(self, images: torch.Tensor, reference_scores: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) which images fail the checkpoint's artefact limits (none without them)."""
        if self.artefact_limits is None:
            return torch.zeros(len(images), dtype=torch.bool, device=images.device)
        return speckled(images, reference_scores, self.artefact_limits)

    # ---- sampling ----------------------------------------------------------------------------------------------
    def prepare_samples(
        self,
        n: int,
        seed: int,
        attributes: dict[str, bool] | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        strength: float = DEFAULT_CONDITION_STRENGTH,
    ) -> Prepared:
        """``n`` samples with the requested ``attributes`` (the others drawn from the training frequencies).

        The flow's priors respond only weakly to the attribute vector (asked for one attribute with the others drawn
        at random, Male was obeyed about as often as a coin flip; the second course report's c-Glow "failed the
        condition completely"). What does work is the latent geometry. Treating latents and attributes as jointly
        Gaussian, the mean latent of faces with the requested values is the training mean moved by
        ``Cov(z, y_R) Cov(y_R)^-1 (y_R - p_R)`` over the requested attributes R, where ``Cov(z, y_i)`` is attribute
        i's direction (mean latent with it minus without) times its variance. For one attribute that is
        ``(value - p) * direction``; for several it accounts for their correlations (Male and No_Beard are not two
        independent pushes). Each sample is moved by ``strength`` times that; attributes left open are not pushed.
        """
        if not 0 <= temperature <= MAX_TEMPERATURE:
            raise InvalidRequest(
                "temperature", f"temperature must be between 0 and {MAX_TEMPERATURE}, got {temperature}"
            )
        if not 0 <= strength <= MAX_CONDITION_STRENGTH:
            raise InvalidRequest("strength", f"strength must be between 0 and {MAX_CONDITION_STRENGTH}, got {strength}")
        attributes = attributes or {}
        generator = seeded_generator(seed)
        drawn = self.attribute_source.draw(attributes, n, generator)
        vectors = drawn.vectors
        eps = torch.randn((n, self.latent_dim), generator=generator)
        pushes = torch.zeros(n, len(self.attributes))  # per sample, the weight of each attribute's direction
        if attributes:
            requested = [self.attributes.index(name) for name in attributes]
            covariance = self.attribute_covariance[requested][:, requested]
            spread = covariance.diagonal().sqrt()
            correlation = covariance / spread[:, None] / spread[None, :]
            deviations = (vectors[:, requested] - self.attribute_means[requested]).double() / spread
            # A ridge on the correlations (rescaled so that one attribute alone is exact): CelebA has attributes that
            # nearly determine others, and asking for contradictory values of two of them must not explode.
            ridged = correlation + CORRELATION_RIDGE * torch.eye(len(requested), dtype=correlation.dtype)
            solved = torch.linalg.solve(ridged, deviations.T).T * (1 + CORRELATION_RIDGE) / spread
            pushes[:, requested] = (strength * solved * covariance.diagonal()).float()
        inputs = (vectors, eps, torch.full((n,), float(temperature)), pushes)
        return Prepared("sample", inputs, AttributeDraw(vectors, drawn.warning))

    @functools.cached_property
    def attribute_means(self) -> torch.Tensor:
        frequencies = self.checkpoint.extras.get(FREQUENCIES_KEY)
        return frequencies.float().cpu() if frequencies is not None else torch.full((len(self.attributes),), 0.5)

    @functools.cached_property
    def attribute_covariance(self) -> torch.Tensor:
        """The training labels' covariance (A, A), converted once (every conditioned request reads it); without it in
        the checkpoint, independent attributes."""
        covariance = self.checkpoint.extras.get(COVARIANCE_KEY)
        if covariance is not None:
            return covariance.double().cpu()
        means = self.attribute_means.double()
        return torch.diag(means * (1 - means))

    def generate(
        self, vectors: torch.Tensor, eps: torch.Tensor, temperature: torch.Tensor, pushes: torch.Tensor
    ) -> torch.Tensor:
        """Samples; one that the artefact detector flags is drawn again from its own noise at a lower temperature
        (row by row, so a seeded request gives the same image whatever it is batched with)."""
        directions = self.checkpoint.extras.get(DIRECTIONS_KEY)
        shift = pushes @ directions.to(pushes) if directions is not None and pushes.any() else None
        images = finite_images(self.model.sample_from_noise(vectors, eps, temperature, shift))
        for fraction in SAMPLE_RETRY_TEMPERATURES:
            rows = self.speckled(images).nonzero().flatten()
            if not len(rows):
                break
            images[rows] = finite_images(
                self.model.sample_from_noise(
                    vectors[rows], eps[rows], temperature[rows] * fraction, None if shift is None else shift[rows]
                )
            )
        return images

    # ---- uploads -----------------------------------------------------------------------------------------------
    def prepare_encoding(self, images: torch.Tensor) -> Prepared:
        return Prepared("encode", (images,))

    def prepare_decoding(self, latents: torch.Tensor) -> Prepared:
        return Prepared("decode", (latents,))

    def prepare_likelihood(self, images: torch.Tensor) -> Prepared:
        return Prepared("likelihood", (images,))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(images)

    def decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, whether each image is unusable). A latent far off the training distribution (an unaligned upload,
        a large strength) can make the inverse flow diverge: NaN, infinity, or values many times the data range, which
        clamp to black or white frames. Those frames are flagged, for the service to refuse rather than return;
        a few clipped pixels are only clamped."""
        raw = self.model.decode(self.model.unflatten_latents(latents))  # data range [-0.5, 0.5]
        flat = raw.flatten(1)
        diverged = (~torch.isfinite(flat) | (flat.abs() > DIVERGENCE_THRESHOLD)).float().mean(1)
        unusable = torch.isnan(flat).any(1) | (diverged > MAX_DIVERGED_FRACTION)
        return finite_images(postprocess(raw, self.model.config.n_bits)), unusable

    async def manipulate(self, latent: torch.Tensor, attribute: str, strengths: list[float], decode: Decode) -> Frames:
        """The face (latent (D,)) moved along ``attribute`` by each strength, every frame checked: one that diverges
        or that the artefact detector finds noisier than the face's own reconstruction is decoded again at smaller
        strengths (:data:`STRENGTH_BACKOFF`); one still failing is refused alone (a grey tile), never the request.
        ``decode`` runs the pipeline's ``decode`` operation (through the service's batcher, or directly)."""
        latents = torch.cat([latent[None], self.manipulation_latents(latent, attribute, strengths)])
        decoded, unusable = await decode(latents)
        reference = colour_noise(decoded[:1])
        images, failed = decoded[1:].clone(), unusable[1:] | self.speckled(decoded[1:], reference)
        applied: list[float | None] = list(strengths)
        for fraction in STRENGTH_BACKOFF:
            rows = failed.nonzero().flatten().tolist()
            if not rows:
                break
            retried, retry_unusable = await decode(
                self.manipulation_latents(latent, attribute, [strengths[row] * fraction for row in rows])
            )
            clean = ~(retry_unusable | self.speckled(retried, reference))
            for row, image, ok in zip(rows, retried, clean.tolist()):
                if ok:
                    images[row], failed[row], applied[row] = image, False, strengths[row] * fraction
        for row in failed.nonzero().flatten().tolist():
            applied[row] = None
        return Frames(neutral_tiles(images, failed), list(strengths), applied)

    def interpolation_frames(self, images: torch.Tensor, unusable: torch.Tensor) -> Frames:
        """Decoded interpolation frames, each checked against the noisier of the two faces' reconstructions (the
        first and last frames, never refused unless they diverged); a failing frame is refused alone."""
        reference = colour_noise(images[[0, -1]]).amax()
        failed = unusable | self.speckled(images, reference)
        steps = len(images)
        positions = [index / (steps - 1) for index in range(steps)]
        applied: list[float | None] = [None if bad else position for position, bad in zip(positions, failed.tolist())]
        return Frames(neutral_tiles(images, failed), positions, applied)

    def likelihood(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.marginal_bits_per_dim(images, self.likelihood_draws.to(images.device))

    def interpolation_latents(
        self, latents: torch.Tensor, steps: int, method: Literal["linear", "slerp"]
    ) -> torch.Tensor:
        """(2, D) latents of the two faces -> (steps, D) along the path, on the CPU."""
        return interpolate_latents(latents[0], latents[1], steps, method)

    def manipulation_latents(self, latent: torch.Tensor, attribute: str, strengths: list[float]) -> torch.Tensor:
        """(D,) latent of one face -> (len(strengths), D): the latent plus each strength times the attribute's
        manipulation direction (:attr:`manipulation_directions`)."""
        check_attribute_names([attribute], self.attributes, "attribute")
        index = self.attributes.index(attribute)
        amounts = torch.tensor(strengths, dtype=latent.dtype)[:, None] * self.manipulation_units[index].item()
        return latent[None] + amounts * self.manipulation_directions[index].to(latent.dtype)

    @functools.cached_property
    def manipulation_directions(self) -> torch.Tensor:
        """(A, D) what strength 1 adds to a face's latent, per unit: each attribute's partial direction
        (:attr:`attribute_effects`) on its calibrated latents (:attr:`manipulation_levels`). The partial direction
        is how the mean latent moves when this attribute alone changes and the other 39 stay as they are; the raw
        mean-difference direction also drags every correlated attribute along (the second course report saw "every
        other attribute dragged towards the mean"), this one mostly keeps them. Strength 1 is the attribute's
        calibrated number of such moves (:attr:`manipulation_units`): towards the attribute on (at -1, off), enough
        to change it for most faces."""
        return self.directions_on_latents(slice(None), self.manipulation_levels)

    def directions_on_latents(self, index: int | slice, weights: torch.Tensor) -> torch.Tensor:
        """The partial direction(s) of attribute(s) ``index`` with each latent scaled by ``weights`` (..., latents)."""
        return self.attribute_effects[index] * self.model.spread_over_latents(weights.to(self.attribute_effects))

    @property
    def latent_count(self) -> int:
        """How many latents the flow has (one per split, then the top): the length of a row of manipulation levels."""
        return len(self.model.latent_shapes)

    @functools.cached_property
    def manipulation_levels(self) -> torch.Tensor:
        """(A, latents) the weight of each latent in each attribute's manipulation direction: calibrated per
        attribute in the checkpoint, else every latent at full weight."""
        shape = (len(self.attributes), self.latent_count)
        levels = self.checkpoint.extras.get(MANIPULATION_LEVELS_KEY)
        if levels is None:
            return torch.ones(shape)
        levels = levels.float().cpu()
        if levels.shape != shape or not bool((levels >= 0).all() and (levels.sum(1) > 0).all()):
            raise CheckpointError(
                f"the glow checkpoint's {MANIPULATION_LEVELS_KEY} must be {shape[0]} rows of {shape[1]} non-negative "
                f"weights, none all zero; got shape {tuple(levels.shape)}"
            )
        return levels

    @functools.cached_property
    def manipulation_units(self) -> torch.Tensor:
        """(A,) partial directions per unit of strength: calibrated per attribute in the checkpoint (the classifier
        sees the attribute change on 9 of 10 training faces at 1), else MANIPULATION_UNIT for every attribute."""
        units = self.checkpoint.extras.get(MANIPULATION_UNITS_KEY)
        if units is None:
            return torch.full((len(self.attributes),), MANIPULATION_UNIT)
        units = units.float().cpu()
        if units.shape != (len(self.attributes),) or not (torch.isfinite(units) & (units > 0)).all():
            raise CheckpointError(
                f"the glow checkpoint's {MANIPULATION_UNITS_KEY} must be {len(self.attributes)} positive numbers, "
                f"got shape {tuple(units.shape)}"
            )
        return units

    @functools.cached_property
    def attribute_effects(self) -> torch.Tensor:
        """(A, D): each attribute's partial direction, Cov(z, y) Cov(y)^-1 with Cov(z, y_i) = direction_i Var(y_i),
        through the same ridged correlations as sampling (so an attribute with no correlated ones keeps its raw
        direction)."""
        directions = self.checkpoint.extras.get(DIRECTIONS_KEY)
        if directions is None:
            raise CheckpointError(
                "the loaded glow checkpoint has no attribute directions; retrain it with `python -m training glow`"
            )
        covariance = self.attribute_covariance
        spread = covariance.diagonal().sqrt()
        correlation = covariance / spread[:, None] / spread[None, :]
        ridged = correlation + CORRELATION_RIDGE * torch.eye(len(spread), dtype=correlation.dtype)
        inverse = torch.linalg.inv(ridged) * (1 + CORRELATION_RIDGE) / spread[:, None] / spread[None, :]
        return (inverse @ (covariance.diagonal()[:, None] * directions.double().cpu())).float()

    def operations(self) -> dict[str, Callable[..., Any]]:
        return {"sample": self.generate, "encode": self.encode, "decode": self.decode, "likelihood": self.likelihood}

    def warmup(self) -> Prepared:
        return self.prepare_samples(2, 0)
