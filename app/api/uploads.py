"""Uploaded images -> one preprocessed batch, through the shared preprocessing stored in the checkpoint.

Uploads are faces in photos: with ``align=auto`` (the default) each upload's faces are found (MTCNN, on the
face service's own thread), the largest is aligned to CelebA's landmark positions and cropped as training cropped
CelebA's frames (:func:`app.models.preprocess.preprocess` with landmarks); ``align=none`` takes the upload as an
already aligned CelebA-like frame. What was found and used is reported per upload (:class:`FaceReport`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from fastapi import Depends, File, Form, HTTPException, Request, UploadFile
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.api.deps import until_disconnected
from app.api.responses import check_count, field_error
from app.imaging import ImageDecodeError, decode_image
from app.models.align import CELEBA_FRAME, frame_to_image, transform_scale
from app.models.detector import DEFAULT_LIMITS, DetectorError, Face
from app.models.preprocess import PreprocessSpec, crop_square, preprocess
from app.services.faces import FaceService

MAX_UPLOADS = 32  # images per request to the routes that take a list of uploads (classify, reconstruct, likelihood)

AlignMode = Literal["auto", "none"]
AlignForm = Annotated[
    AlignMode,
    Form(
        description="auto: find the faces, align the largest one like CelebA's frames (eyes, nose and mouth corners "
        "at CelebA's mean positions), 422 if there is none; none: the upload is already a CelebA-aligned face "
        "(178x218-like frame, eyes about half-way down), only centre-cropped"
    ),
]


class FaceReport(BaseModel):
    """How one upload was turned into the model's input."""

    align: AlignMode = Field(description="the alignment applied: auto (detected and aligned) or none")
    faces_found: int | None = Field(
        None,
        description=f"faces found in the upload and verified (align=auto); at most {DEFAULT_LIMITS.faces}, the largest",
    )
    box: list[float] | None = Field(None, description="the face used: x0, y0, x1, y1 in the upload's pixels")
    landmarks: list[list[float]] | None = Field(
        None, description="its eyes, nose and mouth corners (x, y), as seen in the picture, in the upload's pixels"
    )
    score: float | None = Field(None, description="the detector's confidence that it is a face")
    face_px: float | None = Field(None, description="side, in the upload's pixels, of the square the model sees")
    warning: str | None = Field(None, description="why the result may be poor (e.g. a face far smaller than 64 px)")


@dataclass
class UploadBatch:
    images: torch.Tensor  # (N, 3, S, S) in [-1, 1]
    names: list[str]
    faces: list[FaceReport]


def image_files(what: str) -> Any:
    """The ``File`` of a route's list of uploads, with its cap stated in the schema; ``what``: e.g. "face images"."""
    return File(
        description=f"1 to {MAX_UPLOADS} {what} (JPEG, PNG or WebP, any size)",
        json_schema_extra={"maxItems": MAX_UPLOADS},
    )


class FaceFinder:
    """Finds faces in uploads with the app's face service (its own thread and queue; the detector loads
    on first use). A client that disconnects meanwhile abandons its detection, which stops at the next stage."""

    def __init__(self, request: Request):
        self.request = request
        self.service: FaceService = request.app.state.faces
        self.timeout_s: float = request.app.state.settings.request_timeout_s

    async def find(self, images: list[Image.Image]) -> list[list[Face]]:
        try:
            return await until_disconnected(self.request, self.service.find(images, self.timeout_s))
        except DetectorError as error:
            raise HTTPException(503, f"the face detector is not available ({error}); send align=none") from None


def face_report(face: Face, found: int, spec: PreprocessSpec) -> FaceReport:
    """The report of an aligned upload; warns when the face is smaller than the model's input."""
    _, _, side = crop_square(*CELEBA_FRAME, spec)
    face_px = side * transform_scale(frame_to_image(face.landmarks))
    warning = None
    if face_px < spec.size:
        warning = (
            f"the face is only {face_px:.0f} px across in the upload, less than the model's {spec.size} px: "
            "its aligned crop is enlarged and will look blurred"
        )
    return FaceReport(
        align="auto",
        faces_found=found,
        box=list(face.box),
        landmarks=[list(point) for point in face.landmarks],
        score=face.score,
        face_px=round(face_px, 1),
        warning=warning,
    )


