"""Turning generated tensors into the contract's outputs (PNG grid with X-Seed, or JSON)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from anyio import to_thread
from fastapi import HTTPException
from fastapi.responses import Response
from pydantic import BaseModel

from app.imaging import base64_pngs, grid_png

# Outputs up to this many values (two 3x64x64 images) are encoded on the event loop, larger ones on a worker thread.
INLINE_ENCODE_VALUES = 2 * 3 * 64 * 64


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
    A few images are encoded on the event loop: a 64x64 PNG takes a fraction of a millisecond, less than the hop to a
    worker thread and back (which, profiled under load, was the largest single cost of a one-image request). Larger
    outputs are encoded on a worker thread: a grid of 64 takes milliseconds, which the event loop needs for other
    clients (health checks, fast 503s) under load.
    """
    headers = {"X-Seed": str(seed)}
    inline = images[0].numel() * images.shape[0] <= INLINE_ENCODE_VALUES
    if format == "json":
        encode_json = lambda: json_body(base64_pngs(images)).model_dump_json()  # noqa: E731
        body = encode_json() if inline else await to_thread.run_sync(encode_json)
        return Response(body, media_type="application/json", headers=headers)
    png = grid_png(images, nrow) if inline else await to_thread.run_sync(grid_png, images, nrow)
    return Response(png, media_type="image/png", headers={**headers, **(png_headers or {})})


def field_error(field: str, message: str) -> HTTPException:
    """422 in FastAPI's validation-error shape, for checks pydantic cannot express (limits from settings, names
    that depend on the loaded model)."""
    return HTTPException(422, [{"loc": ["body", field], "msg": message, "type": "value_error"}])


def check_count(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise field_error(field, f"{field} must be between {low} and {high}, got {value}")
