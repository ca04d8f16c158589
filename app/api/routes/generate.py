"""``POST /generate/{family}``: sampling. Noise is drawn on the CPU from the request's seed (by the family's
pipeline), so the same request with the same seed gives the same images on any device and in any batch."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from app.api.deps import Serving, ServingDep, StoreDep, require_pipeline, resolve_seed
from app.api.responses import check_count, image_output
from app.models.pipelines import SAMPLE
from app.models.pipelines.unconditional import NoisePipeline
from app.schemas import GenerateRequest, ImagesResponse

router = APIRouter(prefix="/generate", tags=["generate"])

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "model": ImagesResponse, "description": "a PNG grid or JSON"}
}


async def sample_unconditional(family: str, request: GenerateRequest, serving: Serving) -> Response:
    check_count("n", request.n, 1, serving.settings.max_n)
    pipeline = require_pipeline(serving.store, family, NoisePipeline)
    seed = resolve_seed(request.seed)
    (images,) = await serving.infer(family, pipeline.prepare_samples(request.n, seed))
    return await image_output(
        images,
        format=request.format,
        seed=seed,
        json_body=lambda encoded: ImagesResponse(model=family, seed=seed, images=encoded),
    )


@router.post("/vae", responses=IMAGE_RESPONSES, response_class=Response)
async def generate_vae(request: GenerateRequest, serving: ServingDep) -> Response:
    """Decode ``n`` draws from the full-covariance Gaussian fitted to the VAE's training latents (closer to where
    faces lie than the N(0, I) prior it was trained with)."""
    return await sample_unconditional("vae", request, serving)


@router.post("/dcgan", responses=IMAGE_RESPONSES, response_class=Response)
async def generate_dcgan(request: GenerateRequest, serving: ServingDep) -> Response:
    """``n`` DCGAN samples."""
    return await sample_unconditional("dcgan", request, serving)


fallback_router = APIRouter(tags=["generate"])


@fallback_router.post("/generate/{family}", include_in_schema=False)
async def unknown_family(family: str, store: StoreDep) -> Response:
    """Included after every family router: anything it catches names no generating family."""
    samplers = sorted(name for name, pipeline in store.pipelines.items() if SAMPLE in pipeline.capabilities)
    raise HTTPException(404, f"unknown family {family!r}; generating families served here: {samplers}")
