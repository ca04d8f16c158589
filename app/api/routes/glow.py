"""Conditional Glow: ``POST /generate/glow`` (samples with requested attributes at a temperature) and the operations
on uploaded faces, ``POST /glow/interpolate``, ``/glow/manipulate`` and ``/glow/likelihood``.

The flow is unconditional and the attributes enter only its priors (see :mod:`app.models.glow`), so an upload's
latent needs no labels: interpolation and manipulation encode and decode without any attribute vector, and decoding
a face's own latent gives back exactly its (8-bit) reconstruction, which is what the first and last frames of an
interpolation and strength 0 of a manipulation show.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.attributes import attribute_header, attribute_report
from app.api.deps import InferenceDep, SettingsDep, StoreDep, require_pipeline, resolve_seed
from app.api.responses import check_count, encoded, field_error, image_output
from app.api.uploads import AlignForm, FaceReport, UploadsDep, image_files, nonfinite_rows, refuse_rows
from app.imaging import base64_pngs, gif_bytes, grid_png
from app.models.attributes import check_attribute_names
from app.models.pipelines.glow import (
    DEFAULT_CONDITION_STRENGTH,
    DEFAULT_TEMPERATURE,
    MAX_CONDITION_STRENGTH,
    MAX_TEMPERATURE,
    Frames,
    GlowPipeline,
)
from app.schemas import MAX_SEED, ImageFormat, ImagesResponse, StrictModel

router = APIRouter(tags=["glow"])

MAX_FRAMES = 32  # interpolation frames and manipulation strengths per request
MAX_MANIPULATION_STRENGTH = 5.0  # |strength| cap (1 changes an attribute for most faces; far beyond, faces dissolve)
# What `strengths` accepts, stated in the schema: 1..MAX_FRAMES plain decimals within +-MAX_MANIPULATION_STRENGTH,
# comma-separated.
_WHOLE = int(MAX_MANIPULATION_STRENGTH)
_STRENGTH = rf"-?(?:[0-{_WHOLE - 1}](?:\.[0-9]+)?|{_WHOLE}(?:\.0+)?)"
STRENGTHS_PATTERN = rf"^ *{_STRENGTH} *(?:, *{_STRENGTH} *){{0,{MAX_FRAMES - 1}}}$"
SequenceFormat = Literal["png", "gif", "json"]


class GlowRequest(StrictModel):
    n: int = Field(16, ge=1, description="number of images (at most FACEGEN_MAX_N)")
    seed: int | None = Field(
        None, ge=0, lt=MAX_SEED + 1, description="same seed, same images; omitted: random, reported"
    )
    temperature: float = Field(
        DEFAULT_TEMPERATURE,
        ge=0.0,
        le=MAX_TEMPERATURE,
        description="scale of the prior's standard deviations: lower is "
        "smoother and more typical, 1 is the model's own spread",
    )
    attributes: dict[str, bool] = Field(
        default_factory=dict,
        description="attribute name -> on/off; the other attributes are drawn, per image, from the label vector "
        "of a training face with every requested value (CelebA's joint distribution given the request); a "
        "combination fewer than 20 training faces have is drawn from the nearest faces and says so in `warning`",
    )
    strength: float = Field(
        DEFAULT_CONDITION_STRENGTH,
        ge=0.0,
        le=MAX_CONDITION_STRENGTH,
        description="how far each requested attribute moves the samples along its latent direction: 1 moves them "
        "from the training mean to the mean of faces with (without) it, 0 leaves only the flow's own prior",
    )
    format: ImageFormat = Field("png", description="png: one grid (headers X-Seed, X-Attributes); json: base64 PNGs")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "n": 8,
                    "seed": 42,
                    "temperature": DEFAULT_TEMPERATURE,
                    "attributes": {"Smiling": True, "Male": False},
                    "format": "png",
                },
            ]
        }
    )


class GlowImagesResponse(ImagesResponse):
    temperature: float
    attributes: list[dict[str, bool]] = Field(description="per image, in order, the full attribute vector used")
    warning: str | None = Field(
        None,
        description="set when fewer than 20 training faces have the requested combination: the open attributes "
        "then come from the nearest faces (the requested values are kept); PNG responses carry it as X-Warning",
    )


FRAME_STATUS = (
    "per frame: ok; reduced (the frame at the requested strength failed the artefact check, this one is served at "
    "the smaller applied strength); refused (every try failed: the image is a grey tile)"
)


class InterpolationResponse(BaseModel):
    model: str
    method: str
    frames: list[str] = Field(description="base64 PNGs from face_a's reconstruction to face_b's")
    frame_status: list[Literal["ok", "refused"]] = Field(description=FRAME_STATUS)
    faces: list[FaceReport] = Field(description="how face_a and face_b were aligned: faces found, box, landmarks")


class ManipulationResponse(BaseModel):
    model: str
    attribute: str
    strengths: list[float] = Field(description="the strengths requested")
    applied_strengths: list[float | None] = Field(description="per frame, the strength served (null: refused)")
    frame_status: list[Literal["ok", "reduced", "refused"]] = Field(description=FRAME_STATUS)
    original: str = Field(description="the preprocessed upload, base64 PNG")
    images: list[str] = Field(description="base64 PNGs, one per strength, in order")
    face: FaceReport = Field(description="how the upload was aligned: faces found, box, landmarks")


class Likelihood(BaseModel):
    filename: str
    bits_per_dim: float
    face: FaceReport | None = Field(None, description="how the upload was aligned: faces found, box, landmarks")


class LikelihoodResponse(BaseModel):
    model: str
    images: list[Likelihood]


async def sequence_output(
    frames: torch.Tensor, format: str, json_body: Callable[[], BaseModel], headers: dict[str, str] | None = None
) -> Response:
    """Frames as a PNG strip, a GIF or JSON, encoded off the event loop unless they are few (:func:`encoded`)."""
    if format == "png":
        png = await encoded(lambda: grid_png(frames, nrow=len(frames)), frames.numel())
        return Response(png, media_type="image/png", headers=headers)
    if format == "gif":
        gif = await encoded(lambda: gif_bytes(frames), frames.numel())
        return Response(gif, media_type="image/gif", headers=headers)
    body = await encoded(lambda: json_body().model_dump_json(), frames.numel())
    return Response(body, media_type="application/json", headers=headers)


def sequence_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "content": {"image/png": {}, "image/gif": {}},
            "model": model,
            "description": "a PNG strip, a GIF or JSON. A frame that failed the artefact check is a grey tile, named "
            "in the X-Refused-Frames header (1-based) and in frame_status",
        }
    }


def frame_headers(frames: Frames) -> dict[str, str]:
    """What PNG and GIF answers say of their frames: the refused ones (1-based), and for manipulation the strength
    each frame was served at (``refused`` for a grey tile)."""
    headers = {"X-Frame-Status": ",".join(frames.statuses())}
    if frames.refused:
        headers["X-Refused-Frames"] = ",".join(str(index + 1) for index in frames.refused)
    return headers


def refuse_if_all_failed(frames: Frames, message: str) -> None:
    if len(frames.refused) == len(frames.applied):
        raise HTTPException(422, message)


@router.post(
    "/generate/glow",
    response_class=Response,
    tags=["generate"],
    responses={
        200: {
            "content": {"image/png": {}},
            "model": GlowImagesResponse,
            "description": "a PNG grid (X-Seed and X-Attributes headers) or JSON",
        }
    },
)
async def generate_glow(request: GlowRequest, store: StoreDep, infer: InferenceDep, settings: SettingsDep) -> Response:
    """``n`` conditional samples: the requested attributes fixed, the rest from a matching training face (attributes
    first, then the latent noise, both from one seeded CPU generator, so the same request gives the same bytes)."""
    pipeline = require_pipeline(store, "glow", GlowPipeline)
    check_count("n", request.n, 1, settings.max_n)
    seed = resolve_seed(request.seed)
    prepared = pipeline.prepare_samples(request.n, seed, request.attributes, request.temperature, request.strength)
    (images,) = await infer("glow", prepared)
    names, drawn = pipeline.attributes, prepared.drawn_attributes()
    vectors, warning = drawn.vectors, drawn.warning

    return await image_output(
        images,
        format=request.format,
        seed=seed,
        json_body=lambda encoded: GlowImagesResponse(
            model="glow",
            seed=seed,
            images=encoded,
            temperature=request.temperature,
            attributes=attribute_report(vectors, names),
            warning=warning,
        ),
        png_headers={"X-Attributes": attribute_header(vectors, names), **({"X-Warning": warning} if warning else {})},
    )


@router.post("/glow/interpolate", response_class=Response, responses=sequence_responses(InterpolationResponse))
async def interpolate(
    face_a: Annotated[UploadFile, File(description="the first face (JPEG, PNG or WebP, any size)")],
    face_b: Annotated[UploadFile, File(description="the last face")],
    store: StoreDep,
    infer: InferenceDep,
    uploaded: UploadsDep,
    steps: Annotated[int, Form(ge=2, le=MAX_FRAMES, description="frames, both ends included")] = 8,
    method: Annotated[
        Literal["linear", "slerp"], Form(description="straight line or great circle in latent space")
    ] = "linear",
    format: Annotated[SequenceFormat, Form()] = "png",
    align: AlignForm = "auto",
) -> Response:
    """Frames from face_a to face_b along a path between their latents (all levels); the first and last frames are
    the reconstructions of a and b."""
    pipeline = require_pipeline(store, "glow", GlowPipeline)
    uploads = await uploaded.read([face_a, face_b], pipeline.checkpoint.preprocess, "face", align=align)
    (latents,) = await infer("glow", pipeline.prepare_encoding(uploads.images))
    refuse_rows(nonfinite_rows(latents), uploads.names, "the latent of {which} is not finite" + unaligned_hint(align))
    images, unusable = await infer(
        "glow", pipeline.prepare_decoding(pipeline.interpolation_latents(latents, steps, method))
    )
    frames = pipeline.interpolation_frames(images, unusable)
    refuse_if_all_failed(frames, f"every frame diverged{DIVERGENCE_EXPLAINED}" + unaligned_hint(align))
    return await sequence_output(
        frames.images,
        format,
        lambda: InterpolationResponse(
            model="glow",
            method=method,
            frames=base64_pngs(frames.images),
            frame_status=["refused" if status == "refused" else "ok" for status in frames.statuses()],
            faces=uploads.faces,
        ),
        frame_headers(frames),
    )


DIVERGENCE_EXPLAINED = " (NaN, infinity or values far outside the pixel range: black or white frames)"


def unaligned_hint(align: str) -> str:
    if align == "none":
        return "; with align=none the upload must already be a CelebA-aligned face: try align=auto"
    return ""


def parse_strengths(text: str) -> list[float]:
    """``"-1,-0.5,0,0.5,1"`` -> floats, each finite and within +-MAX_MANIPULATION_STRENGTH, at most MAX_FRAMES of
    them."""
    items = [item.strip() for item in text.split(",")]
    try:
        values = [float(item) for item in items]
    except ValueError:
        raise field_error(
            "strengths", f"strengths must be a comma-separated list of numbers, e.g. -1,-0.5,0,0.5,1; got {text!r}"
        ) from None
    if not 1 <= len(values) <= MAX_FRAMES:
        raise field_error("strengths", f"give between 1 and {MAX_FRAMES} strengths, got {len(values)}")
    bad = [value for value in values if not abs(value) <= MAX_MANIPULATION_STRENGTH]  # also catches nan and inf
    if bad:
        limit = MAX_MANIPULATION_STRENGTH
        raise field_error("strengths", f"each strength must be between {-limit} and {limit}; got {bad}")
    if not re.fullmatch(STRENGTHS_PATTERN, text, re.ASCII):  # float() also reads other scripts' digits, 1_0, 1e0
        raise field_error(
            "strengths", f"strengths are plain decimals in ASCII digits, e.g. -1,-0.5,0,0.5,1; got {text!r}"
        )
    return values


@router.post("/glow/manipulate", response_class=Response, responses=sequence_responses(ManipulationResponse))
async def manipulate(
    face: Annotated[UploadFile, File(description="a face (JPEG, PNG or WebP, any size)")],
    attribute: Annotated[str, Form(description="the CelebA attribute to move along, e.g. Smiling")],
    store: StoreDep,
    infer: InferenceDep,
    uploaded: UploadsDep,
    strengths: Annotated[
        str | None,
        Form(
            # The pattern is stated in the schema, but checked by parse_strengths, whose 422 says what is wrong in
            # words (a regex mismatch would only echo the regex).
            json_schema_extra={"pattern": STRENGTHS_PATTERN},
            description="comma list: 1 towards the attribute on, -1 towards off (enough for most faces), "
            "0 the reconstruction; e.g. -1,-0.5,0,0.5,1",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        Form(
            ge=2, le=MAX_FRAMES, description="instead of strengths: evenly spaced from -max_strength to +max_strength"
        ),
    ] = None,
    max_strength: Annotated[float, Form(gt=0, le=MAX_MANIPULATION_STRENGTH)] = 1.0,
    format: Annotated[SequenceFormat, Form()] = "png",
    align: AlignForm = "auto",
) -> Response:
    """The face moved along the attribute's partial direction (how faces change when that attribute alone does,
    the others held), for each strength: 1 towards it on, -1 towards off; strength 0 is the reconstruction.
    Without ``strengths`` or ``steps``: 5 steps from -max_strength to +max_strength."""
    pipeline = require_pipeline(store, "glow", GlowPipeline)
    check_attribute_names([attribute], pipeline.attributes, "attribute")
    if strengths is not None and steps is not None:
        raise field_error("strengths", "give either strengths or steps (with max_strength), not both")
    if strengths is not None:
        values = parse_strengths(strengths)
    else:
        values = torch.linspace(-max_strength, max_strength, steps or 5, dtype=torch.float64).tolist()
    uploads = await uploaded.read([face], pipeline.checkpoint.preprocess, "face", align=align)
    batch = uploads.images
    (latent,) = await infer("glow", pipeline.prepare_encoding(batch))
    refuse_rows(nonfinite_rows(latent), uploads.names, "the latent of {which} is not finite" + unaligned_hint(align))

    async def decode(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, unusable = await infer("glow", pipeline.prepare_decoding(latents))
        return images, unusable

    frames = await pipeline.manipulate(latent[0], attribute, values, decode)
    refuse_if_all_failed(
        frames,
        f"every frame of {uploads.names[0]} moved along {attribute} failed (diverged or pixel noise), at the "
        "requested strengths and at smaller ones: the latent left the range the flow can invert"
        + unaligned_hint(align),
    )
    headers = {
        "X-Strengths": ",".join(f"{value:g}" for value in values),
        "X-Applied-Strengths": ",".join("refused" if value is None else f"{value:g}" for value in frames.applied),
        **frame_headers(frames),
    }
    return await sequence_output(
        frames.images,
        format,
        lambda: ManipulationResponse(
            model="glow",
            attribute=attribute,
            strengths=values,
            applied_strengths=frames.applied,
            frame_status=frames.statuses(),  # type: ignore[arg-type]
            original=base64_pngs(batch)[0],
            images=base64_pngs(frames.images),
            face=uploads.faces[0],
        ),
        headers,
    )


@router.post("/glow/likelihood", response_model=LikelihoodResponse)
async def likelihood(
    images: Annotated[list[UploadFile], image_files("images")],
    store: StoreDep,
    infer: InferenceDep,
    uploaded: UploadsDep,
    align: AlignForm = "auto",
) -> LikelihoodResponse:
    """Bits per dimension of each upload (lower = more face-like to the model; non-faces score high).

    Uploads carry no attributes, so this is the marginal p(x) = E_y p(x | y), estimated with 32 attribute vectors
    drawn from the training frequencies (a fixed draw: the same image always gets the same number) and half-bin
    dequantisation. It reads a little higher than the training's validation bits/dim, which conditions on the true
    attributes and averages over dequantisation noise.
    """
    uploaded.check_count(images)
    pipeline = require_pipeline(store, "glow", GlowPipeline)
    uploads = await uploaded.read(images, pipeline.checkpoint.preprocess, align=align)
    (bits,) = await infer("glow", pipeline.prepare_likelihood(uploads.images))
    refuse_rows(
        nonfinite_rows(bits), uploads.names, "bits per dimension of {which} are not finite" + unaligned_hint(align)
    )
    return LikelihoodResponse(
        model="glow",
        images=[
            Likelihood(filename=name, bits_per_dim=float(value), face=face)
            for name, value, face in zip(uploads.names, bits, uploads.faces)
        ],
    )
