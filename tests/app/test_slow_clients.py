"""Slow clients against a real server process (``python -m app``) over real sockets: headers that never finish, a
body shorter than its Content-Length, idle connections and the connection cap. Timeouts are set to 1 s so the whole
module runs in seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from bench.server import free_port

TIMEOUT_S = 1.0
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
    assert data.startswith(b"HTTP/1.1 408") and b"FACEGEN_HEADER_TIMEOUT_S" in data
    assert waited < TIMEOUT_S + 3


def test_a_connection_that_sends_nothing_is_closed(server):
    with connect(server) as sock:
        data, waited = read_until_closed(sock)
    assert data == b"" and waited < TIMEOUT_S + 3


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
        # Over the cap: uvicorn answers a complete request at once with 503 rather than queueing it.
        assert httpx.get(f"http://127.0.0.1:{server}/health", timeout=5).status_code == 503
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
