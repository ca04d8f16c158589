from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api.deps import SettingsDep, StoreDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok", "unhealthy"]
    detail: str | None = Field(None, description="why unhealthy")


class Readiness(BaseModel):
    loaded: list[str] = Field(description="the families being served")
    missing: list[str] = Field(description="families of FACEGEN_REQUIRED that are not loaded")
    failed_files: dict[str, str] = Field(description="checkpoint file name -> why it is not served")
    weights_verified: str = Field(description="the manifest check: verified, absent, off or failed")
    status: Literal["ready", "not ready"]
    detail: str | None = Field(None, description="why not ready, when no file or family says it")


def device_fault(request: Request) -> str | None:
    """Why the device is unusable (set by the batcher after a sticky CUDA error), or None."""
    batcher = getattr(request.app.state, "batcher", None)
    return batcher.fault if batcher is not None else None


@router.get(
    "/health",
    response_model=Health,
    response_model_exclude_none=True,
    responses={503: {"model": Health, "description": "the device failed: only a restart recovers"}},
)
async def health(request: Request) -> JSONResponse | Health:
    """Liveness: the process answers, and its device still works (503 after an unrecoverable device error such as an
    illegal memory access: only a restart recovers, so the orchestrator should make one)."""
    fault = device_fault(request)
    if fault is not None:
        return JSONResponse({"status": "unhealthy", "detail": f"the device failed: {fault}"}, status_code=503)
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "not ready: what is missing or failed"}},
)
async def ready(request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse | Readiness:
    """200 when every checkpoint in the weights folder loaded, passed the manifest check and its warm-up (with
    FACEGEN_REQUIRE_ALL=false: every family in FACEGEN_REQUIRED, and at least one model), else 503 saying what is
    missing or failed. Files are named, never their server paths."""
    missing = store.missing(settings.required)
    failed = settings.require_all and store.failures
    fault = device_fault(request)
    detail = None
    if fault:
        detail = f"the device failed: {fault}"
    elif not request.app.state.warm:
        detail = "warming up"
    elif failed:
        detail = f"{len(store.failures)} checkpoint(s) failed to load (FACEGEN_REQUIRE_ALL=false serves the others)"
    elif not store.models and not missing:
        detail = "no models are loaded"
    not_ready = bool(missing or failed or fault or not store.models or not request.app.state.warm)
    body = Readiness(
        loaded=sorted(store.models),
        missing=missing,
        failed_files=store.failures,
        weights_verified=store.verification,
        status="not ready" if not_ready else "ready",
        detail=detail,
    )
    if not_ready:
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return body
