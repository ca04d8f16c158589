"""Pure ASGI middleware: request-body guard (size cap, timeouts, content encoding, cut-off multipart), optional API
key, HEAD on GET routes, the upload decoding budget, JSON 500s, security headers, JSON CORS refusals, Prometheus
metrics.

Order, outermost first (``create_app``): Metrics (counts every answer, refusals included), SecurityHeaders (on every
answer), CORS (answers preflights before the key check and puts its headers on every answer, errors too),
ServerErrors, APIKeyGuard, FastAnswers (/health, and refusals of a full queue, before anything parses),
RequestBodyGuard, HeadAsGet, DecodeBudgets, then the app.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.imaging import DecodeLimits, request_budget
from app.memory import trim_heap
from app.security import CONTENT_SECURITY_POLICY, SECURITY_HEADERS, page_policy

logger = logging.getLogger("facegen.http")


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def receive_within(receive: Receive, seconds: float) -> Message:
    """``receive()``, or :class:`asyncio.TimeoutError` after ``seconds``. ``asyncio.timeout`` (Python 3.11) arms a
    timer on the request's own task; ``asyncio.wait_for`` (3.10) wraps the receive in a task of its own, which cost
    every request a task and a trip through the event loop (it suspends even when the body is already there)."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await receive()
    return await asyncio.wait_for(receive(), seconds)


