from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import SettingsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
def ready(request: Request, store: StoreDep, settings: SettingsDep):
    """200 when every family in FACEGEN_REQUIRED is loaded (and at least one model is) and every model has run its
    warm-up forward, else 503 naming what is missing."""
    missing = store.missing(settings.required)
    body = {"loaded": sorted(store.models), "missing": missing, "failed_files": store.failures}
    if missing or not store.models or not request.app.state.warm:
        body["status"] = "not ready"
        if not request.app.state.warm:
            body["detail"] = "warming up"
        elif not store.models and not missing:
            body["detail"] = "no models are loaded"
        return JSONResponse(body, status_code=503)
    body["status"] = "ready"
    return body
