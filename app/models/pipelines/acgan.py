"""ACGAN pipeline: samples with requested attributes, and on/off pairs of one attribute."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch

from ..acgan import DEFAULT_TOGGLE_STRENGTH, MAX_TOGGLE_STRENGTH, ACGANGenerator, emphasis, toggle_pairs
from ..attributes import (
    LABEL_VECTORS_KEY,
    AttributeDraw,
    AttributeSource,
    AttributeSourceError,
    InvalidRequest,
    attribute_source,
    check_attribute_names,
)
from ..checkpoint import CheckpointError
from ..sampling import draw_noise, seeded_generator
from .base import SAMPLE, BenchRequest, Pipeline, Prepared, finite_images, register_pipeline

logger = logging.getLogger("facegen.models")


def draw_inputs(
    latent_shape: tuple[int, ...],
    names: list[str],
    source: AttributeSource,
    n: int,
    generator: torch.Generator,
    attributes: dict[str, bool] | None = None,
    toggle: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, AttributeDraw]:
    """The ACGAN draw, in its one order: ``n`` noise vectors, then ``n`` attribute vectors from ``source`` (open
    attributes drawn jointly given the requested ones when the checkpoint carries label vectors). Returns (noise,
    attribute vectors, the n drawn vectors and any warning); with ``toggle`` the first two are the 2n rows of
    :func:`toggle_pairs` (the n with it off, then the same n with it on). The toggled attribute is left out of the
    condition: each pair's other attributes are drawn given the requested ones only, and shared by its two rows."""
    attributes = dict(attributes or {})
    check_attribute_names(list(attributes), names, "attributes")
    if toggle is not None:
        check_attribute_names([toggle], names, "toggle")
        attributes.pop(toggle, None)
    noise = draw_noise(latent_shape, n, generator)
    drawn = source.draw(attributes, n, generator)
    if toggle is None:
        return noise, drawn.vectors, drawn
    return *toggle_pairs(noise, drawn.vectors, names.index(toggle)), drawn


# The route's defaults for the rest of the body: attributes drawn, PNG.
@register_pipeline("acgan", SAMPLE, bench=BenchRequest("/generate/acgan", rows=8))
class ACGANPipeline(Pipeline):
    """Draw order, from one generator seeded with the request's seed: the n noise vectors, then the n attribute
    vectors (the attributes the request leaves open from a training face's label vector with the requested values,
    :class:`~app.models.attributes.JointAttributes`; from a checkpoint without label vectors, independently from
    their frequencies). A toggle repeats both for the
    off and on rows. Each row carries its own multipliers of G's condition signal, so requests with different
    toggles and strengths share a batch."""

    model: ACGANGenerator

    def validate(self) -> None:
        self.check_attributes_match_outputs(len(self.model.attribute_names), "condition inputs")
        if not self.attribute_source.joint:
            logger.warning(
                "the acgan checkpoint has no %s: attributes a request leaves open are drawn independently from "
                "their training frequencies (add them with `python -m training label-vectors`)",
                LABEL_VECTORS_KEY,
            )

    @cached_property
    def attribute_source(self) -> AttributeSource:
        """How open attributes are drawn; label vectors that do not fit the attributes refuse the checkpoint."""
        try:
            return attribute_source(self.attributes, self.checkpoint.extras)
        except AttributeSourceError as error:
            raise CheckpointError(f"the acgan checkpoint's {error}") from None

    @property
    def attributes(self) -> list[str]:
        return list(self.model.attribute_names)

    def prepare_samples(
        self,
        n: int,
        seed: int,
        attributes: dict[str, bool] | None = None,
        toggle: str | None = None,
        strength: float = DEFAULT_TOGGLE_STRENGTH,
    ) -> Prepared:
        """``n`` samples, or with ``toggle`` ``n`` pairs: 2n rows, the n with it off, then the same n with it on,
        the toggled attribute's condition pushed to -strength/+strength (1 = as trained)."""
        if not 0 < strength <= MAX_TOGGLE_STRENGTH:
            raise InvalidRequest("strength", f"strength must be in (0, {MAX_TOGGLE_STRENGTH}], got {strength}")
        names = self.attributes
        noise, vectors, drawn = draw_inputs(
            self.model.latent_shape,
            names,
            self.attribute_source,
            n,
            seeded_generator(seed),
            attributes,
            toggle,
        )
        multipliers = torch.ones(len(vectors), len(names))
        if toggle is not None:
            multipliers = emphasis(len(names), names.index(toggle), strength).expand(len(vectors), -1).contiguous()
        return Prepared("sample", (noise, vectors, multipliers), AttributeDraw(vectors, drawn.warning))

    def generate(self, noise: torch.Tensor, vectors: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
        return finite_images(self.model.generate(noise, vectors, multipliers))

    def operations(self) -> dict[str, Callable[..., Any]]:
        return {"sample": self.generate}

    def warmup(self) -> Prepared:
        return self.prepare_samples(2, 0)
