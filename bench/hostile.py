"""The worst photo for face detection: ``python -m bench.hostile``.

A 1000x1000 JPEG tiled with 891 copies of the test faces at 30x37 px (:func:`tiled_faces`): the photo that took 19 s
of detection on the forward thread every model shared, with 4.8 GB of memory. Starts the service as production does
(``python -m app``) on a free loopback port with the shipped weights, warms it up, then measures:

* the time to answer ``/classify`` with the photo (one copy, then ``--copies`` copies in one request);
* how long ``/generate/dcgan`` (one image) takes alone, and while that many-copies ``/classify`` is being answered
  (clients send one after another for as long as it runs);
* the server's RSS before, and its peak (VmHWM) after.

``--url`` measures a server you started (RSS then needs ``--pid``). Requests go only to the loopback address.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.server import REPO_ROOT, read_memory, started_service

FACES_DIR = REPO_ROOT / "tests" / "data" / "faces"
DCGAN = {"n": 1, "format": "json"}


def tiled_faces(
    faces: Sequence[Image.Image], side: int = 1000, tile: tuple[int, int] = (30, 37), background: int = 128
) -> Image.Image:
    """A ``side`` x ``side`` photo filled with ``faces`` (CelebA frames) shrunk to ``tile`` px, in turn: 33 x 27 =
    891 faces at the defaults, each about 20 px, just above the detector's smallest face for a megapixel photo."""
    small = [face.convert("RGB").resize(tile, Image.Resampling.LANCZOS) for face in faces]
    canvas = Image.new("RGB", (side, side), (background,) * 3)
    columns, rows = side // tile[0], side // tile[1]
    for index in range(columns * rows):
        row, column = divmod(index, columns)
        canvas.paste(small[index % len(small)], (column * tile[0], row * tile[1]))
    return canvas


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def worst_photo() -> bytes:
    frames = [Image.open(path) for path in sorted(FACES_DIR.glob("*.jpg"))]
    return jpeg_bytes(tiled_faces(frames))


async def classify(client: httpx.AsyncClient, photo: bytes, copies: int) -> dict[str, Any]:
    files = [("images", (f"tiled{i}.jpg", photo, "image/jpeg")) for i in range(copies)]
    started = time.perf_counter()
    response = await client.post("/classify", files=files)
    seconds = time.perf_counter() - started
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    found = [image["face"]["faces_found"] for image in body.get("images", [])]
    return {
        "copies": copies,
        "status": response.status_code,
        "seconds": round(seconds, 3),
        "faces_found": found,
        "retry_after": response.headers.get("retry-after"),
    }


async def dcgan_until(client: httpx.AsyncClient, done: asyncio.Event) -> list[float]:
    """``/generate/dcgan`` latencies (s), one request after another, until ``done`` (at least one)."""
    latencies = []
    while True:
        started = time.perf_counter()
        response = await client.post("/generate/dcgan", json=DCGAN)
        response.raise_for_status()
        latencies.append(time.perf_counter() - started)
        if done.is_set():
            return latencies


async def measure(url: str, photo: bytes, copies: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=300, trust_env=False) as client:
        face = sorted(FACES_DIR.glob("*.jpg"))[0].read_bytes()
        warm = await client.post("/classify", files=[("images", ("face.jpg", face, "image/jpeg"))])
        warm.raise_for_status()  # loads the detector
        alone = []
        for _ in range(10):
            started = time.perf_counter()
            (await client.post("/generate/dcgan", json=DCGAN)).raise_for_status()
            alone.append(time.perf_counter() - started)
        single = await classify(client, photo, 1)
        done = asyncio.Event()

        async def hostile() -> dict[str, Any]:
            try:
                return await classify(client, photo, copies)
            finally:
                done.set()

        many, during = await asyncio.gather(hostile(), dcgan_until(client, done))
    return {
        "photo_bytes": len(photo),
        "classify_one_copy": single,
        "classify_many_copies": many,
        "dcgan_alone_ms": {"median": round(1000 * statistics.median(alone), 1), "max": round(1000 * max(alone), 1)},
        "dcgan_during_ms": {
            "count": len(during),
            "median": round(1000 * statistics.median(during), 1),
            "max": round(1000 * max(during), 1),
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    photo = worst_photo()
    own_server = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        own_server = started_service(Path(args.weights), args.threads)
        url, pid = own_server.url, own_server.pid
    try:
        before = read_memory(pid) if pid else None
        report = asyncio.run(measure(url, photo, args.copies))
        after = read_memory(pid) if pid else None
    finally:
        if own_server is not None:
            own_server.stop(grace_s=60)
    if before and after:
        report["rss_mb"] = {
            "before": round(before.rss_bytes / 2**20, 1),
            "after": round(after.rss_bytes / 2**20, 1),
            "peak": round(after.peak_rss_bytes / 2**20, 1),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of the photo in the second /classify")
    parser.add_argument("--weights", default=str(REPO_ROOT / "weights"))
    parser.add_argument("--threads", type=int, default=None, help="FACEGEN_TORCH_THREADS of the started server")
    parser.add_argument("--url", help="measure a running server instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's PID, for RSS")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    report = run(args)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    ok = report["classify_one_copy"]["status"] == 200 and report["classify_many_copies"]["status"] == 200
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
