"""Bounded loopback soak: ``python -m bench.soak`` (to become ``python -m bench --soak``).

Starts the service as production does (``python -m app``: header timeout, connection cap, graceful shutdown) on a
free loopback port with the shipped weights, warms it up, then keeps ``--concurrency`` clients (64) sending a mix
of requests over every route for ``--seconds``, and reports:

* answers by status, and every error that is not a 503 with Retry-After (the target: none);
* latency percentiles per route and overall;
* the server's RSS after warm-up, at the end and at its peak, and the growth (target: under 10 %).

Exit status 1 when a target is missed. ``--url`` soaks a server you started (RSS then needs ``--pid``). Requests go
only to the loopback address; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.server import REPO_ROOT, read_memory, started_service

FACES_DIR = REPO_ROOT / "tests" / "data" / "faces"


@dataclass
class Results:
    statuses: Counter = field(default_factory=Counter)
    bad: Counter = field(default_factory=Counter)  # (route, status or exception) -> count, for non-503 errors
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    shed_without_retry_after: int = 0

    def record(self, route: str, status: int | str, seconds: float, retry_after: bool, expected: bool) -> None:
        self.statuses[status] += 1
        self.latencies[route].append(seconds)
        if status == 503 and not retry_after:
            self.shed_without_retry_after += 1
        ok = expected or (isinstance(status, int) and status < 400) or (status == 503 and retry_after)
        if not ok:
            self.bad[(route, status)] += 1


def request_mix(faces: list[bytes]) -> list[tuple[str, str, dict]]:
    """(route label, method, httpx kwargs) for one request of every kind; the soak draws from them uniformly."""

    def uploads(name: str, count: int) -> list:
        return [(name, (f"face{i}.jpg", faces[i % len(faces)], "image/jpeg")) for i in range(count)]

    return [
        ("GET /health", "GET", {"url": "/health"}),
        ("GET /ready", "GET", {"url": "/ready"}),
        ("GET /models", "GET", {"url": "/models"}),
        ("GET /models/{name}", "GET", {"url": "/models/dcgan"}),
        ("GET /metrics", "GET", {"url": "/metrics"}),
        ("HEAD /health", "HEAD", {"url": "/health"}),
        ("POST /generate/vae", "POST", {"url": "/generate/vae", "json": {"n": 8}}),
        ("POST /generate/dcgan", "POST", {"url": "/generate/dcgan", "json": {"n": 16, "format": "json"}}),
        ("POST /generate/acgan", "POST", {"url": "/generate/acgan", "json": {"n": 4, "toggle": "Smiling"}}),
        ("POST /generate/infogan", "POST", {"url": "/generate/infogan", "json": {"rows": 2, "code": 1}}),
        ("POST /generate/glow", "POST", {"url": "/generate/glow", "json": {"n": 4, "temperature": 0.7}}),
        ("POST /vae/reconstruct", "POST", {"url": "/vae/reconstruct", "files": uploads("images", 2)}),
        ("POST /classify", "POST", {"url": "/classify", "files": uploads("images", 2)}),
        ("POST /glow/likelihood", "POST", {"url": "/glow/likelihood", "files": uploads("images", 1)}),
        (
            "POST /glow/interpolate",
            "POST",
            {"url": "/glow/interpolate", "files": uploads("face_a", 1) + uploads("face_b", 1), "data": {"steps": "4"}},
        ),
        (
            "POST /glow/manipulate",
            "POST",
            {"url": "/glow/manipulate", "files": uploads("face", 1), "data": {"attribute": "Smiling", "steps": "3"}},
        ),
        # A bad request now and then: it must stay a cheap 4xx under load.
        ("POST /generate/vae (bad)", "POST", {"url": "/generate/vae", "json": {"n": 0}}),
    ]


EXPECTED_4XX = {"POST /generate/vae (bad)"}


async def client_loop(client: httpx.AsyncClient, mix, until: float, results: Results, rng: random.Random) -> None:
    while time.monotonic() < until:
        route, method, kwargs = rng.choice(mix)
        kwargs = dict(kwargs)
        url = kwargs.pop("url")
        started = time.perf_counter()
        try:
            response = await client.request(method, url, **kwargs)
            status: int | str = response.status_code
            retry_after = "retry-after" in response.headers
        except httpx.HTTPError as error:
            status, retry_after = type(error).__name__, False
        expected = route in EXPECTED_4XX and status == 422  # the refusal it asks for is a correct answer
        results.record(route, status, time.perf_counter() - started, retry_after, expected)
        if status == 503:
            await asyncio.sleep(0.05)  # a real client honours Retry-After; a short pause keeps the pressure on


async def phase(url: str, mix, seconds: float, concurrency: int, seed: int) -> Results:
    results = Results()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, trust_env=False) as client:
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(client_loop(client, mix, until, results, random.Random(seed + i)) for i in range(concurrency))
        )
    return results


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "count": len(ordered),
        "p50_ms": at(0.50) * 1000,
        "p95_ms": at(0.95) * 1000,
        "p99_ms": at(0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def sample_rss(pid: int, started: float, seconds: float, samples: list, every_s: float = 5.0) -> None:
    """The server's RSS every ``every_s`` during the soak: growth that levels off is warm-up, a steady rise a leak."""
    while (now := time.monotonic() - started) <= seconds:
        memory = read_memory(pid)
        if memory is not None:
            samples.append((round(now, 1), round(memory.rss_bytes / 2**20, 1)))
        time.sleep(every_s)


