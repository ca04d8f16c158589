"""InfoGAN pipeline: sweeps of one categorical code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..attributes import InvalidRequest
from ..infogan import InfoGANGenerator, draw_codes, sweep_inputs
from ..sampling import draw_noise, seeded_generator
from .base import SAMPLE, BenchRequest, Pipeline, Prepared, finite_images, register_pipeline

MAX_ROWS = 16  # noise vectors (rows) one request may sweep: 16 x 10 categories is a 160-image grid


# A sweep of code 0 per request: its images/s counts sweeps (a row of the code's categories), so the service's cost of
# one InfoGAN request shows beside the other families'.
@register_pipeline(
    "infogan",
    SAMPLE,
    bench=BenchRequest("/generate/infogan", count_field="rows", fields={"code": 0, "format": "png"}, max_rows=MAX_ROWS),
)
class InfoGANPipeline(Pipeline):
    """Draw order: the rows' noise vectors, then their codes; each row is then repeated once per category of the
    swept code (row-major: rows x categories images)."""

    model: InfoGANGenerator

    @property
    def categories(self) -> int:
        return self.model.n_categories

    def prepare_samples(self, n: int, seed: int, code: int = 0) -> Prepared:
        """``n`` rows, each one noise vector with code ``code`` walked through its categories."""
        if not 0 <= code < self.model.n_codes:
            raise InvalidRequest("code", f"code must be between 0 and {self.model.n_codes - 1}, got {code}")
        generator = seeded_generator(seed)
        noise = draw_noise(self.model.noise_shape, n, generator)
        codes = draw_codes(n, self.model.n_codes, self.categories, generator)
        return Prepared("sample", sweep_inputs(noise, codes, code, self.categories))

    def generate(self, noise: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return finite_images(self.model.generate(noise, codes))

    def operations(self) -> dict[str, Callable[..., Any]]:
        return {"sample": self.generate}

    def warmup(self) -> Prepared:
        return self.prepare_samples(1, 0)
