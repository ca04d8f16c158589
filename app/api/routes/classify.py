"""``POST /classify``: the 40 CelebA attribute probabilities of uploaded faces, from the project's own classifier."""

from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, File, HTTPException, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import RunnerDep, SettingsDep, StoreDep, require_model
from app.api.responses import check_count
from app.api.uploads import read_upload_batch

router = APIRouter(tags=["classifier"])
MAX_CLASSIFY = 32


class ImageAttributes(BaseModel):
    filename: str
    attributes: dict[str, float] = Field(description="attribute name -> probability that it is present, in [0, 1]")


class ClassifyResponse(BaseModel):
    model: str
    images: list[ImageAttributes]

    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "classifier", "images": [
        {"filename": "face.jpg", "attributes": {"Smiling": 0.9731, "Male": 0.0214, "Eyeglasses": 0.0032}}]}]})


@router.post("/classify", response_model=ClassifyResponse)
async def classify(
    images: Annotated[list[UploadFile], File(description="1 to 32 face images (JPEG, PNG or WebP, any size)")],
    store: StoreDep,
    runner: RunnerDep,
    settings: SettingsDep,
) -> ClassifyResponse:
    """Every attribute's probability per image (multi-label: each is an independent yes/no), rounded to 4 decimals.

    Uploads go through the crop/resize the classifier was trained with; aligned, centred faces (as in CelebA)
    classify best."""
    check_count("images", len(images), 1, MAX_CLASSIFY)
    checkpoint = require_model(store, "classifier")
    names = checkpoint.attributes
    if len(names) != checkpoint.model.config.num_attributes:
        raise HTTPException(503, f"the classifier checkpoint names {len(names)} attributes for "
                                 f"{checkpoint.model.config.num_attributes} outputs; it cannot be served")
    batch, filenames = await read_upload_batch(images, checkpoint.preprocess, settings.max_image_pixels)

    def run(batch: torch.Tensor) -> torch.Tensor:
        return checkpoint.model.probabilities(batch.to(store.device)).float().cpu()

    probabilities = await runner.run(run, batch)
    return ClassifyResponse(model="classifier", images=[
        ImageAttributes(filename=name, attributes={attribute: round(value, 4) for attribute, value in zip(names, row.tolist())})
        for name, row in zip(filenames, probabilities)
    ])
