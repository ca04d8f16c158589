"""Overload: many closed-loop clients against a server with a small queue, while a separate prober process GETs
``/health`` at a fixed interval. The server should shed what it cannot queue (503 with Retry-After, fast) and stay
responsive.

The prober is its own process (``python -m bench.overload --probe URL``) so that its timings are not delayed by
the load generator's event loop or the GIL. It probes until its stdin closes, then prints one JSON line with every
probe's ``[status, seconds]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from bench.e2e import OK, Client, Outcome, closed_loop
from bench.scenarios import Scenario, Upload
from bench.server import child_env
from bench.stats import count_statuses, images_per_second, latency_summary

HEALTH_PATH = "/health"
READY_LINE = "probing"


def parse_retry_after(value: str | None) -> int | None:
    """Retry-After in seconds (the delay-seconds form), None when absent or not a non-negative integer."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def summarize_overload(
    outcomes: Sequence[Outcome], probes: Sequence[tuple[str, float]], rows_per_request: int, wall_s: float
) -> dict[str, Any]:
    """Counts by status; whether only 200 and 503 came back; whether every 503 carried a Retry-After (None when
    there was no 503: the queue never filled) and its range; latencies of 503s and 200s; /health latencies."""
    statuses = count_statuses(o.status for o in outcomes)
    rejected = [o for o in outcomes if o.status == "503"]
    served = [o for o in outcomes if o.ok]
    retry_after = [parse_retry_after(o.retry_after) for o in rejected]
    given = [value for value in retry_after if value is not None]
    probe_ok = [seconds for status, seconds in probes if status == OK]
    return {
        "requests": len(outcomes),
        "statuses": statuses,
        "wall_s": wall_s,
        "only_200_503": bool(outcomes) and set(statuses) <= {OK, "503"},
        "served": len(served),
        "rejected": len(rejected),
        "rejected_with_retry_after": len(given),
        "all_503_retry_after": (len(given) == len(rejected)) if rejected else None,
        "retry_after_min_s": min(given) if given else None,
        "retry_after_max_s": max(given) if given else None,
        "images_per_s": images_per_second(rows_per_request * len(served), wall_s) if served else 0.0,
        "latency_503": latency_summary([o.seconds for o in rejected], (50, 95)),
        "latency_200": latency_summary([o.seconds for o in served], (50, 95)),
        "first_other": next((f"{o.status}: {o.detail}" for o in outcomes if o.status not in (OK, "503")), None),
        "health": {
            "probes": len(probes),
            "statuses": count_statuses(status for status, _ in probes),
            **latency_summary(probe_ok, (50, 95, 99)),
            "max_ms": max(probe_ok) * 1000 if probe_ok else None,
        },
    }


class Prober:
    """``python -m bench.overload --probe URL`` as a child process; ``stop()`` returns its probes."""

    def __init__(self, url: str, interval_s: float, timeout_s: float = 10.0):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.overload",
                "--probe",
                url,
                "--interval",
                str(interval_s),
                "--timeout",
                str(timeout_s),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        line = self.process.stdout.readline().strip()
        if line != READY_LINE:
            self.process.kill()
            raise RuntimeError(f"the /health prober did not start (said {line!r})")

    def stop(self, timeout_s: float = 30.0) -> list[tuple[str, float]]:
        try:
            output, _ = self.process.communicate(timeout=timeout_s)  # closes stdin: the prober finishes and reports
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise RuntimeError("the /health prober did not stop") from None
        lines = [line for line in output.splitlines() if line.strip()]
        return [(str(status), float(seconds)) for status, seconds in json.loads(lines[-1])] if lines else []


async def run_overload(
    client: Client,
    url: str,
    scenario: Scenario,
    clients: int,
    seconds: float,
    interval_s: float,
    upload: Upload | None = None,
) -> dict[str, Any]:
    prober = Prober(url, interval_s)
    try:
        outcomes, wall = await closed_loop(client, scenario, clients, seconds, upload, itertools.count())
    finally:
        probes = prober.stop()
    return {
        "scenario": scenario.name,
        "family": scenario.family,
        "path": scenario.path,
        "rows_per_request": scenario.rows,
        "clients": clients,
        "seconds": seconds,
        "probe_interval_ms": interval_s * 1000,
        **summarize_overload(outcomes, probes, scenario.rows, wall),
    }


# ---- the prober process ------------------------------------------------------------------------------------------


def probe(url: str, interval_s: float, timeout_s: float, stop: threading.Event) -> list[tuple[str, float]]:
    """GET url/health every ``interval_s`` (from one probe's start to the next's; at once if a probe took longer)
    until ``stop`` is set."""
    probes = []
    with httpx.Client(base_url=url, timeout=timeout_s, trust_env=False) as client:
        next_at = time.perf_counter()
        while not stop.is_set():
            start = time.perf_counter()
            try:
                status = str(client.get(HEALTH_PATH).status_code)
            except httpx.HTTPError as error:
                status = type(error).__name__
            probes.append((status, time.perf_counter() - start))
            next_at += interval_s
            stop.wait(max(0.0, next_at - time.perf_counter()))
            next_at = max(next_at, time.perf_counter() - interval_s)  # late: do not burst to catch up
    return probes


def probe_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload")
    parser.add_argument("--probe", required=True, metavar="URL")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    print(READY_LINE, flush=True)
    probes = probe(args.probe.rstrip("/"), args.interval, args.timeout, stop)
    print(json.dumps([[status, round(seconds, 6)] for status, seconds in probes]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(probe_main())
