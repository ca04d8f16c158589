"""Attribute conditions shared by every attribute-aware family (ACGAN, Glow).

A request names some attributes (``{"Smiling": true, "Male": false}``); the rest are drawn per image from the
training-set frequencies stored in the checkpoint (tensor ``extra.attribute_frequencies``), with the request's seed,
so conditioned samples look like the data unless asked otherwise. The full vector used is reported back.
"""

from __future__ import annotations

import torch

FREQUENCIES_KEY = "attribute_frequencies"


class InvalidRequest(ValueError):
    """A request the model cannot serve as asked (e.g. an attribute it was not trained on). The service answers 422
    naming ``field``; offline callers get an ordinary ValueError."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_attribute_names(names: list[str], valid: list[str], field: str = "attributes") -> None:
    """:class:`InvalidRequest` listing the valid names when any requested name is not one the model was trained on."""
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise InvalidRequest(field, f"unknown or untrained attribute(s) {unknown}; valid: {valid}")


def resolve_attributes(
    requested: dict[str, bool], valid: list[str], frequencies: torch.Tensor | None, n: int, generator: torch.Generator
) -> torch.Tensor:
    """(n, len(valid)) 0/1 float matrix on the CPU: requested values fixed, others ~ Bernoulli(training frequency)."""
    check_attribute_names(list(requested), valid)
    probabilities = frequencies.float().cpu() if frequencies is not None else torch.full((len(valid),), 0.5)
    vectors = (torch.rand((n, len(valid)), generator=generator) < probabilities).float()
    for name, value in requested.items():
        vectors[:, valid.index(name)] = float(value)
    return vectors
