"""Pure ASGI middleware: request-size cap, optional API key, Prometheus metrics."""

from __future__ import annotations

import hmac
import json
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def send_json(send: Send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """413 for bodies over ``max_bytes``: at once from Content-Length, or as soon as a chunked body passes the cap,
    before anything parses it."""

    def __init__(self, app: ASGIApp, max_mb: float):
        self.app, self.max_mb, self.max_bytes = app, max_mb, int(max_mb * 1024 * 1024)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body is larger than the {self.max_mb:g} MiB allowed (FACEGEN_MAX_UPLOAD_MB)"
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await send_json(send, 413, {"detail": message})
        received, exceeded, answered = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return incoming

        async def guarded_send(outgoing: Message) -> None:
            nonlocal answered
            if not exceeded:
                answered = answered or outgoing["type"] == "http.response.start"
                return await send(outgoing)
            # The app may turn our exception into its own error (FastAPI answers 400 for a body it could not
            # read): replace whatever it says with the 413 the client deserves.
            if not answered:
                answered = True
                await send_json(send, 413, {"detail": message})

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        if exceeded and not answered:
            await send_json(send, 413, {"detail": message})


class APIKeyGuard:
    """When a key is configured, every route but /health needs header ``X-API-Key`` (compared in constant time)."""

    OPEN_PATHS = {"/health"}

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app, self.api_key = app, api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.api_key is not None and scope["path"] not in self.OPEN_PATHS:
            given = dict(scope.get("headers") or []).get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self.api_key):
                return await send_json(send, 401, {"detail": "missing or wrong X-API-Key header"})
        await self.app(scope, receive, send)


class Metrics:
    """Request counts and latencies per route template, on a registry private to this app."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry):
        self.app = app
        self.requests = Counter("facegen_requests", "HTTP requests", ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "facegen_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            # The route template (not the raw path) keeps label cardinality bounded.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
