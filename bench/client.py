"""The load generator's HTTP client: HTTP/1.1 keep-alive connections on asyncio streams, one request at a time per
connection, with nothing between the socket and the measurement but a status line and headers to parse.

Why not httpx: the load generator shares the machine's cores with the server it measures, and httpx's async client
spends several milliseconds of CPU per request (its connection pool, its header and URL models, anyio), about as much
as the server's whole answer to a one-image request. A client that heavy caps the request rate at what it can send,
so the server's batches stay small and the figures measure the client. This one costs a fraction of that; httpx
still builds each request's body (JSON, multipart), so what goes on the wire is what httpx would have sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

MAX_HEADER_BYTES = 64 * 1024


class TransportError(Exception):
    """The request got no complete answer; the subclass's name is what the benchmark reports."""


class ConnectError(TransportError):
    pass


class ReadError(TransportError):
    pass


class Disconnected(ReadError):
    """The server closed the connection before answering a byte: a kept-alive connection it timed out."""


class ReadTimeout(TransportError):
    pass


class ProtocolError(TransportError):
    pass


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]  # lower-cased names
    content: bytes = field(repr=False)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        import json

        return json.loads(self.content)

    def raise_for_status(self) -> Response:
        if self.status_code >= 400:
            raise ProtocolError(f"HTTP {self.status_code}: {self.text[:200]}")
        return self


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


class LoadClient:
    """A pool of keep-alive connections to one server (``base_url``), as many as requests in flight; the same call
    shape as ``httpx.AsyncClient.request`` for what the benchmark sends (``json=`` or ``files=``)."""

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 120.0):
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the load client speaks plain http to a host, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.authority = parts.netloc
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.idle: list[Connection] = []

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self.idle = self.idle, []
        for connection in idle:
            connection.close()

    def encode(self, method: str, url: str, **kwargs: Any) -> bytes:
        """The request's bytes on the wire: httpx encodes the body (JSON, multipart) and its headers."""
        request = httpx.Request(method, f"http://{self.authority}{self.prefix}{url}", headers=self.headers, **kwargs)
        body = request.read()
        lines = [f"{method} {request.url.raw_path.decode('ascii')} HTTP/1.1"]
        lines += [f"{name.decode('latin-1')}: {value.decode('latin-1')}" for name, value in request.headers.raw]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def request(self, method: str, url: str, **kwargs: Any) -> Response:
        payload = self.encode(method, url, **kwargs)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._send(payload, head=method == "HEAD")
        except TimeoutError:
            raise ReadTimeout(f"no answer within {self.timeout_s:g} s") from None

    async def get(self, url: str, **kwargs: Any) -> Response:
        return await self.request("GET", url, **kwargs)

    async def _send(self, payload: bytes, head: bool) -> Response:
        # A kept-alive connection the server closed while it sat idle (uvicorn's keep-alive timeout is 5 s, shorter
        # than a benchmark's pause between two cells of one server) is dropped; one that it closes just as the
        # request goes out is retried once on a new connection, as a browser or httpx would.
        while self.idle:
            connection = self.idle.pop()
            if connection.reader.at_eof():
                connection.close()
                continue
            try:
                return await self._exchange(connection, payload, head)
            except Disconnected:
                break
        return await self._exchange(await self._connect(), payload, head)

    async def _exchange(self, connection: Connection, payload: bytes, head: bool) -> Response:
        try:
            connection.writer.write(payload)
            response, keep_alive = await read_response(connection.reader, head)
        except BaseException:
            connection.close()
            raise
        if keep_alive:
            self.idle.append(connection)
        else:
            connection.close()
        return response

    async def _connect(self) -> Connection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_HEADER_BYTES)
        except OSError as error:
            raise ConnectError(str(error)) from None
        return Connection(reader, writer)


async def read_response(reader: asyncio.StreamReader, head: bool = False) -> tuple[Response, bool]:
    """One response from ``reader`` (Content-Length or chunked body) and whether the connection stays open."""
    try:
        block = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            raise Disconnected("the server closed the connection without answering") from error
        raise ReadError("the server closed the connection mid-headers") from error
    except asyncio.LimitOverrunError as error:
        raise ProtocolError("response headers too large") from error
    status_line, *header_lines = block[:-4].decode("latin-1").split("\r\n")
    try:
        version, code = status_line.split(" ", 2)[:2]
        status = int(code)
    except ValueError:
        raise ProtocolError(f"not an HTTP status line: {status_line[:80]!r}") from None
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        if head or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await read_chunked(reader)
        else:
            body = await reader.read()  # delimited by the connection's end
            return Response(status, headers, body), False
    except asyncio.IncompleteReadError as error:
        raise ReadError("the server closed the connection mid-body") from error
    keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
    return Response(status, headers, body), keep_alive


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_line[:40]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