class BodyRefused(Exception):
    """Raised from ``receive`` when the body must not be read further; the guard answers ``status`` instead."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def multipart_close_delimiter(content_type: bytes) -> bytes | None:
    """``--boundary--``, the line that ends a multipart body, from its Content-Type (None: not multipart)."""
    media, _, options = content_type.decode("latin-1").partition(";")
    if media.strip().lower() != "multipart/form-data":
        return None
    for option in options.split(";"):
        name, _, value = option.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip():
            return b"--" + value.strip().strip('"').encode("latin-1") + b"--"
    return None  # no boundary: the multipart parser refuses it with its own 400


class RequestBodyGuard:
    """Refuses a body before anything parses it: 413 when it is over ``max_mb`` (at once from Content-Length, or as
    soon as a chunked body passes the cap), 415 for a Content-Encoding other than identity (nothing here inflates
    bodies: a gzip body is bytes no parser understands), 408 when the client stops sending it for ``read_timeout_s``
    (a body shorter than its Content-Length would otherwise hold the request forever) or has not finished it
    ``deadline_s`` after the request began (one byte every few seconds would otherwise hold it just as long), and 400
    for a multipart body that ends without its closing boundary (it was cut short: the parser would take the parts
    it saw as the whole request)."""

    def __init__(self, app: ASGIApp, max_mb: float, read_timeout_s: float = 30.0, deadline_s: float = 120.0):
        self.app, self.max_mb, self.max_bytes = app, max_mb, int(max_mb * 1024 * 1024)
        self.read_timeout_s, self.deadline_s = read_timeout_s, deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        too_large = f"request body is larger than the {self.max_mb:g} MiB allowed (FACEGEN_MAX_UPLOAD_MB)"
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            return await send_json(
                send, 400, {"detail": f"Content-Length {length.decode('latin-1')!r} is not a number"}
            )
        if length is not None and int(length) > self.max_bytes:
            return await send_json(send, 413, {"detail": too_large})
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if encoding not in ("", "identity"):
            return await send_json(
                send,
                415,
                {"detail": f"Content-Encoding {encoding!r} is not supported: send the request body uncompressed"},
            )
        closing = multipart_close_delimiter(headers.get(b"content-type", b""))
        deadline = time.monotonic() + self.deadline_s
        received, complete, closed, tail = 0, False, False, b""
        refused: BodyRefused | None = None
        answered = False

        async def guarded_receive() -> Message:
            nonlocal received, complete, closed, tail, refused
            if complete:  # after the body, the next message is the disconnect: wait for it as long as it takes
                return await receive()
            left_s = deadline - time.monotonic()
            try:
                incoming = await receive_within(receive, max(0.0, min(self.read_timeout_s, left_s)))
            except asyncio.TimeoutError:
                if left_s <= self.read_timeout_s:
                    message = (
                        f"the request body was not complete within {self.deadline_s:g} s "
                        f"(FACEGEN_BODY_DEADLINE_S; {received} bytes had arrived)"
                    )
                else:
                    message = (
                        f"the request body stalled: nothing received for {self.read_timeout_s:g} s "
                        f"(FACEGEN_BODY_TIMEOUT_S; {received} bytes had arrived)"
                    )
                refused = BodyRefused(408, message)
                raise refused from None
            if incoming["type"] == "http.request":
                chunk = incoming.get("body", b"")
                received += len(chunk)
                complete = not incoming.get("more_body", False)
                if received > self.max_bytes:
                    refused = BodyRefused(413, too_large)
                    raise refused
                if closing is not None and not closed:
                    window = tail + chunk  # the delimiter may straddle two chunks
                    closed = closing in window
                    tail = window[-len(closing) :]
                    if complete and not closed:
                        refused = BodyRefused(
                            400,
                            "the multipart body ends without its closing boundary "
                            f"({closing.decode('latin-1')}): it was cut short",
                        )
                        raise refused
            else:
                complete = True
            return incoming

        async def guarded_send(outgoing: Message) -> None:
            nonlocal answered
            if refused is None:
                answered = answered or outgoing["type"] == "http.response.start"
                return await send(outgoing)
            # The app may turn our exception into its own error (FastAPI answers 400 for a body it could not read):
            # replace whatever it says with what the client deserves, and close (the rest of the body is unread).
            if not answered:
                answered = True
                await send_json(send, refused.status, {"detail": refused.message}, [(b"connection", b"close")])

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except BodyRefused:
            pass
        if refused is not None and not answered:
            await send_json(send, refused.status, {"detail": refused.message}, [(b"connection", b"close")])


class APIKeyGuard:
    """When a key is configured, every route but /health and the web page needs header ``X-API-Key`` (compared in
    constant time), or ``Authorization: Bearer <key>``: a Prometheus scrape job can send only the latter (its
    ``authorization`` setting, reading the key from a mounted Secret), and ``/metrics`` is guarded like the rest.
    CORS preflights never get here: the CORS middleware outside answers them (browsers send no key with them). The
    page (``/`` and ``/static/``) holds no data, and a browser cannot send a header when it opens a URL; the page's
    own requests to the API carry the key its user types in."""

    # /static/ and /docs-assets/ (Swagger UI's and ReDoc's files) are served by StaticFiles, which refuses paths that
    # leave its folder (../): no API route is behind them. The API docs and their schema hold no data either; open,
    # /docs can send the key (its "Authorize" button).
    OPEN_PATHS = {"/health", "/", "/docs", "/redoc", "/openapi.json"}
    OPEN_PREFIXES = ("/static/", "/docs-assets/")

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app, self.api_key = app, api_key.encode() if api_key else None

    @classmethod
    def is_open(cls, path: str) -> bool:
        return path in cls.OPEN_PATHS or path.startswith(cls.OPEN_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.api_key is not None and not self.is_open(scope["path"]):
            headers = scope.get("headers") or []
            for header, name in ((b"x-api-key", "X-API-Key"), (b"authorization", "Authorization")):
                count = sum(key == header for key, _ in headers)
                if count > 1:  # servers and proxies disagree on which one counts: ambiguous, as repeated JSON keys
                    return await send_json(send, 400, {"detail": f"{name} given {count} times: send it once"})
            found = dict(headers)
            given = found.get(b"x-api-key")
            if given is None:
                scheme, _, token = found.get(b"authorization", b"").partition(b" ")
                given = token.strip() if scheme.lower() == b"bearer" else b""
            if not hmac.compare_digest(given, self.api_key):
                return await send_json(
                    send, 401, {"detail": "missing or wrong X-API-Key header"}, [(b"www-authenticate", b"X-API-Key")]
                )
        await self.app(scope, receive, send)


class HeadAsGet:
    """``HEAD`` on a GET route answers like ``GET`` without the body (FastAPI routes list GET only, so HEAD would be a
    405). Content-Length still says how long the GET body is, as HTTP wants."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        # A copy: the server keeps reading the original scope, and must go on knowing the request was a HEAD (it then
        # expects no body bytes despite the Content-Length).
        inner = {**scope, "method": "GET"}

        async def bodiless_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(inner, receive, bodiless_send)
        finally:
            if "route" in inner:
                scope["route"] = inner["route"]  # for the metrics outside


