"""The load generator's HTTP client against a real socket server: what it sends, how it reads each way of ending a
body, connection reuse, and how a failed request is named."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from bench import e2e
from bench.client import LoadClient, ReadError, ReadTimeout
from bench.scenarios import Upload, find_scenario

PNG = b"\x89PNG\r\n\x1a\nfake"


class Server:
    """An HTTP/1.1 server on a loopback port that records each request and answers by path."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                request_line, *lines = head[:-4].split(b"\r\n")
                headers = {}
                for line in lines:
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((request_line, headers, body))
                path = request_line.split(b" ")[1]
                if not await self.answer(path, writer):
                    return
        finally:
            writer.close()

    async def answer(self, path: bytes, writer: asyncio.StreamWriter) -> bool:
        """Write the answer for ``path``; False to close the connection."""
        if path == b"/png":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: %d\r\n\r\n" % len(PNG) + PNG)
        elif path == b"/chunked":
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\ntransfer-encoding: chunked\r\n\r\n"
                b'5\r\n{"det\r\n8;ext=1\r\nail": 1}\r\n0\r\nx-trailer: t\r\n\r\n'
            )
        elif path == b"/close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            return False
        elif path == b"/until-eof":
            writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nto the end")
            await writer.drain()
            return False
        elif path == b"/cut":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
            await writer.drain()
            return False
        elif path == b"/drop-second" and self.connections == 1 and len(self.requests) == 2:
            return False  # closes the kept-alive connection as the second request arrives, answering nothing
        elif path == b"/drop-second":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        elif path == b"/slow":
            await asyncio.sleep(5)
        return True


async def with_server(test) -> object:
    server = Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        return await test(server, f"http://127.0.0.1:{port}")
    finally:
        listener.close()


def test_sends_what_httpx_would_and_reuses_its_connections():
    async def test(server, url):
        async with LoadClient(url, headers={"X-API-Key": "k"}) as client:
            answers = [await client.request("POST", "/png", json={"n": 1, "seed": i}) for i in range(3)]
        return server, answers

    server, answers = asyncio.run(with_server(test))
    assert [a.status_code for a in answers] == [200] * 3
    assert answers[0].content == PNG and answers[0].headers["content-type"] == "image/png"
    assert server.connections == 1  # keep-alive: three requests, one connection
    request_line, headers, body = server.requests[2]
    assert request_line == b"POST /png HTTP/1.1"
    assert headers["x-api-key"] == "k" and headers["content-type"] == "application/json"
    assert json.loads(body) == {"n": 1, "seed": 2} and int(headers["content-length"]) == len(body)


def test_multipart_upload_is_encoded_as_httpx_encodes_it():
    upload = Upload("face.jpg", b"\xff\xd8jpeg bytes")

    async def test(server, url):
        async with LoadClient(url) as client:
            await client.request(**find_scenario("classify").request(1, upload) | {"url": "/png"})
        return server

    server = asyncio.run(with_server(test))
    _, headers, body = server.requests[0]
    boundary = headers["content-type"].split("boundary=")[1]
    assert headers["content-type"].startswith("multipart/form-data")
    assert b'name="images"; filename="face.jpg"' in body and b"\xff\xd8jpeg bytes" in body
    assert body.rstrip().endswith(f"--{boundary}--".encode())


def test_chunked_bodies_connection_close_and_bodies_until_eof():
    async def test(server, url):
        async with LoadClient(url) as client:
            chunked = await client.get("/chunked")
            closed = await client.get("/close")
            after_close = await client.get("/png")
            until_eof = await client.get("/until-eof")
        return server, chunked, closed, after_close, until_eof

    server, chunked, closed, after_close, until_eof = asyncio.run(with_server(test))
    assert chunked.status_code == 503 and chunked.headers["retry-after"] == "2"
    assert chunked.json() == {"detail": 1}
    assert closed.text == "ok" and after_close.content == PNG
    assert server.connections == 2  # a new connection after the server closed its first one
    assert until_eof.status_code == 200 and until_eof.text == "to the end"


def test_connections_the_server_closed_while_idle_or_at_the_request_are_replaced():
    async def test(server, url):
        async with LoadClient(url) as client:
            first = await client.get("/png")
            client.idle[0].writer.transport.abort()  # as if the server's keep-alive timeout had closed it
            await asyncio.sleep(0.05)
            second = await client.get("/png")
            return first, second, server.connections

    first, second, connections = asyncio.run(with_server(test))
    assert first.content == second.content == PNG and connections == 2

    async def raced(server, url):
        async with LoadClient(url) as client:
            answers = [await client.get("/drop-second") for _ in range(2)]
            return answers, server.connections

    answers, connections = asyncio.run(with_server(raced))
    assert [a.text for a in answers] == ["ok", "ok"] and connections == 2  # the second retried on a new connection


def test_failures_are_named_and_the_benchmark_counts_them():
    async def test(server, url):
        async with LoadClient(url, timeout_s=0.2) as client:
            with pytest.raises(ReadError):
                await client.get("/cut")
            with pytest.raises(ReadTimeout):
                await client.get("/slow")
            return await e2e.send(client, find_scenario("dcgan").with_rows(1), 1)  # POST /generate/dcgan: no answer

    outcome = asyncio.run(with_server(test))
    assert not outcome.ok and outcome.status == "ReadTimeout"

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def refused():
        async with LoadClient(f"http://127.0.0.1:{port}") as client:
            return await e2e.send(client, find_scenario("vae"), 1)

    outcome = asyncio.run(refused())
    assert outcome.status == "ConnectError" and not outcome.ok
    with pytest.raises(ValueError, match="plain http"):
        LoadClient("https://example.org")


def test_the_benchmark_uses_the_load_client_for_http_and_httpx_for_https():
    async def clients():
        plain = e2e.make_client("http://127.0.0.1:9", "key", 4)
        secure = e2e.make_client("https://facegen.example", "key", 4)
        await plain.aclose()
        await secure.aclose()
        return plain, secure

    plain, secure = asyncio.run(clients())
    assert isinstance(plain, LoadClient) and plain.headers == {"X-API-Key": "key"}
    assert isinstance(secure, httpx.AsyncClient) and secure.headers["x-api-key"] == "key"


def test_closed_loop_through_the_load_client_matches_the_server_s_count():
    async def test(server, url):
        async with LoadClient(url) as client:
            # the scenario's path does not matter to this server: every request is sent to /png
            scenario = find_scenario("dcgan")
            scenario = type(scenario)(**{**scenario.__dict__, "path": "/png"})
            outcomes, wall = await e2e.closed_loop(client, scenario, 4, 0.1)
        return server, outcomes, wall

    server, outcomes, wall = asyncio.run(with_server(test))
    assert len(outcomes) == len(server.requests) > 4 and all(o.ok for o in outcomes)
    assert server.connections == 4 and wall >= 0.1
