from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import SettingsDep, StoreDep

router = APIRouter(tags=["health"])


def device_fault(request: Request) -> str | None:
    """Why the device is unusable (set by the batcher after a sticky CUDA error), or None."""
    batcher = getattr(request.app.state, "batcher", None)
    return batcher.fault if batcher is not None else None


@router.get("/health", response_model=None)
async def health(request: Request) -> JSONResponse | dict[str, str]:
    """Liveness: the process answers, and its device still works (503 after an unrecoverable device error such as an
    illegal memory access: only a restart recovers, so the orchestrator should make one)."""
    fault = device_fault(request)
    if fault is not None:
        return JSONResponse({"status": "unhealthy", "detail": f"the device failed: {fault}"}, status_code=503)
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
    fault = device_fault(request)
    if missing or failed or fault or not store.models or not request.app.state.warm:
        body["status"] = "not ready"
        if fault:
            body["detail"] = f"the device failed: {fault}"
        elif not request.app.state.warm:
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
