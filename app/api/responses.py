"""Turning generated tensors into the contract's outputs (PNG grid with X-Seed, or JSON)."""

from __future__ import annotations

import torch
from fastapi import HTTPException
from fastapi.responses import Response

from app.imaging import base64_pngs, grid_png
from app.schemas import ImagesResponse


def image_output(images: torch.Tensor, *, model: str, seed: int, format: str, nrow: int = 8):
    if format == "json":
        body = ImagesResponse(model=model, seed=seed, images=base64_pngs(images))
        return Response(body.model_dump_json(), media_type="application/json", headers={"X-Seed": str(seed)})
    return Response(grid_png(images, nrow=nrow), media_type="image/png", headers={"X-Seed": str(seed)})


def field_error(field: str, message: str) -> HTTPException:
    """422 in FastAPI's validation-error shape, for checks pydantic cannot express (limits from settings, names
    that depend on the loaded model)."""
    return HTTPException(422, [{"loc": ["body", field], "msg": message, "type": "value_error"}])


def check_count(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise field_error(field, f"{field} must be between {low} and {high}, got {value}")
