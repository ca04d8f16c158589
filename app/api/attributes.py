"""How attribute vectors are reported in responses (the draw itself is :mod:`app.models.attributes`)."""

from __future__ import annotations

import json

import torch


def attribute_report(vectors: torch.Tensor, names: list[str]) -> list[dict[str, bool]]:
    """Per image, every attribute name -> bool (for JSON responses)."""
    return [{name: bool(value) for name, value in zip(names, row.tolist())} for row in vectors]


def attribute_header(vectors: torch.Tensor, names: list[str]) -> str:
    """Compact per-image report for PNG responses' ``X-Attributes`` header: names once, one 0/1 string per image."""
    rows = ["".join("1" if value else "0" for value in row.tolist()) for row in vectors]
    return json.dumps({"names": names, "rows": rows}, separators=(",", ":"))
