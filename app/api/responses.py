"""Turning generated tensors into the contract's outputs (PNG grid with X-Seed, or JSON)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from anyio import to_thread
from fastapi import HTTPException
from fastapi.responses import Response
from pydantic import BaseModel

from app.imaging import base64_pngs, grid_png

# Outputs up to this many values (two 3x64x64 images) are encoded on the event loop, larger ones on a worker thread.
INLINE_ENCODE_VALUES = 2 * 3 * 64 * 64

T = TypeVar("T")


async def encoded(encode: Callable[[], T], values: int) -> T:
    """``encode()``, the encoding of an output of ``values`` numbers into PNG, GIF or JSON: on the event loop when
    the output is small, else on a worker thread.

    A 64x64 PNG takes a fraction of a millisecond, less than the hop to a worker thread and back (which, profiled
    under load, was the largest single cost of a one-image request). A grid of 64 takes milliseconds, which the event
    loop needs for other clients (health checks, fast 503s) under load."""
    return encode() if values <= INLINE_ENCODE_VALUES else await to_thread.run_sync(encode)


async def image_output(
    images: torch.Tensor,
    *,
    format: str,
    seed: int,
    json_body: Callable[[list[str]], BaseModel],
    nrow: int = 8,
    png_headers: dict[str, str] | None = None,
) -> Response:
    """The generated images as one PNG grid (``nrow`` per row) or as JSON; both carry ``X-Seed``.

    ``json_body(base64 PNGs)`` builds the family's JSON model, only when JSON is asked for (encoding each image
    separately costs more than the grid). ``png_headers`` carry on a PNG what the JSON body says in fields.
    Encoding runs off the event loop unless the output is small (:func:`encoded`).
    """
    headers = {"X-Seed": str(seed)}
    if format == "json":
        body = await encoded(lambda: json_body(base64_pngs(images)).model_dump_json(), images.numel())
        return Response(body, media_type="application/json", headers=headers)
    png = await encoded(lambda: grid_png(images, nrow), images.numel())
    return Response(png, media_type="image/png", headers={**headers, **(png_headers or {})})


def field_error(field: str, message: str) -> HTTPException:
    """422 in FastAPI's validation-error shape, for checks pydantic cannot express (limits from settings, names
    that depend on the loaded model)."""
    return HTTPException(422, [{"loc": ["body", field], "msg": message, "type": "value_error"}])


def check_count(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise field_error(field, f"{field} must be between {low} and {high}, got {value}")
