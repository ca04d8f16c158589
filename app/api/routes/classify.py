"""``POST /classify``: the 40 CelebA attribute probabilities of uploaded faces, from the project's own classifier."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import InferenceDep, SettingsDep, StoreDep, require_pipeline
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

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "classifier",
                    "images": [
                        {
                            "filename": "face.jpg",
                            "attributes": {"Smiling": 0.9731, "Male": 0.0214, "Eyeglasses": 0.0032},
                        }
                    ],
                }
            ]
        }
    )


@router.post("/classify", response_model=ClassifyResponse)
async def classify(
    images: Annotated[
        list[UploadFile],
        File(
            description="1 to 32 face images (JPEG, PNG or WebP, any size)",
            json_schema_extra={"maxItems": MAX_CLASSIFY},
        ),
    ],
    store: StoreDep,
    infer: InferenceDep,
    settings: SettingsDep,
) -> ClassifyResponse:
    """Every attribute's probability per image (multi-label: each is an independent yes/no), rounded to 4 decimals.

    Uploads go through the crop/resize the classifier was trained with; aligned, centred faces (as in CelebA)
    classify best."""
    check_count("images", len(images), 1, MAX_CLASSIFY)
    pipeline = require_pipeline(store, "classifier")
    batch, filenames = await read_upload_batch(images, pipeline.checkpoint.preprocess, settings.max_image_pixels)
    (probabilities,) = await infer("classifier", pipeline.prepare_classification(batch))
    return ClassifyResponse(
        model="classifier",
        images=[
            ImageAttributes(
                filename=name,
                attributes={attribute: round(value, 4) for attribute, value in zip(pipeline.attributes, row.tolist())},
            )
            for name, row in zip(filenames, probabilities)
        ],
    )
