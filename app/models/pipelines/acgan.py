"""ACGAN pipeline: samples with requested attributes, and on/off pairs of one attribute."""

from __future__ import annotations

import torch

from ..acgan import DEFAULT_TOGGLE_STRENGTH, MAX_STRENGTH, emphasis, toggle_pairs
from ..attributes import FREQUENCIES_KEY, InvalidRequest, check_attribute_names, resolve_attributes
from ..sampling import draw_noise, seeded_generator
from .base import SAMPLE, Pipeline, Prepared, finite_images, register_pipeline


@register_pipeline("acgan", SAMPLE)
class ACGANPipeline(Pipeline):
    """Draw order, from one generator seeded with the request's seed: the n noise vectors, then the n attribute
    vectors (attributes the request leaves open ~ Bernoulli(training frequency)). A toggle repeats both for the
    off and on rows. Each row carries its own multipliers of G's condition signal, so requests with different
    toggles and strengths share a batch."""

    def validate(self) -> None:
        self.check_attributes_match_outputs(len(self.model.attribute_names), "condition inputs")

    @property
    def attributes(self) -> list[str]:
        return list(self.model.attribute_names)

    def prepare_samples(self, n: int, seed: int, attributes: dict[str, bool] | None = None, toggle: str | None = None,
                        strength: float = DEFAULT_TOGGLE_STRENGTH) -> Prepared:
        """``n`` samples, or with ``toggle`` ``n`` pairs: 2n rows, the n with it off, then the same n with it on,
        the toggled attribute's condition pushed to -strength/+strength (1 = as trained)."""
        names = self.attributes
        attributes = attributes or {}
        check_attribute_names(list(attributes), names, "attributes")
        if toggle is not None:
            check_attribute_names([toggle], names, "toggle")
        if not 0 < strength <= MAX_STRENGTH:
            raise InvalidRequest("strength", f"strength must be in (0, {MAX_STRENGTH}], got {strength}")
        generator = seeded_generator(seed)
        noise = draw_noise(self.model.latent_shape, n, generator)
        vectors = resolve_attributes(attributes, names, self.checkpoint.extras.get(FREQUENCIES_KEY), n, generator)
        multipliers = torch.ones(n, len(names))
        if toggle is not None:
            noise, vectors = toggle_pairs(noise, vectors, names.index(toggle))
            multipliers = emphasis(len(names), names.index(toggle), strength).expand(2 * n, -1).contiguous()
        return Prepared("sample", (noise, vectors, multipliers), {"attributes": vectors})

    def generate(self, noise: torch.Tensor, vectors: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
        return finite_images(self.model.generate(noise, vectors, multipliers))

    def operations(self):
        return {"sample": self.generate}

    def warmup(self) -> Prepared:
        return self.prepare_samples(2, 0)
