"""``POST /generate/{family}``: sampling. Noise is drawn on the CPU from the request's seed, so the same request with
the same seed gives the same images on any device."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from app.api.deps import RunnerDep, SettingsDep, StoreDep, require_model
from app.api.responses import check_count, image_output
from app.models.sampling import draw_noise, seeded_generator
from app.schemas import MAX_SEED, GenerateRequest, ImagesResponse

router = APIRouter(prefix="/generate", tags=["generate"])

IMAGE_RESPONSES = {200: {"content": {"image/png": {}}, "model": ImagesResponse, "description": "a PNG grid or JSON"}}


def resolve_seed(seed: int | None) -> int:
    return secrets.randbelow(MAX_SEED) if seed is None else seed


async def sample_unconditional(family: str, request: GenerateRequest, store, runner, settings) -> Response:
    check_count("n", request.n, 1, settings.max_n)
    checkpoint = require_model(store, family)
    seed = resolve_seed(request.seed)
    noise = draw_noise(checkpoint.model.latent_shape, request.n, seeded_generator(seed)).to(store.device)
    images = await runner.run(checkpoint.model.generate, noise)
    return image_output(images, format=request.format, seed=seed,
                        json_body=lambda encoded: ImagesResponse(model=family, seed=seed, images=encoded))


@router.post("/vae", responses=IMAGE_RESPONSES, response_class=Response)
async def generate_vae(request: GenerateRequest, store: StoreDep, runner: RunnerDep, settings: SettingsDep):
    """Decode ``n`` draws from the VAE's N(0, I) prior."""
    return await sample_unconditional("vae", request, store, runner, settings)


@router.post("/dcgan", responses=IMAGE_RESPONSES, response_class=Response)
async def generate_dcgan(request: GenerateRequest, store: StoreDep, runner: RunnerDep, settings: SettingsDep):
    """``n`` DCGAN samples."""
    return await sample_unconditional("dcgan", request, store, runner, settings)


fallback_router = APIRouter(tags=["generate"])


@fallback_router.post("/generate/{family}", include_in_schema=False)
async def unknown_family(family: str, store: StoreDep):
    """Included after every family router: anything it catches names no generating family."""
    raise HTTPException(404, f"unknown family {family!r}; generating families served here: {sorted(store.models)}")
