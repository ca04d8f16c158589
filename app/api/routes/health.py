from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import SettingsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
def ready(store: StoreDep, settings: SettingsDep):
    """200 when every family in FACEGEN_REQUIRED is loaded (and at least one model is), else 503 naming the missing."""
    missing = store.missing(settings.required)
    body = {"loaded": sorted(store.models), "missing": missing, "failed_files": store.failures}
    if missing or not store.models:
        body["status"] = "not ready"
        if not store.models and not missing:
            body["detail"] = "no models are loaded"
        return JSONResponse(body, status_code=503)
    body["status"] = "ready"
    return body
