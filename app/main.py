"""The FastAPI application: ``uvicorn app.main:app``. Models load and warm up in the lifespan, before the first
request; every forward then goes through one dynamic batcher (:mod:`app.services.batcher`)."""

from __future__ import annotations

import importlib
import logging
import math
import pkgutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app import __version__
from app.api import openapi, representations, routes
from app.api.checks import request_checks
from app.api.deps import ClientDisconnected
from app.api.routes import docs, generate
from app.imaging import DecodeLimits
from app.middleware import (
    APIKeyGuard,
    DecodeBudgets,
    FastAnswers,
    HeadAsGet,
    JSONCORSMiddleware,
    Metrics,
    RequestBodyGuard,
    ReturnMemory,
    SecurityHeaders,
    ServerErrors,
)
from app.models.attributes import InvalidRequest
from app.models.checkpoint import CheckpointError
from app.services.batcher import Batcher, BatcherMetrics, ForwardFailed, ServiceUnavailable
from app.services.device import DeviceError, configure_for_serving, resolve_device
from app.services.faces import DetectionFailed, FaceService
from app.services.model_store import ModelStore
from app.settings import Settings, get_settings

logger = logging.getLogger("facegen")


MAX_ECHO = 100  # characters of a client's string an error echoes back


def json_safe(value: Any) -> Any:
    """A validation error's echoed input with non-finite numbers (JSON's NaN/Infinity literals, which Python's parser
    accepts) written as strings: strict JSON cannot carry them, and the error must still be answered. Long strings
    are cut: an error must not send a client's megabyte back to it."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > MAX_ECHO:
        return f"{value[:MAX_ECHO]}... ({len(value)} characters)"
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


FASTAPI_BODY_ERROR = "There was an error parsing the body"


def body_error_message(cause: BaseException | None) -> str:
    """What was wrong with a body the framework could not parse (it says only that it could not)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not valid UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "the JSON body is nested too deeply to parse"
    if isinstance(cause, StarletteHTTPException):  # the multipart parser's own message
        return f"the multipart body cannot be parsed: {cause.detail}"
    if cause is not None:
        return f"the request body cannot be parsed ({type(cause).__name__}: {cause})"
    return "the request body cannot be parsed"