DECODED_PIXELS = "facegen.decoded_pixels"  # scope key: what the request's uploads decoded to (DecodeBudgets)


class DecodeBudgets:
    """Gives each request its own decoded-pixel budget for uploads (:func:`app.imaging.request_budget`), and notes in
    the scope what it spent (for :class:`ReturnMemory`)."""

    def __init__(self, app: ASGIApp, limits: DecodeLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        with request_budget(self.limits) as budget:
            try:
                await self.app(scope, receive, send)
            finally:
                scope[DECODED_PIXELS] = budget.used


class ReturnMemory:
    """When no request is in progress any more and the requests since the last trim decoded ``min_pixels`` or more
    (a burst of large uploads: their pixels, tensors and bodies were freed, but the C heap keeps the pages), gives
    the heap's free pages back to the system on a worker thread (:func:`app.memory.trim_heap`). Requests that decode
    little (a face of 178x218 is 39k pixels) trim rarely: the trim walks the whole heap."""

    def __init__(self, app: ASGIApp, min_pixels: int = 8_000_000, trim: Callable[[], object] = trim_heap):
        self.app, self.min_pixels, self.trim = app, min_pixels, trim
        self.active, self.decoded = 0, 0
        self.trimming: asyncio.Future | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.decoded += scope.get(DECODED_PIXELS, 0)
            idle = self.trimming is None or self.trimming.done()
            if self.active == 0 and self.decoded >= self.min_pixels and idle:
                self.decoded = 0
                self.trimming = asyncio.get_running_loop().run_in_executor(None, self.trim)


class ServerErrors:
    """An unexpected exception becomes a JSON 500 here, inside the CORS middleware, so a browser can read it (the
    framework's own last-resort handler sits outside every middleware and answers plain text without CORS headers)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error answering %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for an answer: let the server drop the connection
            await send_json(send, 500, {"detail": "internal server error; see the server log"})


class SecurityHeaders:
    """Puts :mod:`app.security`'s headers on every answer. The pages at ``page_paths`` (the API docs, built by the
    server from its settings) get a policy that also trusts the inline scripts and asset URLs of their own HTML, which
    is read from the answer before it is sent (a few kilobytes)."""

    def __init__(self, app: ASGIApp, page_paths: set[str]):
        self.app, self.page_paths = app, page_paths
        self.base = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()), *SECURITY_HEADERS]

    def headers_for(self, message: Message, policy: str | None = None) -> Message:
        ours = {name for name, _ in self.base}
        kept = [(name, value) for name, value in message.get("headers", []) if name.lower() not in ours]
        added = [(b"content-security-policy", policy.encode())] + self.base[1:] if policy else self.base
        return {**message, "headers": kept + added}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] not in self.page_paths:

            async def secured_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = self.headers_for(message)
                await send(message)

            return await self.app(scope, receive, secured_send)
        start: Message | None = None
        body = b""

        async def page_send(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                return await send(message)
            body += message.get("body", b"")
            if message.get("more_body", False):
                return
            html = Headers(raw=start["headers"]).get("content-type", "").startswith("text/html")
            policy = page_policy(body.decode("utf-8", "replace")) if html else None
            await send(self.headers_for(start, policy))
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, page_send)


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflights answer JSON saying what was refused (Starlette's own
    answer is the plain text "Disallowed CORS origin, method, headers")."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        detail = (
            f"CORS preflight refused: {refused} not allowed (origins: FACEGEN_CORS_ORIGINS; methods: "
            f"{', '.join(sorted(self.allow_methods))}; headers: {', '.join(sorted(self.allow_headers))})"
        )
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")}
        return JSONResponse({"detail": detail}, status_code=response.status_code, headers=headers)


# Label values come only from fixed sets, whatever a client sends: a made-up method is "other", a path no route
# matches is "unmatched", statuses are counted by class.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class Metrics:
    """Request counts and latencies per method, route template and status class, on a registry private to this app."""

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
        self._children: dict[tuple[str, str, str | None], tuple] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"

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
            self.children(method, route, status_class(status))[0].inc()
            self.children(method, route, None)[1].observe(time.perf_counter() - started)

    def children(self, method: str, route: str, status: str | None) -> tuple:
        """The counter and histogram children of these labels, looked up once (``labels()`` takes a lock and
        hashes its arguments on every call; the label sets are bounded, so is this cache)."""
        key = (method, route, status)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = (
                self.requests.labels(method, route, status) if status is not None else None,
                self.latency.labels(method, route),
            )
        return found


@dataclass(frozen=True)
class RouteLabel:
    """What :class:`Metrics` reads off ``scope["route"]`` (the route template), for answers given before routing."""

    path: str


class FastAnswers:
    """Two answers given before the framework parses anything, because under overload every request the event loop
    spends less on is time it has for the others:

    * ``GET``/``HEAD /health`` (liveness) answers ``{"status":"ok"}`` at once: it must stay fast precisely when the
      server is busiest, and it needs no dependency, validation or routing. Once the batcher has recorded a device
      fault it is passed on to the route instead, which answers the 503 that tells the orchestrator to restart.
    * ``POST /generate/<family>`` while that model's queue is already full (``FACEGEN_MAX_QUEUE`` images waiting)
      answers the batcher's own 503 with Retry-After without parsing or validating the body: any request would be
      refused then, whatever it asks. (A malformed request gets that 503 rather than its 422 while the queue is full.)

    Inside the API-key guard (a refused client learns nothing of the queue) and outside the body guard; the route is
    recorded for the metrics outside as if the framework had matched it."""

    HEALTH_BODY = b'{"status":"ok"}'
    DRAIN_LIMIT = 64 * 1024  # a full queue's refusal reads a body this small to keep the connection; larger: closes it

    def __init__(self, app: ASGIApp):
        self.app = app

    @staticmethod
    def route(scope: Scope, path: str) -> RouteLabel:
        return RouteLabel(path)  # only answered for /health and /generate/<a loaded family>: both route templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if path == "/health" and method in ("GET", "HEAD") and self.device_fault(scope) is None:
            scope["route"] = self.route(scope, path)
            body = self.HEALTH_BODY
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body if method == "GET" else b""})
            return None
        if method == "POST" and path.startswith("/generate/"):
            refusal = self.queue_full(scope, path[len("/generate/") :])
            if refusal is not None:
                scope["route"] = self.route(scope, path)
                message, retry_after = refusal
                extra = [(b"retry-after", str(retry_after).encode())]
                if not await self.drain(scope, receive):
                    extra.append((b"connection", b"close"))
                return await send_json(send, 503, {"detail": message}, extra)
        return await self.app(scope, receive, send)

    @staticmethod
    def device_fault(scope: Scope) -> str | None:
        batcher = getattr(getattr(scope.get("app"), "state", None), "batcher", None)
        return batcher.fault if batcher is not None else None

    @staticmethod
    def queue_full(scope: Scope, family: str) -> tuple[str, int] | None:
        batcher = getattr(getattr(scope.get("app"), "state", None), "batcher", None)
        if batcher is None:
            return None
        queue = batcher.queues.get(family)
        if queue is None or queue.queued_rows < batcher.max_queue:
            return None
        return queue.overloaded_message(), queue.retry_after_s(1)

    async def drain(self, scope: Scope, receive: Receive) -> bool:
        """Read a small request body to its end (so the connection can serve the client's next request); False
        when it is larger than :attr:`DRAIN_LIMIT` or unannounced and chunked past it."""
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.DRAIN_LIMIT):
            return False
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            received += len(message.get("body", b""))
            if received > self.DRAIN_LIMIT:
                return False
            if not message.get("more_body", False):
                return True