def run(args: argparse.Namespace) -> dict:
    faces = [path.read_bytes() for path in sorted(FACES_DIR.glob("*.jpg"))]
    mix = [item for item in request_mix(faces) if not args.routes or any(part in item[0] for part in args.routes)]
    own_server = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        own_server = started_service(Path(args.weights), args.threads, keep_log=True)
        url, pid = own_server.url, own_server.pid
    try:
        warm = asyncio.run(phase(url, mix, args.warmup_seconds, args.concurrency, seed=1000))
        rss_after_warmup = read_memory(pid) if pid else None
        started = time.monotonic()
        samples: list[tuple[float, float]] = []  # (seconds into the soak, RSS MB)
        sampler = threading.Thread(target=sample_rss, args=(pid, started, args.seconds, samples), daemon=True)
        if pid:
            sampler.start()
        results = asyncio.run(phase(url, mix, args.seconds, args.concurrency, seed=0))
        elapsed = time.monotonic() - started
        if pid:
            sampler.join()
        rss_end = read_memory(pid) if pid else None
    finally:
        if own_server is not None:
            own_server.stop(grace_s=60)
            print(f"server log: {own_server.log_path}", file=sys.stderr)
    everything = [value for values in results.latencies.values() for value in values]
    report = {
        "seconds": round(elapsed, 1),
        "concurrency": args.concurrency,
        "requests": sum(results.statuses.values()),
        "requests_per_s": round(sum(results.statuses.values()) / elapsed, 1),
        "warmup_requests": sum(warm.statuses.values()),
        "statuses": {str(key): value for key, value in sorted(results.statuses.items(), key=str)},
        "errors_other_than_503_with_retry_after": {
            f"{r} -> {s}": n for (r, s), n in sorted(results.bad.items(), key=str)
        },
        "latency": percentiles(everything),
        "latency_by_route": {route: percentiles(values) for route, values in sorted(results.latencies.items())},
    }
    if rss_after_warmup and rss_end:
        growth = rss_end.rss_bytes / rss_after_warmup.rss_bytes - 1
        report["rss"] = {
            "after_warmup_mb": round(rss_after_warmup.rss_bytes / 2**20, 1),
            "end_mb": round(rss_end.rss_bytes / 2**20, 1),
            "peak_mb": round(rss_end.peak_rss_bytes / 2**20, 1),
            "growth_percent": round(100 * growth, 2),
            "every_5_s_mb": [mb for _, mb in samples],
        }
    report["pass"] = not results.bad and report.get("rss", {}).get("growth_percent", 0) < 10
    return report


def print_report(report: dict) -> None:
    print(
        f"soak: {report['requests']} requests in {report['seconds']} s at concurrency {report['concurrency']} "
        f"({report['requests_per_s']}/s; warm-up {report['warmup_requests']})"
    )
    print("statuses:", ", ".join(f"{status}: {count}" for status, count in report["statuses"].items()))
    bad = report["errors_other_than_503_with_retry_after"]
    print("errors other than 503 with Retry-After:", bad or "none")
    latency = report["latency"]
    print(
        f"latency: p50 {latency['p50_ms']:.0f} ms, p95 {latency['p95_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms, "
        f"max {latency['max_ms']:.0f} ms"
    )
    for route, figures in report["latency_by_route"].items():
        print(
            f"  {route:28s} n={figures['count']:5d}  p50 {figures['p50_ms']:7.0f}  p95 {figures['p95_ms']:7.0f}  "
            f"p99 {figures['p99_ms']:7.0f} ms"
        )
    if "rss" in report:
        rss = report["rss"]
        print(
            f"server RSS: {rss['after_warmup_mb']} MB after warm-up, {rss['end_mb']} MB at the end "
            f"(growth {rss['growth_percent']} %), peak {rss['peak_mb']} MB"
        )
        print("  every 5 s (MB):", " ".join(f"{mb:.0f}" for mb in rss["every_5_s_mb"]))
    print("PASS" if report["pass"] else "FAIL: errors other than 503 with Retry-After, or RSS growth >= 10 %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measured soak")
    parser.add_argument("--warmup-seconds", type=float, default=45.0, help="load before RSS is first read")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--weights", default=str(REPO_ROOT / "weights"))
    parser.add_argument("--threads", type=int, default=None, help="FACEGEN_TORCH_THREADS of the started server")
    parser.add_argument("--url", help="soak a running server instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's PID, for RSS")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument(
        "--routes",
        nargs="*",
        help="only requests whose label contains one of these (e.g. /generate/ GET): to find "
        "which route a growth comes from",
    )
    args = parser.parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
