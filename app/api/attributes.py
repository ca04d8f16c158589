"""Attribute conditions shared by every conditional family (ACGAN, Glow).

A request names some attributes (``{"Smiling": true, "Male": false}``); the rest are drawn per image from the
training-set frequencies stored in the checkpoint (tensor ``extra.attribute_frequencies``), with the request's seed,
so conditioned samples look like the data unless asked otherwise. The full vector used is reported back.
"""

from __future__ import annotations

import json

import torch

from app.api.responses import field_error

FREQUENCIES_KEY = "attribute_frequencies"


def check_attribute_names(names: list[str], valid: list[str], field: str = "attributes") -> None:
    """422 listing the valid names when any requested name is not one the model was trained on."""
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise field_error(field, f"unknown or untrained attribute(s) {unknown}; valid: {valid}")


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


def attribute_report(vectors: torch.Tensor, names: list[str]) -> list[dict[str, bool]]:
    """Per image, every attribute name -> bool (for JSON responses)."""
    return [{name: bool(value) for name, value in zip(names, row.tolist())} for row in vectors]


def attribute_header(vectors: torch.Tensor, names: list[str]) -> str:
    """Compact per-image report for PNG responses' ``X-Attributes`` header: names once, one 0/1 string per image."""
    rows = ["".join("1" if value else "0" for value in row.tolist()) for row in vectors]
    return json.dumps({"names": names, "rows": rows}, separators=(",", ":"))
