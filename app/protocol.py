"""Uvicorn's HTTP protocol with a header read timeout.

Uvicorn times out an idle keep-alive connection only after a response, so a client that connects and never
completes its request headers (slowloris) holds the connection for ever. The protocol here arms a timer when a
connection opens and after every response: when it fires before the next request's headers are complete, the
connection gets a 408 (if the client had started a request) and is closed. Request bodies have their own timeout
(:class:`app.middleware.RequestBodyGuard`), and the number of connections is capped with uvicorn's
``limit_concurrency`` (``python -m app`` passes both).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


def _timeout_response(timeout_s: float) -> bytes:
    body = json.dumps(
        {"detail": f"request headers not received within {timeout_s:g} s (FACEGEN_HEADER_TIMEOUT_S)"}
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class HeaderTimeoutMixin:
    """Mixed into uvicorn's h11 or httptools protocol (both keep ``cycle``, ``transport`` and ``loop``)."""

    header_timeout_s: float = 10.0
    # Declared for the type checker: the uvicorn protocol sets these three...
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any  # the protocol's RequestResponseCycle (h11's or httptools'), None before the first request
    # ...and the mixin these
    _header_timer: asyncio.TimerHandle | None
    _partial_request: bool

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._partial_request = False
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._waiting_for_headers():
            return  # a request is in progress: its body has its own timeout, the app its own deadline
        if self._partial_request:
            self.transport.write(_timeout_response(self.header_timeout_s))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_headers():
            self._partial_request = True
        super().data_received(data)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]


def protocol_with_header_timeout(timeout_s: float, base: Any = AutoHTTPProtocol) -> type:
    """Uvicorn's protocol class (httptools when installed, else h11) with the header timeout mixed in."""
    return type(f"HeaderTimeout{base.__name__}", (HeaderTimeoutMixin, base), {"header_timeout_s": timeout_s})