def explain_error(error: dict) -> dict:
    """FastAPI's error, reworded where it says nothing a client can act on."""
    if error.get("type") == "value_error" and "Expected UploadFile" in error.get("msg", ""):
        field = error["loc"][1] if len(error.get("loc", ())) > 1 else "the file"
        return {
            "loc": error["loc"],
            "msg": f"{field}: this part has no filename, so it is a text field, not a file: send it as a file "
            f'(Content-Disposition: form-data; name="{field}"; filename="face.jpg"; curl -F {field}=@face.jpg)',
            "type": "value_error",
        }  # its input, the whole part, is not echoed
    return error


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    registry = CollectorRegistry()
    batcher_metrics = BatcherMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        try:
            device = resolve_device(settings.device)
        except DeviceError as error:
            logger.critical("cannot start: %s", error)
            raise DeviceError(str(error)) from None  # the reason, not torch's traceback, ends the start-up
        configure_for_serving(device)
        app.state.warm = False
        store = ModelStore.from_directory(
            settings.weights_dir, device, settings.precision, verify=settings.verify_weights
        )
        batcher = Batcher(
            store.pipelines,
            max_batch=settings.batch_size_for(device.type),
            delay_ms=settings.batch_delay_ms,
            max_queue=settings.max_queue,
            metrics=batcher_metrics,
        )
        app.state.store, app.state.batcher = store, batcher
        for name, reason in (await batcher.warm_up()).items():
            store.remove(name, reason)
        batcher.start()
        # Face detection has a thread and queue of its own: a photo full of faces must not hold up the forwards.
        app.state.faces = FaceService(device, max_queue=settings.max_queue)
        app.state.faces.start()
        app.state.warm = True
        yield
        # Uvicorn has stopped accepting and waited for in-flight requests; finish anything still queued.
        await app.state.faces.close(timeout_s=settings.request_timeout_s)
        await batcher.close(timeout_s=settings.request_timeout_s)
        store.models.clear()
        store.pipelines.clear()

    app = FastAPI(
        title="facegen",
        version=__version__,
        lifespan=lifespan,
        dependencies=[Depends(request_checks)],
        # No trailing-slash redirects: Starlette builds their Location from the Host header, which the client writes.
        redirect_slashes=False,
        # /docs and /redoc are app.api.routes.docs: served from shipped files, not from a CDN
        docs_url=None,
        redoc_url=None,
        description="Deep generative models of 64x64 faces. Weights trained on CelebA: non-commercial research use.",
        generate_unique_id_function=representations.operation_id,
    )
    app.state.settings = settings
    app.state.warm = False
    # Every module in app/api/routes exposes a `router`; adding a feature is adding a module. Routers registered
    # with routes.register_router (a family defined outside the package) come after them.
    modules = sorted(pkgutil.iter_modules(routes.__path__), key=lambda m: m.name)
    routers = [importlib.import_module(f"{routes.__name__}.{module.name}").router for module in modules]
    for router in routers + routes.registered_routers():
        representations.add_json_twins(router)  # POST <image route>/json: always JSON
        app.include_router(router)
    app.include_router(generate.fallback_router)  # last: it catches /generate/<anything not served>

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    )
    def metrics() -> Response:
        """Prometheus metrics: requests and latency per route; batch sizes, queue depth, queue wait, forward time
        and shed requests per model."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    openapi.install(app, settings)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 400 and error.detail == FASTAPI_BODY_ERROR:
            error = StarletteHTTPException(400, body_error_message(error.__cause__), headers=error.headers)
        return await http_exception_handler(request, error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [explain_error(item) for item in error.errors()]
        return JSONResponse({"detail": json_safe(jsonable_encoder(errors))}, status_code=422)

    @app.exception_handler(ServiceUnavailable)
    async def on_unavailable(request: Request, error: ServiceUnavailable) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
        return JSONResponse({"detail": str(error)}, status_code=503, headers=headers)

    @app.exception_handler(ForwardFailed)
    @app.exception_handler(DetectionFailed)
    async def on_forward_failed(request: Request, error: ForwardFailed | DetectionFailed) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=500)

    @app.exception_handler(InvalidRequest)
    async def on_invalid(request: Request, error: InvalidRequest) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"loc": ["body", error.field], "msg": str(error), "type": "value_error"}]}, status_code=422
        )

    @app.exception_handler(CheckpointError)
    async def on_unservable(request: Request, error: CheckpointError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.exception_handler(ClientDisconnected)
    async def on_gone(request: Request, error: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it, the metrics count it

    # Added last = outermost (see app.middleware): CORS outside the key check answers preflights, and its headers
    # reach every answer, refusals and errors included; the metrics count them all.
    limits = DecodeLimits(
        max_image_pixels=settings.max_image_pixels,
        max_request_pixels=settings.max_request_pixels,
        decode_side=settings.decode_side,
        concurrency=settings.decode_concurrency,
    )
    app.add_middleware(DecodeBudgets, limits=limits)
    app.add_middleware(representations.BinaryAccept)
    app.add_middleware(ReturnMemory)
    app.add_middleware(HeadAsGet)
    app.add_middleware(
        RequestBodyGuard,
        max_mb=settings.max_upload_mb,
        read_timeout_s=settings.body_timeout_s,
        deadline_s=settings.body_deadline_s,
    )
    app.add_middleware(FastAnswers)
    app.add_middleware(APIKeyGuard, api_key=settings.api_key)
    app.add_middleware(ServerErrors)
    if settings.cors_origins:
        app.add_middleware(
            JSONCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["X-API-Key", "Content-Type"],
            expose_headers=[
                "X-Seed",
                "X-Attributes",
                "X-Warning",
                "X-Strengths",
                "X-Applied-Strengths",
                "X-Frame-Status",
                "X-Refused-Frames",
                "Retry-After",
            ],
            max_age=600,
        )
    # The self-hosted docs pages, and FastAPI's own should they be switched back on.
    framework_pages = {url for url in (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if url}
    docs_pages = set(docs.PAGE_PATHS) | framework_pages
    app.add_middleware(SecurityHeaders, page_paths=docs_pages)
    app.add_middleware(Metrics, registry=registry)
    return app


def __getattr__(name: str) -> FastAPI:
    """``uvicorn app.main:app``: the served application, built (with the server's logging set up) when the server
    first asks for it. Importing this module has no side effect, so tests, scripts and the training package can
    import :func:`create_app` without starting logging or building an app with the environment's settings."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    application = create_app()
    globals()["app"] = application  # built once: later lookups find it without calling this function
    return application
