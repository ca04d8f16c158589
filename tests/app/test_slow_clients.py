"""Slow and malformed clients against a real server process (``python -m app``) over real sockets: headers that never
finish, a body shorter than its Content-Length or dripping past its deadline, idle connections, the connection cap,
and requests the HTTP parser refuses. Timeouts are set to about a second so the whole module runs in seconds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from bench.server import free_port

TIMEOUT_S = 1.5  # headers, and a body between two reads
KEEP_ALIVE_S = 0.3  # idle connections: well below TIMEOUT_S, so the tests can tell the two apart
BODY_DEADLINE_S = 3.0  # a whole body
MAX_CONNECTIONS = 24


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("slow-clients") / "server.log"
    env = {
        **os.environ,
        "FACEGEN_WEIGHTS_DIR": str(tiny_weights),
        "FACEGEN_DEVICE": "cpu",
        "FACEGEN_TORCH_THREADS": "1",
        "FACEGEN_HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "FACEGEN_BODY_TIMEOUT_S": str(TIMEOUT_S),
        "FACEGEN_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
        "FACEGEN_BODY_DEADLINE_S": str(BODY_DEADLINE_S),
        "FACEGEN_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server not up in 60 s"
                time.sleep(0.1)
            yield port
        finally:
            process.terminate()
            process.wait(timeout=30)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, limit_s: float = 8.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, data = time.monotonic(), b""
    sock.settimeout(limit_s)
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic() - started
        data += chunk


def test_headers_that_never_finish_get_408_and_are_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        data, waited = read_until_closed(sock)
    status, _, body = json_answer(data)
    assert status == 408 and "FACEGEN_HEADER_TIMEOUT_S" in body["detail"]
    assert TIMEOUT_S - 0.3 < waited < TIMEOUT_S + 3


def json_answer(data: bytes) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of one raw HTTP/1.1 answer (asserting that it is JSON)."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert headers["content-type"] == "application/json", data[:300]
    assert headers["x-content-type-options"] == "nosniff" and "content-security-policy" in headers
    return int(status_line.split()[1]), headers, json.loads(body)


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_time(server):
    with connect(server) as sock:
        data, waited = read_until_closed(sock)
    assert data == b"" and waited < TIMEOUT_S - 0.3


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_time(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(65536)
        data, waited = read_until_closed(sock)
    assert data == b"" and waited < TIMEOUT_S - 0.3


def test_a_body_dripping_past_its_deadline_gets_408(server):
    """One byte every 0.3 s never trips the per-read timeout; the whole body's deadline ends it."""
    with connect(server) as sock:
        sock.sendall(
            b"POST /generate/dcgan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        started, data = time.monotonic(), b""
        sock.settimeout(0.3)
        while not data and time.monotonic() - started < BODY_DEADLINE_S + 5:
            try:
                sock.sendall(b" ")
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        waited = time.monotonic() - started
    status, _, body = json_answer(data)
    assert status == 408 and "FACEGEN_BODY_DEADLINE_S" in body["detail"]
    assert BODY_DEADLINE_S - 0.5 < waited < BODY_DEADLINE_S + 2


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /generate/vae HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (1 << 20) + b"\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ],
    ids=["content-length abc", "200 KB path", "1 MiB header", "http/2 preface", "chunked and content-length"],
)
def test_requests_the_parser_refuses_get_a_json_4xx(server, request_bytes):
    with connect(server) as sock:
        try:
            sock.sendall(request_bytes)
        except OSError:
            pass  # answered and closed before the rest was sent: the answer is still there to read
        data, _ = read_until_closed(sock)
    status, headers, body = json_answer(data)
    # httptools refuses them all with 400 or 431; h11 answers the HTTP/2 preface's first line 404, then its rest 400
    assert 400 <= status < 500 and body["detail"] and headers["connection"] == "close"


def test_a_body_shorter_than_its_content_length_gets_408(server):
    with connect(server) as sock:
        sock.sendall(
            b"POST /generate/dcgan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"n": 1'
        )
        data, waited = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408") and b"stalled" in data
    assert waited < TIMEOUT_S + 3


def test_keep_alive_connection_stalling_on_its_second_request_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        data, waited = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408") and waited < TIMEOUT_S + 3


def test_many_stalled_connections_are_all_shed_and_the_cap_answers_503(server):
    sockets = [connect(server) for _ in range(MAX_CONNECTIONS + 6)]
    try:
        for sock in sockets:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        # Over the cap: a complete request is answered at once with a JSON 503 rather than queued...
        refused = httpx.get(f"http://127.0.0.1:{server}/models", timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "FACEGEN_MAX_CONNECTIONS" in refused.json()["detail"]
        # ...except the liveness probe, which a busy server must still pass.
        assert httpx.get(f"http://127.0.0.1:{server}/health", timeout=5).json() == {"status": "ok"}
        time.sleep(TIMEOUT_S + 1.5)
        closed = 0
        for sock in sockets:
            sock.settimeout(2)
            try:
                closed += sock.recv(65536).startswith(b"HTTP/1.1 408")
            except OSError:
                pass
        assert closed == len(sockets), f"{closed} of {len(sockets)} stalled connections were answered 408"
        assert httpx.get(f"http://127.0.0.1:{server}/health", timeout=5).status_code == 200
    finally:
        for sock in sockets:
            sock.close()


def test_head_on_a_real_server_keeps_the_connection_usable(server):
    with httpx.Client(base_url=f"http://127.0.0.1:{server}") as client:
        for _ in range(3):
            head = client.head("/health")
            assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "15"
            assert client.get("/health").json() == {"status": "ok"}
