"""Classifier pipeline: the 40 CelebA attribute probabilities of preprocessed faces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..classifier import AttributeClassifier
from .base import SCORE, BenchRequest, Pipeline, Prepared, register_pipeline


@register_pipeline(
    "classifier",
    SCORE,
    bench=BenchRequest("/classify", count_field=None, capability=SCORE, name="classify", expect="application/json"),
)
class ClassifierPipeline(Pipeline):
    model: AttributeClassifier

    def validate(self) -> None:
        self.check_attributes_match_outputs(self.model.config.num_attributes, "outputs")

    def prepare_classification(self, images: torch.Tensor) -> Prepared:
        return Prepared("classify", (images,))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(images)

    def operations(self) -> dict[str, Callable[..., Any]]:
        return {"classify": self.classify}

    def warmup(self) -> Prepared:
        size = self.checkpoint.preprocess.size
        return self.prepare_classification(torch.zeros(2, 3, size, size))
