"""``POST /vae/reconstruct``: uploaded faces through the VAE's encoder and decoder."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from fastapi import APIRouter, Form, UploadFile
from fastapi.responses import Response
from pydantic import Field

from app.api.deps import InferenceDep, StoreDep, require_pipeline
from app.api.responses import encoded
from app.api.uploads import AlignForm, FaceReport, UploadsDep, image_files, refuse_rows
from app.imaging import base64_pngs, grid_png
from app.models.pipelines.unconditional import VAEPipeline
from app.schemas import Reconstruction, ReconstructResponse

router = APIRouter(prefix="/vae", tags=["vae"])


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
    images: Annotated[list[UploadFile], image_files("face images")],
    store: StoreDep,
    infer: InferenceDep,
    uploaded: UploadsDep,
    format: Annotated[Literal["png", "json"], Form()] = "png",
    align: AlignForm = "auto",
) -> Response:
    """png: originals (as preprocessed) in row 1 over reconstructions in row 2; json: per-image MSE and images."""
    uploaded.check_count(images)
    pipeline = require_pipeline(store, "vae", VAEPipeline)
    uploads = await uploaded.read(images, pipeline.checkpoint.preprocess, align=align)
    batch, names = uploads.images, uploads.names
    reconstructions, errors, unusable = await infer("vae", pipeline.prepare_reconstruction(batch))
    refuse_rows(unusable, names, "the reconstruction of {which} is not finite (NaN or infinity)")
    values = batch.numel() + reconstructions.numel()
    if format == "png":
        png = await encoded(lambda: grid_png(torch.cat([batch, reconstructions]), nrow=len(names)), values)
        return Response(png, media_type="image/png")

    def json_body() -> str:
        return AlignedReconstructResponse(
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
        ).model_dump_json()

    return Response(await encoded(json_body, values), media_type="application/json")
