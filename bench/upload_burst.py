"""Memory kept after bursts of large uploads: ``python -m bench.upload_burst``.

Starts ``python -m app`` (as production does) on a loopback port with the shipped classifier alone, then sends
``--bursts`` bursts of ``--clients`` concurrent ``/classify`` requests (``align=none``), each with one smooth
``--megapixels`` PNG (a few hundred KB on the wire, tens of MB decoded). Prints the server's RSS when idle before,
its peak, and a few seconds after the last burst, as JSON. ``--code`` runs another checkout's ``app`` (to compare a
change with its parent)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from bench.server import REPO_ROOT, free_port, read_memory


def smooth_png(megapixels: float) -> bytes:
    """A gradient: it compresses to a small file but decodes to width x height x 3 bytes."""
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(megapixels * 1e6 / width)
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def mb(pid: int) -> float:
    memory = read_memory(pid)
    return round(memory.rss_bytes / 2**20, 1) if memory else float("nan")


async def burst(url: str, png: bytes, clients: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        responses = await asyncio.gather(
            *(
                client.post("/classify", files={"images": ("big.png", png, "image/png")}, data={"align": "none"})
                for _ in range(clients)
            )
        )
    return [response.status_code for response in responses]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upload_burst", description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="checkout whose app to run")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--settle-s", type=float, default=3.0, help="wait after the last burst before reading RSS")
    args = parser.parse_args(argv)
    weights = Path(tempfile.mkdtemp(prefix="facegen-burst-"))
    (weights / "classifier.safetensors").symlink_to(REPO_ROOT / "weights" / "classifier.safetensors")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(args.code), "FACEGEN_WEIGHTS_DIR": str(weights), "FACEGEN_DEVICE": "cpu"}
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port), "--log-level", "warning"],
        cwd=args.code,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not become ready")
            time.sleep(0.2)
        png = smooth_png(args.megapixels)
        asyncio.run(burst(url, png, 1))  # first use: whatever is allocated once, before the baseline
        time.sleep(args.settle_s)
        report: dict = {"code": str(args.code), "png_kb": len(png) // 1024, "idle_mb": mb(server.pid)}
        statuses: list[int] = []
        for _ in range(args.bursts):
            statuses += asyncio.run(burst(url, png, args.clients))
        time.sleep(args.settle_s)
        memory = read_memory(server.pid)
        report.update(
            statuses=sorted(set(statuses)),
            peak_mb=round(memory.peak_rss_bytes / 2**20, 1) if memory else None,
            after_mb=mb(server.pid),
            **{key: value for key, value in vars(args).items() if key != "code"},
        )
        print(json.dumps(report))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
