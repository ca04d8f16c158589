"""``POST /classify``: the 40 CelebA attribute probabilities of uploaded faces, from the project's own classifier."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import InferenceDep, StoreDep, require_pipeline
from app.api.uploads import AlignForm, FaceReport, UploadsDep, image_files, nonfinite_rows, refuse_rows
from app.models.pipelines.classifier import ClassifierPipeline

router = APIRouter(tags=["classifier"])


class ImageAttributes(BaseModel):
    filename: str
    attributes: dict[str, float] = Field(description="attribute name -> probability that it is present, in [0, 1]")
    face: FaceReport | None = Field(None, description="how the upload was aligned: faces found, box and landmarks")


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
    images: Annotated[list[UploadFile], image_files("face images")],
    store: StoreDep,
    infer: InferenceDep,
    uploaded: UploadsDep,
    align: AlignForm = "auto",
) -> ClassifyResponse:
    """Every attribute's probability per image (multi-label: each is an independent yes/no), rounded to 4 decimals.

    Each upload's largest face is aligned like CelebA's frames (align=auto) and cropped as the classifier's training
    faces were; align=none takes the upload as an already aligned CelebA-like face."""
    uploaded.check_count(images)
    pipeline = require_pipeline(store, "classifier", ClassifierPipeline)
    uploads = await uploaded.read(images, pipeline.checkpoint.preprocess, align=align)
    filenames = uploads.names
    (probabilities,) = await infer("classifier", pipeline.prepare_classification(uploads.images))
    refuse_rows(nonfinite_rows(probabilities), filenames, "the classifier's output for {which} is not finite")
    return ClassifyResponse(
        model="classifier",
        images=[
            ImageAttributes(
                filename=name,
                attributes={attribute: round(value, 4) for attribute, value in zip(pipeline.attributes, row.tolist())},
                face=face,
            )
            for name, row, face in zip(filenames, probabilities, uploads.faces)
        ],
    )
