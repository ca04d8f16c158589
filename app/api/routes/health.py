from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api.deps import SettingsDep, StoreDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    loaded: list[str] = Field(description="the families being served")
    missing: list[str] = Field(description="families of FACEGEN_REQUIRED that are not loaded")
    failed_files: dict[str, str] = Field(description="checkpoint file name -> why it is not served")
    weights_verified: str = Field(description="the manifest check: verified, absent, off or failed")
    status: Literal["ready", "not ready"]
    detail: str | None = Field(None, description="why not ready, when no file or family says it")


@router.get("/health")
async def health() -> Health:
    """Liveness: the process answers."""
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
    detail = None
    if not request.app.state.warm:
        detail = "warming up"
    elif failed:
        detail = f"{len(store.failures)} checkpoint(s) failed to load (FACEGEN_REQUIRE_ALL=false serves the others)"
    elif not store.models and not missing:
        detail = "no models are loaded"
    not_ready = bool(missing or failed or not store.models or not request.app.state.warm)
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