def _decode_all(payloads: list[tuple[str, bytes]], max_pixels: int) -> list[Image.Image]:
    return [decode_image(data, name, max_pixels) for name, data in payloads]


def _preprocess_all(images: list[Image.Image], landmarks: list[tuple | None], spec: PreprocessSpec) -> torch.Tensor:
    return torch.stack([preprocess(image, spec, points) for image, points in zip(images, landmarks)])


async def read_upload_batch(
    files: list[UploadFile],
    spec: PreprocessSpec,
    max_pixels: int,
    field: str = "images",
    *,
    align: AlignMode = "none",
    face_finder: FaceFinder | None = None,
) -> UploadBatch:
    """Decode every upload (a bad one answers 4xx naming the file), align its largest face when ``align`` is auto
    (422 naming the uploads without one), preprocess with ``spec``."""
    payloads = []
    for index, upload in enumerate(files):
        name = upload.filename or f"{field}[{index}]"
        payloads.append((name, await upload.read()))
    names = [name for name, _ in payloads]
    try:
        # Decoding a large JPEG takes tens of ms: keep it off the event loop.
        images = await run_in_threadpool(_decode_all, payloads, max_pixels)
    except ImageDecodeError as error:
        raise HTTPException(error.status, str(error)) from None

    if align == "none" or spec.alignment == "none":
        warning = None if align == "none" else "this model was not trained on aligned faces: centre-cropped only"
        reports = [FaceReport(align="none", warning=warning) for _ in images]
        landmarks: list[tuple | None] = [None] * len(images)
    else:
        if face_finder is None:
            raise ValueError("align=auto needs a face finder")
        found = await face_finder.find(images)
        missing = [name for name, image_faces in zip(names, found) if not image_faces]
        if missing:
            raise field_error(
                field,
                f"no face found in {', '.join(missing)}: align=auto looks for a face to align like CelebA's "
                "frames; send a photo in which a face is visible, or align=none for an image that already is a "
                "CelebA-aligned face",
            )
        reports = [face_report(image_faces[0], len(image_faces), spec) for image_faces in found]
        landmarks = [image_faces[0].landmarks for image_faces in found]
    batch = await run_in_threadpool(_preprocess_all, images, landmarks, spec)
    return UploadBatch(batch, names, reports)


class Uploads:
    """Dependency of every route that takes uploaded faces: checks how many came, decodes them off the event loop,
    finds and aligns their faces (align=auto, with the app's face service: its own thread and queue, the detector
    loaded on first use) and preprocesses them as the model's checkpoint says."""

    def __init__(self, request: Request):
        self.face_finder = FaceFinder(request)
        self.max_pixels: int = request.app.state.settings.max_image_pixels

    @staticmethod
    def check_count(files: list[UploadFile], field: str = "images") -> None:
        """422 unless 1 to :data:`MAX_UPLOADS` files came; routes check it before looking the model up."""
        check_count(field, len(files), 1, MAX_UPLOADS)

    async def read(
        self, files: list[UploadFile], spec: PreprocessSpec, field: str = "images", *, align: AlignMode
    ) -> UploadBatch:
        """The uploads as one preprocessed batch (:func:`read_upload_batch`)."""
        return await read_upload_batch(files, spec, self.max_pixels, field, align=align, face_finder=self.face_finder)


UploadsDep = Annotated[Uploads, Depends(Uploads)]


def nonfinite_rows(values: torch.Tensor) -> torch.Tensor:
    """Per row of ``values``: whether it holds a NaN or an infinity."""
    return ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)


def refuse_rows(bad: torch.Tensor, labels: list[str], message: str) -> None:
    """422 when any row is flagged in ``bad``; ``message`` names them where it says ``{which}``. NaN, infinity and
    diverged images are never returned (as images or in JSON): the client learns which of its inputs failed."""
    if bool(bad.any()):
        which = ", ".join(label for label, is_bad in zip(labels, bad.tolist()) if is_bad)
        raise HTTPException(422, message.replace("{which}", which))  # not format(): names come from the client
