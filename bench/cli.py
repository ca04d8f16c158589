"""``python -m bench``: measure a facegen server against its targets and print a markdown report.

The ratio target compares the server with a raw forward in this process, so give --threads the server's
FACEGEN_TORCH_THREADS (with --startup the started server gets the same value).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from bench import e2e, raw, report, server

logger = logging.getLogger("bench")

SIZES = (1, 64)  # images per request / raw batch sizes
CONCURRENCY = (1, 8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server to measure (ignored with --startup)")
    parser.add_argument("--weights", type=Path, default=Path("weights"), help="checkpoints for the raw measurement")
    parser.add_argument("--families", type=lambda s: [f.strip() for f in s.split(",") if f.strip()],
                        help="comma-separated subset (default: every family the server samples from)")
    parser.add_argument("--requests", type=int, default=20, help="requests per (family, n, concurrency) cell")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each raw forward (median taken)")
    parser.add_argument("--threads", type=int, help="torch threads for the raw forward (and the --startup server)")
    parser.add_argument("--device", help="device of the raw forward (default: the one the server reports)")
    parser.add_argument("--pid", type=int, help="server PID for RSS (default: the uvicorn process on the URL's port)")
    parser.add_argument("--startup", action="store_true",
                        help="start uvicorn app.main:app on a free port, time it to GET /ready = 200, then measure it")
    parser.add_argument("--api-key", default=os.environ.get("FACEGEN_API_KEY"), help="X-API-Key (default: $FACEGEN_API_KEY)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeats < 1:
        parser.error("--requests and --repeats must be >= 1")
    return args


def choose_families(available: dict[str, dict], wanted: list[str] | None) -> dict[str, dict]:
    if not wanted:
        return available
    for family in wanted:
        if family not in available:
            logger.warning("skipping %s: the server has no sampling endpoint with a known body for it (served: %s)",
                           family, sorted(available))
    return {family: card for family, card in available.items() if family in wanted}


def measure_raw_all(families: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    rows = []
    for family, card in families.items():
        path = raw.find_checkpoint(args.weights, family, card.get("file"))
        if path is None:
            logger.warning("no %s checkpoint in %s: raw figures n/a", family, args.weights)
            continue
        try:
            rows += raw.measure_raw(path, family, args.device or card.get("device", "cpu"), SIZES, args.repeats)
        except (RuntimeError, ValueError, TypeError) as error:  # e.g. no cuda here, or generate takes other inputs
            logger.warning("raw %s failed (%s); raw figures n/a (see bench.raw.RAW_FORWARDS)", family, error)
    return rows


async def measure_http(url: str, args: argparse.Namespace) -> tuple[dict[str, dict], list[dict]]:
    async with e2e.make_client(url, args.api_key, max(CONCURRENCY)) as client:
        families = choose_families(await e2e.discover(client), args.families)
        rows = [await e2e.run_cell(client, family, n, concurrency, args.requests)
                for family in families for n in SIZES for concurrency in CONCURRENCY]
    return families, rows


def server_pid(args: argparse.Namespace, url: str, started: server.StartedServer | None) -> int | None:
    if args.pid:
        return args.pid
    if started:
        return started.pid
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return None  # a remote server's memory cannot be read from here
    return server.find_server_pid(parts.port or 80)


def run(args: argparse.Namespace, started: server.StartedServer | None) -> dict[str, Any]:
    url = started.url if started else args.url.rstrip("/")
    results: dict[str, Any] = {"url": url, "threads": args.threads, "requests": args.requests, "repeats": args.repeats,
                               "torch": torch.__version__, "startup_s": started.wait_ready() if started else None}
    families, results["e2e"] = asyncio.run(measure_http(url, args))
    if not families:
        raise SystemExit(f"{url} serves no family this benchmark can sample (GET /models, /openapi.json)")
    results["device"] = next(iter(families.values())).get("device")
    results["raw"] = measure_raw_all(families, args)
    pid = server_pid(args, url, started)
    memory = server.read_memory(pid) if pid else None
    results.update(server_pid=pid, rss_bytes=memory.rss_bytes if memory else None,
                   peak_rss_bytes=memory.peak_rss_bytes if memory else None)
    results["checks"] = report.checks_as_json(report.build_checks(results))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = server.StartedServer(args.weights, args.threads) if args.startup else None
    try:
        results = run(args, started)
    finally:
        if started:
            started.stop()
    print(report.render(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        logger.info("wrote %s", args.json)
    return 0
