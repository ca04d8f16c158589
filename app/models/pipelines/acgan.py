"""ACGAN pipeline: samples with requested attributes, and on/off pairs of one attribute."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..acgan import DEFAULT_TOGGLE_STRENGTH, MAX_STRENGTH, ACGANGenerator, emphasis, toggle_pairs
from ..attributes import FREQUENCIES_KEY, InvalidRequest, check_attribute_names, resolve_attributes
from ..sampling import draw_noise, seeded_generator
from .base import SAMPLE, Pipeline, Prepared, finite_images, register_pipeline


def draw_inputs(
    latent_shape: tuple[int, ...],
    names: list[str],
    frequencies: torch.Tensor | None,
    n: int,
    generator: torch.Generator,
    attributes: dict[str, bool] | None = None,
    toggle: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ACGAN draw, in its one order: ``n`` noise vectors, then ``n`` attribute vectors (open attributes ~
    Bernoulli(training frequency)). Returns (noise, attribute vectors, the n drawn vectors); with ``toggle`` the
    first two are the 2n rows of :func:`toggle_pairs` (the n with it off, then the same n with it on)."""
    attributes = attributes or {}
    check_attribute_names(list(attributes), names, "attributes")
    if toggle is not None:
        check_attribute_names([toggle], names, "toggle")
    noise = draw_noise(latent_shape, n, generator)
    drawn = resolve_attributes(attributes, names, frequencies, n, generator)
    if toggle is None:
        return noise, drawn, drawn
    return *toggle_pairs(noise, drawn, names.index(toggle)), drawn


@register_pipeline("acgan", SAMPLE)
class ACGANPipeline(Pipeline):
    """Draw order, from one generator seeded with the request's seed: the n noise vectors, then the n attribute
    vectors (attributes the request leaves open ~ Bernoulli(training frequency)). A toggle repeats both for the
    off and on rows. Each row carries its own multipliers of G's condition signal, so requests with different
    toggles and strengths share a batch."""

    model: ACGANGenerator

    def validate(self) -> None:
        self.check_attributes_match_outputs(len(self.model.attribute_names), "condition inputs")

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
        if not 0 < strength <= MAX_STRENGTH:
            raise InvalidRequest("strength", f"strength must be in (0, {MAX_STRENGTH}], got {strength}")
        names = self.attributes
        noise, vectors, _ = draw_inputs(
            self.model.latent_shape,
            names,
            self.checkpoint.extras.get(FREQUENCIES_KEY),
            n,
            seeded_generator(seed),
            attributes,
            toggle,
        )
        multipliers = torch.ones(len(vectors), len(names))
        if toggle is not None:
            multipliers = emphasis(len(names), names.index(toggle), strength).expand(len(vectors), -1).contiguous()
        return Prepared("sample", (noise, vectors, multipliers), {"attributes": vectors})

    def generate(self, noise: torch.Tensor, vectors: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
        return finite_images(self.model.generate(noise, vectors, multipliers))

    def operations(self) -> dict[str, Callable[..., Any]]:
        return {"sample": self.generate}

    def warmup(self) -> Prepared:
        return self.prepare_samples(2, 0)
