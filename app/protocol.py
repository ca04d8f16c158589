"""Uvicorn's HTTP protocol, bounded against slow and idle clients, and answering only JSON.

* **Idle connections** (nothing sent since they opened or since their last answer) are closed after
  ``FACEGEN_KEEP_ALIVE_S``; a connection that has started a request but not finished its headers gets
  ``FACEGEN_HEADER_TIMEOUT_S`` from then on (slowloris), then a 408 and is closed. Uvicorn alone times out only a
  keep-alive connection after an answer, so a client that connects and never finishes its headers held its slot for
  ever. Request bodies have their own timeouts (:class:`app.middleware.RequestBodyGuard`).
* **The connection cap** (``FACEGEN_MAX_CONNECTIONS``, open connections or requests in progress): past it a request is
  answered 503 in JSON with ``Retry-After`` and its connection closed, except ``GET``/``HEAD /health``, which is
  always served so that a liveness probe does not restart a server that is only busy. (Uvicorn's own
  ``limit_concurrency`` answers plain text, without Retry-After, and refuses ``/health`` too.)
* **Requests the parser refuses** (a Content-Length that is not a number, a malformed request line or header, a
  header block or URL too long) get a JSON 400 instead of uvicorn's plain text. A request line and headers over
  :data:`MAX_HEADER_BYTES` get 431: h11 refuses them past that size itself, httptools would buffer them without end.

Every answer written here carries the security headers of :mod:`app.security`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from app.security import CONTENT_SECURITY_POLICY, SECURITY_HEADERS

logger = logging.getLogger("facegen.http")

MAX_HEADER_BYTES = 16 * 1024  # h11's own limit (uvicorn's h11_max_incomplete_event_size), nginx's is 4 x 8 KiB
LINGER_S = 2.0  # after a refusal, what the client still sends is read and dropped this long (see _refuse)
RETRY_AFTER_S = 1  # connections over the cap clear within FACEGEN_KEEP_ALIVE_S; a second is a fair first wait
ALWAYS_SERVED = frozenset({("GET", "/health"), ("HEAD", "/health")})
HEADERS = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()), *SECURITY_HEADERS]
PARSER_ERROR = (
    "the request is not valid HTTP/1.1: a malformed request line or header, a Content-Length that is not a number, "
    "or a URL or header block too long"
)


def json_answer(status: int, reason: str, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, written straight to the socket."""
    body = json.dumps({"detail": detail}).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}".encode(),
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        *(name + b": " + value for name, value in [*HEADERS, *(extra or [])]),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class CapacityGate:
    """The app as one connection's protocol calls it: over the cap, a JSON 503 instead (``/health`` excepted)."""

    def __init__(self, app: Any, protocol: BoundedHTTPMixin):
        self.app, self.protocol = app, protocol

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        protocol = self.protocol
        cap = protocol.max_connections
        # This request's task and connection are counted already.
        over = cap is not None and (len(protocol.connections) > cap or len(protocol.tasks) > cap)
        if not over or (scope.get("method"), scope.get("path")) in ALWAYS_SERVED:
            return await self.app(scope, receive, send)
        logger.warning("over the connection cap (%d): answered 503", cap)
        body = json.dumps(
            {
                "detail": f"the server is at its limit of {cap} open connections and requests "
                "(FACEGEN_MAX_CONNECTIONS): retry shortly"
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
            (b"connection", b"close"),
            *HEADERS,
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class BoundedHTTPMixin:
    """Mixed into uvicorn's h11 or httptools protocol (both keep ``app``, ``cycle``, ``transport``, ``loop``,
    ``connections`` and ``tasks``)."""

    keep_alive_s: float = 5.0
    header_timeout_s: float = 10.0
    max_connections: int | None = None
    # Declared for the type checker: the uvicorn protocol sets these...
    app: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any  # the protocol's RequestResponseCycle (h11's or httptools'), None before the first request
    connections: set
    tasks: set
    limit_concurrency: int | None
    # ...and the mixin these
    _header_timer: asyncio.TimerHandle | None
    _partial_request: bool
    _header_bytes: int
    _lingering: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # the gate below answers instead of uvicorn's plain-text 503
        self.app = CapacityGate(self.app, self)

    def _arm_idle_timer(self) -> None:
        """Waiting for a request: idle until its first byte, then its headers have until the header timeout."""
        self._cancel_header_timer()
        self._partial_request, self._header_bytes = False, 0
        self._header_timer = self.loop.call_later(min(self.keep_alive_s, self.header_timeout_s), self._idle_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _idle_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._waiting_for_headers():
            return
        if not self._partial_request:
            self.transport.close()  # idle: nothing to answer
        elif self.header_timeout_s > self.keep_alive_s:
            self._header_timer = self.loop.call_later(self.header_timeout_s - self.keep_alive_s, self._header_timeout)
        else:
            self._header_timeout()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._waiting_for_headers():
            return  # a request is in progress: its body has its own timeout, the app its own deadline
        detail = f"request headers not received within {self.header_timeout_s:g} s (FACEGEN_HEADER_TIMEOUT_S)"
        self._refuse(json_answer(408, "Request Timeout", detail))

    def _refuse(self, answer: bytes) -> None:
        """Answer and close without losing the answer: closing a socket with unread input resets the connection, and
        the reset can discard the answer before the client reads it (a 1 MiB header refused after 16 KiB). So the
        answer is followed by a half-close, and the rest of the request is read and dropped until the client closes
        too, or for LINGER_S."""
        if self.transport.is_closing() or self._lingering:
            return
        self._lingering = True
        self._cancel_header_timer()
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # refused: the rest of the request is dropped
        waiting = self._waiting_for_headers()
        if waiting:
            self._partial_request = True
            self._header_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        # Still waiting after this chunk: all of it was request line and headers (a body only follows complete ones).
        if waiting and self._waiting_for_headers() and self._header_bytes > MAX_HEADER_BYTES:
            detail = f"the request line and headers are over {MAX_HEADER_BYTES // 1024} KiB"
            self._refuse(json_answer(431, "Request Header Fields Too Large", detail))

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def send_400_response(self, msg: str) -> None:
        self._refuse(json_answer(400, "Bad Request", PARSER_ERROR))


def bounded_protocol(
    *, keep_alive_s: float, header_timeout_s: float, max_connections: int | None, base: Any = AutoHTTPProtocol
) -> type:
    """Uvicorn's protocol class (httptools when installed, else h11) with the bounds above mixed in."""
    return type(
        f"Bounded{base.__name__}",
        (BoundedHTTPMixin, base),
        {"keep_alive_s": keep_alive_s, "header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )
