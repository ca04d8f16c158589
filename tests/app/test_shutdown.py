"""Graceful shutdown of a real server process: on SIGTERM it stops accepting, answers everything already queued or
in flight, then exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx

from bench.server import free_port


def test_sigterm_finishes_requests_in_flight_then_exits_0(tiny_weights, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "FACEGEN_WEIGHTS_DIR": str(tiny_weights),
        "FACEGEN_DEVICE": "cpu",
        "FACEGEN_TORCH_THREADS": "1",
        "FACEGEN_MAX_BATCH": "1",
    }  # batching off: 64-image requests run 64 forwards each, so they stay in flight
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "60"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready in 60 s"
            time.sleep(0.1)

        async def load() -> tuple[list[int], bool]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                requests = [
                    asyncio.ensure_future(client.post("/generate/glow", json={"n": 64, "seed": i})) for i in range(12)
                ]
                await asyncio.sleep(0.5)  # all sent and queued behind each other
                server.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                try:
                    async with httpx.AsyncClient(base_url=url, timeout=2) as late:
                        await late.get("/health")
                    refused = False
                except httpx.HTTPError:
                    refused = True
                responses = await asyncio.gather(*requests)
                return [response.status_code for response in responses], refused

        statuses, refused = asyncio.run(load())
        assert statuses == [200] * 12, "every request in flight at SIGTERM was answered"
        assert refused, "a new connection after SIGTERM is refused"
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()
    assert "Finished server process" in (tmp_path / "server.log").read_text()
