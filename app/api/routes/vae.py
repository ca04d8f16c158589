"""``POST /vae/reconstruct``: uploaded faces through the VAE's encoder and decoder."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response
from pydantic import Field

from app.api.deps import InferenceDep, SettingsDep, StoreDep, require_pipeline
from app.api.responses import check_count
from app.api.uploads import AlignForm, FaceReport, FacesDep, read_upload_batch, refuse_rows
from app.imaging import base64_pngs, grid_png
from app.models.pipelines.unconditional import VAEPipeline
from app.schemas import Reconstruction, ReconstructResponse

router = APIRouter(prefix="/vae", tags=["vae"])
MAX_RECONSTRUCT = 32


class AlignedReconstruction(Reconstruction):
    face: FaceReport = Field(description="how the upload was aligned: faces found, the box and landmarks used")


class AlignedReconstructResponse(ReconstructResponse):
    images: list[AlignedReconstruction]


@router.post(
    "/reconstruct",
    responses={200: {"content": {"image/png": {}}, "model": AlignedReconstructResponse}},
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
    faces: FacesDep,
    format: Annotated[Literal["png", "json"], Form()] = "png",
    align: AlignForm = "auto",
) -> Response:
    """png: originals (as preprocessed) in row 1 over reconstructions in row 2; json: per-image MSE and images."""
    check_count("images", len(images), 1, MAX_RECONSTRUCT)
    pipeline = require_pipeline(store, "vae", VAEPipeline)
    uploads = await read_upload_batch(
        images, pipeline.checkpoint.preprocess, settings.max_image_pixels, align=align, faces=faces
    )
    batch, names = uploads.images, uploads.names
    reconstructions, errors, unusable = await infer("vae", pipeline.prepare_reconstruction(batch))
    refuse_rows(unusable, names, "the reconstruction of {which} is not finite (NaN or infinity)")
    if format == "png":
        return Response(grid_png(torch.cat([batch, reconstructions]), nrow=len(names)), media_type="image/png")
    body = AlignedReconstructResponse(
        model="vae",
        mean_mse=float(errors.mean()),
        images=[
            AlignedReconstruction(
                filename=name, mse=float(error), original=original, reconstruction=reconstruction, face=face
            )
            for name, error, original, reconstruction, face in zip(
                names, errors, base64_pngs(batch), base64_pngs(reconstructions), uploads.faces
            )
        ],
    )
    return Response(body.model_dump_json(), media_type="application/json")
