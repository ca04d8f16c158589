from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import SettingsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", response_model=None)
async def ready(request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse | dict[str, Any]:
    """200 when every checkpoint in the weights folder loaded, passed the manifest check and its warm-up (with
    FACEGEN_REQUIRE_ALL=false: every family in FACEGEN_REQUIRED, and at least one model), else 503 saying what is
    missing or failed. Files are named, never their server paths."""
    missing = store.missing(settings.required)
    body = {
        "loaded": sorted(store.models),
        "missing": missing,
        "failed_files": store.failures,
        "weights_verified": store.verification,
    }
    failed = settings.require_all and store.failures
    if missing or failed or not store.models or not request.app.state.warm:
        body["status"] = "not ready"
        if not request.app.state.warm:
            body["detail"] = "warming up"
        elif failed:
            body["detail"] = (
                f"{len(store.failures)} checkpoint(s) failed to load (FACEGEN_REQUIRE_ALL=false serves the others)"
            )
        elif not store.models and not missing:
            body["detail"] = "no models are loaded"
        return JSONResponse(body, status_code=503)
    body["status"] = "ready"
    return body
