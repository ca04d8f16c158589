"""``POST /vae/reconstruct``: uploaded faces through the VAE's encoder and decoder."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from app.api.deps import InferenceDep, SettingsDep, StoreDep, require_pipeline
from app.api.responses import check_count
from app.api.uploads import read_upload_batch
from app.imaging import base64_pngs, grid_png
from app.schemas import Reconstruction, ReconstructResponse

router = APIRouter(prefix="/vae", tags=["vae"])
MAX_RECONSTRUCT = 32


@router.post(
    "/reconstruct",
    responses={200: {"content": {"image/png": {}}, "model": ReconstructResponse}},
    response_class=Response,
)
async def reconstruct(
    images: Annotated[
        list[UploadFile],
        File(
            description="1 to 32 face images (JPEG, PNG or WebP, any size)",
            json_schema_extra={"maxItems": MAX_RECONSTRUCT},
        ),
    ],
    store: StoreDep,
    infer: InferenceDep,
    settings: SettingsDep,
    format: Annotated[Literal["png", "json"], Form()] = "png",
):
    """png: originals (as preprocessed) in row 1 over reconstructions in row 2; json: per-image MSE and images."""
    check_count("images", len(images), 1, MAX_RECONSTRUCT)
    pipeline = require_pipeline(store, "vae")
    batch, names = await read_upload_batch(images, pipeline.checkpoint.preprocess, settings.max_image_pixels)
    reconstructions, errors = await infer("vae", pipeline.prepare_reconstruction(batch))
    if format == "png":
        return Response(grid_png(torch.cat([batch, reconstructions]), nrow=len(names)), media_type="image/png")
    body = ReconstructResponse(
        model="vae",
        mean_mse=float(errors.mean()),
        images=[
            Reconstruction(filename=name, mse=float(error), original=original, reconstruction=reconstruction)
            for name, error, original, reconstruction in zip(
                names, errors, base64_pngs(batch), base64_pngs(reconstructions)
            )
        ],
    )
    return Response(body.model_dump_json(), media_type="application/json")
