"""``POST /generate/infogan``: sweeps of one categorical code. Each row is one noise vector with the other codes
fixed (drawn with the seed); its columns walk the swept code through every category."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import InferenceDep, StoreDep, require_pipeline, resolve_seed
from app.api.responses import image_output
from app.models.pipelines.infogan import MAX_ROWS, InfoGANPipeline
from app.schemas import MAX_SEED, ImageFormat, StrictModel

router = APIRouter(prefix="/generate", tags=["generate"])


class InfoGANRequest(StrictModel):
    seed: int | None = Field(
        None, ge=0, lt=MAX_SEED + 1, description="same seed, same images; omitted: random, reported"
    )
    rows: int = Field(4, ge=1, le=MAX_ROWS, description="noise vectors, one per row")
    code: int = Field(0, description="the code to sweep, 0..n_codes-1 (0..9 in the paper's setting)")
    format: ImageFormat = Field("png", description="png: one grid, a row per noise vector; json: base64 PNGs per row")

    model_config = ConfigDict(json_schema_extra={"examples": [{"seed": 7, "rows": 4, "code": 0, "format": "png"}]})


class InfoGANResponse(BaseModel):
    model: str
    seed: int
    code: int
    rows: list[list[str]] = Field(description="per row, the base64 PNGs of the code's categories in order")


@router.post(
    "/infogan",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}},
            "model": InfoGANResponse,
            "description": "a PNG grid (rows x categories) or JSON",
        }
    },
)
async def generate_infogan(request: InfoGANRequest, store: StoreDep, infer: InferenceDep) -> Response:
    """A ``rows`` x categories grid: code ``code`` walked through its categories, everything else fixed per row."""
    pipeline = require_pipeline(store, "infogan", InfoGANPipeline)
    seed = resolve_seed(request.seed)
    (images,) = await infer("infogan", pipeline.prepare_samples(request.rows, seed, code=request.code))

    per_row = pipeline.categories
    return await image_output(
        images,
        format=request.format,
        seed=seed,
        nrow=per_row,
        json_body=lambda encoded: InfoGANResponse(
            model="infogan",
            seed=seed,
            code=request.code,
            rows=[encoded[i : i + per_row] for i in range(0, len(encoded), per_row)],
        ),
    )
