"""End-to-end HTTP load: closed-loop clients (each sends its next request when its last one is answered) for a
bounded time, and the summary of what came back."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.client import LoadClient, TransportError
from bench.scenarios import Scenario, Upload
from bench.stats import count_statuses, images_per_second, latency_summary

logger = logging.getLogger("bench")

OK = "200"


@dataclass(frozen=True)
class Outcome:
    """One request: ``status`` is the HTTP code as a string, "bad-content-type" for a 200 that is not what the
    scenario expects, or the transport error's class name (ConnectError, ReadTimeout, ...)."""

    status: str
    seconds: float
    retry_after: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK


Client = httpx.AsyncClient | LoadClient


async def send(client: Client, scenario: Scenario, seed: int, upload: Upload | None = None) -> Outcome:
    kwargs = scenario.request(seed, upload)
    start = time.perf_counter()
    try:
        response = await client.request(**kwargs)
    except (httpx.HTTPError, TransportError) as error:
        return Outcome(type(error).__name__, time.perf_counter() - start, detail=str(error)[:200])
    seconds = time.perf_counter() - start
    status = str(response.status_code)
    detail = None
    if response.status_code == 200 and not response.headers.get("content-type", "").startswith(scenario.expect):
        status, detail = "bad-content-type", response.headers.get("content-type")
    elif response.status_code != 200:
        detail = response.text[:200]
    return Outcome(status, seconds, response.headers.get("retry-after"), detail)


async def closed_loop(
    client: Client,
    scenario: Scenario,
    concurrency: int,
    seconds: float,
    upload: Upload | None = None,
    seeds: Iterator[int] | None = None,
) -> tuple[list[Outcome], float]:
    """``concurrency`` clients, each sending requests back to back until ``seconds`` have passed (a request under
    way then is finished and counted). Returns the outcomes and the wall time until the last one was answered."""
    seeds = seeds if seeds is not None else itertools.count()
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    deadline = start + seconds

    async def client_loop() -> None:
        while time.perf_counter() < deadline:
            outcomes.append(await send(client, scenario, next(seeds), upload))

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - start


async def fixed_count(
    client: Client,
    scenario: Scenario,
    requests: int,
    upload: Upload | None = None,
    seeds: Iterator[int] | None = None,
) -> tuple[list[Outcome], float]:
    """``requests`` requests one after another (concurrency 1)."""
    seeds = seeds if seeds is not None else itertools.count()
    start = time.perf_counter()
    outcomes = [await send(client, scenario, next(seeds), upload) for _ in range(requests)]
    return outcomes, time.perf_counter() - start


def summarize(outcomes: Sequence[Outcome], rows_per_request: int, wall_s: float) -> dict[str, Any]:
    """Counts by status, rows/s of the successful requests over the wall time, and their latency percentiles."""
    ok = [o.seconds for o in outcomes if o.ok]
    statuses = count_statuses(o.status for o in outcomes)
    errors = {status: count for status, count in statuses.items() if status != OK}
    first_error = next((f"{o.status}: {o.detail}" for o in outcomes if not o.ok), None)
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "statuses": statuses,
        "wall_s": wall_s,
        "images_per_s": images_per_second(rows_per_request * len(ok), wall_s) if ok else 0.0,
        **latency_summary(ok),
        "first_error": first_error,
    }


async def run_cell(
    client: Client,
    scenario: Scenario,
    concurrency: int,
    seconds: float,
    warmup_s: float,
    upload: Upload | None = None,
    seeds: Iterator[int] | None = None,
    cpu_seconds: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """One (scenario, concurrency) cell: a warm-up at that concurrency (not counted), then the measured run.
    ``cpu_seconds``: the server's CPU time so far (all its processes), read before and after the measured run: the
    row then says how much CPU the server spent per image served."""
    seeds = seeds if seeds is not None else itertools.count()
    if warmup_s > 0:
        await closed_loop(client, scenario, concurrency, warmup_s, upload, seeds)
    cpu_before = cpu_seconds() if cpu_seconds else None
    outcomes, wall = await closed_loop(client, scenario, concurrency, seconds, upload, seeds)
    cpu_spent = cpu_seconds() - cpu_before if cpu_seconds and cpu_before is not None else None
    row = {
        "scenario": scenario.name,
        "family": scenario.family,
        "rows_per_request": scenario.rows,
        "concurrency": concurrency,
        "seconds": seconds,
        **summarize(outcomes, scenario.rows, wall),
    }
    images = scenario.rows * row["ok"]
    row["server_cpu_s"] = cpu_spent
    row["server_cpu_ms_per_image"] = cpu_spent * 1000 / images if cpu_spent is not None and images else None
    logger.info(
        "e2e %s c=%d: %d requests (%d errors), %.1f images/s, p95 %s ms, server CPU %s ms/image",
        scenario.name,
        concurrency,
        row["requests"],
        row["errors"],
        row["images_per_s"],
        f"{row['p95_ms']:.1f}" if row["p95_ms"] is not None else "n/a",
        f"{row['server_cpu_ms_per_image']:.2f}" if row["server_cpu_ms_per_image"] is not None else "n/a",
    )
    return row


def make_client(url: str, api_key: str | None, connections: int, timeout_s: float = 120.0) -> Client:
    """One client per measured server: :class:`bench.client.LoadClient` (light enough that the load generator does
    not cap the rate it measures; it opens a connection per request in flight), or for an ``https`` URL, which it
    does not speak, httpx with a pool of ``connections``."""
    headers = {"X-API-Key": api_key} if api_key else {}
    if urlsplit(url).scheme == "https":
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout_s, trust_env=False)
    return LoadClient(url, headers=headers, timeout_s=timeout_s)


async def fetch_models(client: Client) -> list[dict[str, Any]]:
    return (await client.get("/models")).raise_for_status().json()
