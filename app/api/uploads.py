"""Uploaded images -> one preprocessed batch, through the shared preprocessing stored in the checkpoint."""

from __future__ import annotations

import torch
from fastapi import HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from app.imaging import ImageDecodeError, decode_image
from app.models.preprocess import PreprocessSpec, preprocess


def _decode_all(payloads: list[tuple[str, bytes]], spec: PreprocessSpec, max_pixels: int) -> torch.Tensor:
    return torch.stack([preprocess(decode_image(data, name, max_pixels), spec) for name, data in payloads])


async def read_upload_batch(
    files: list[UploadFile], spec: PreprocessSpec, max_pixels: int, field: str = "images"
) -> tuple[torch.Tensor, list[str]]:
    """Decode and preprocess every upload; a bad one answers 4xx naming the file."""
    payloads = []
    for index, upload in enumerate(files):
        name = upload.filename or f"{field}[{index}]"
        payloads.append((name, await upload.read()))
    try:
        # Decoding a large JPEG takes tens of ms: keep it off the event loop.
        batch = await run_in_threadpool(_decode_all, payloads, spec, max_pixels)
    except ImageDecodeError as error:
        raise HTTPException(error.status, str(error)) from None
    return batch, [name for name, _ in payloads]
