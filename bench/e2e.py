"""End-to-end HTTP: which families the server samples from, and throughput/latency of ``POST /generate/<family>``."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.stats import images_per_second, percentile

logger = logging.getLogger("bench")

BodyFn = Callable[[int, int], dict[str, Any]]
DEFAULT_BODY_FIELDS = frozenset({"n", "seed", "format"})


def unconditional_body(n: int, seed: int) -> dict[str, Any]:
    return {"n": n, "seed": seed, "format": "png"}


# Request body per family; families not listed get unconditional_body when their endpoint takes {"n", "seed", "format"}.
# A family with another body (acgan attributes, infogan rows/code, glow temperature) is benchmarked once it has an
# entry here, e.g. "glow": lambda n, seed: {"n": n, "seed": seed, "temperature": 0.7, "format": "png"}.
REQUEST_BODIES: dict[str, BodyFn] = {}


def request_body(family: str, n: int, seed: int) -> dict[str, Any]:
    return REQUEST_BODIES.get(family, unconditional_body)(n, seed)


def request_fields(openapi: dict[str, Any], path: str) -> set[str] | None:
    """The JSON body's property names of ``POST path`` in an OpenAPI document; None when there is no such operation."""
    operation = openapi.get("paths", {}).get(path, {}).get("post")
    if operation is None:
        return None
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        schema = openapi.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1], {})
    return set(schema.get("properties", {}))


def sampling_families(cards: list[dict[str, Any]], openapi: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Loaded families that have ``POST /generate/<family>`` and a body we know how to build, with their model card."""
    chosen = {}
    for card in cards:
        family = card["family"]
        fields = request_fields(openapi, f"/generate/{family}")
        if fields is not None and (family in REQUEST_BODIES or DEFAULT_BODY_FIELDS <= fields):
            chosen[family] = card
    return chosen


async def discover(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    cards = (await client.get("/models")).raise_for_status().json()
    openapi = (await client.get("/openapi.json")).raise_for_status().json()
    return sampling_families(cards, openapi)


async def timed_post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[float, str | None]:
    """(seconds, error or None) of one request."""
    start = time.perf_counter()
    try:
        response = await client.post(path, json=body)
    except httpx.HTTPError as error:
        return time.perf_counter() - start, f"{type(error).__name__}: {error}"
    seconds = time.perf_counter() - start
    if response.status_code != 200 or not response.headers.get("content-type", "").startswith("image/png"):
        return seconds, f"HTTP {response.status_code}: {response.text[:200]}"
    return seconds, None


async def run_cell(client: httpx.AsyncClient, family: str, n: int, concurrency: int, requests: int) -> dict[str, Any]:
    """``requests`` requests of ``n`` images, ``concurrency`` in flight at once, after one warm-up request."""
    path = f"/generate/{family}"
    await timed_post(client, path, request_body(family, n, 0))
    seeds = itertools.count(1)
    latencies: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        for seed in seeds:
            if seed > requests:
                return
            seconds, error = await timed_post(client, path, request_body(family, n, seed))
            if error:
                errors.append(error)
            else:
                latencies.append(seconds)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    row = {"family": family, "n": n, "concurrency": concurrency, "requests": requests, "errors": len(errors),
           "wall_s": wall, "images_per_s": images_per_second(n * len(latencies), wall),
           "p50_ms": percentile(latencies, 50) * 1000 if latencies else None,
           "p95_ms": percentile(latencies, 95) * 1000 if latencies else None,
           "first_error": errors[0] if errors else None}
    logger.info("e2e %s n=%d c=%d: %s img/s, p50 %s ms", family, n, concurrency, f"{row['images_per_s']:.1f}",
                f"{row['p50_ms']:.1f}" if latencies else "n/a")
    return row


def make_client(url: str, api_key: str | None, concurrency: int, timeout_s: float = 300.0) -> httpx.AsyncClient:
    headers = {"X-API-Key": api_key} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout_s, trust_env=False)
