"""The FastAPI application: ``uvicorn app.main:app``. Models load in the lifespan, before the first request."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.responses import Response

from app import __version__
from app.api import routes
from app.api.routes import generate
from app.middleware import APIKeyGuard, BodySizeLimit, Metrics
from app.services.inference import InferenceRunner, InferenceTimeout
from app.services.model_store import ModelStore, resolve_device
from app.settings import Settings, get_settings

logger = logging.getLogger("facegen")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        app.state.store = ModelStore.from_directory(settings.weights_dir, resolve_device(settings.device))
        app.state.runner = InferenceRunner(settings.request_timeout_s)
        yield
        app.state.runner.close()
        app.state.store.models.clear()

    app = FastAPI(title="facegen", version=__version__, lifespan=lifespan,
                  description="Deep generative models of 64x64 faces. Weights trained on CelebA: non-commercial research use.")
    app.state.settings = settings
    # Every module in app/api/routes exposes a `router`; adding a feature is adding a module.
    for module in sorted(pkgutil.iter_modules(routes.__path__), key=lambda m: m.name):
        app.include_router(importlib.import_module(f"{routes.__name__}.{module.name}").router)
    app.include_router(generate.fallback_router)  # last: it catches /generate/<anything not served>

    registry = CollectorRegistry()

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(InferenceTimeout)
    async def on_timeout(request: Request, error: InferenceTimeout) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)

    # Added last = outermost: the size cap and key check run before anything reads the body.
    app.add_middleware(Metrics, registry=registry)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"],
                           expose_headers=["X-Seed", "X-Attributes", "X-Strengths"])
    app.add_middleware(APIKeyGuard, api_key=settings.api_key)
    app.add_middleware(BodySizeLimit, max_mb=settings.max_upload_mb)
    return app


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app()
