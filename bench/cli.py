"""``python -m bench``: measure facegen against its targets, side by side in one run, and print a markdown report.

With --startup (the usual mode) the bench starts the server itself, once per --modes entry (on: the service's
defaults, dynamic batching on; off: FACEGEN_MAX_BATCH=1), and measures every scenario (one per family whose pipeline
registration carries a bench request: acgan n=8, classify one upload, dcgan, glow and vae n=1) at every --concurrency
level with closed-loop clients for --seconds each. In
the batching-on server it also times POST /generate/<family> {"n": 64} at concurrency 1 against the raw forward of
64. Then, with no server running, it times the raw forwards in this process, serves the same DCGAN checkpoint with
LitServe (--peer) and measures it with the same client, and finally starts a server with a small queue and
overloads it (--overload) while probing /health. With --url it measures a server you started (one mode, no
overload run).

The raw forward runs in this process (in one worker thread, as the service's batcher runs its forwards), so give
--threads the server's FACEGEN_TORCH_THREADS (the started servers and the peer get the same value).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from app.models.pipelines import SAMPLE
from bench import e2e, overload, raw_forward, report, server
from bench.scenarios import (
    Scenario,
    Upload,
    card_for,
    choose_scenarios,
    find_scenario,
    load_upload,
    scenario_names,
    servable,
)

logger = logging.getLogger("bench")

MODE_SETTINGS = {report.ON: {}, report.OFF: {"FACEGEN_MAX_BATCH": "1"}}
URL_MODE = "url"


def int_list(text: str) -> list[int]:
    """ "1, 8,32" -> [1, 8, 32]: positive, without repeats, in the given order."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def name_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
        unknown = [name for name in names if name not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, got {text!r}")
        return names

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = scenario_names()
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_argument_group("what to measure")
    where.add_argument(
        "--startup",
        action="store_true",
        help="start uvicorn app.main:app on free ports (once per mode) and time each to GET /ready",
    )
    where.add_argument("--url", default="http://127.0.0.1:8000", help="server to measure (ignored with --startup)")
    where.add_argument(
        "--modes",
        type=name_list((report.ON, report.OFF)),
        default=[report.ON, report.OFF],
        help="with --startup: on (defaults) and/or off (FACEGEN_MAX_BATCH=1); default on,off",
    )
    where.add_argument(
        "--weights",
        type=Path,
        default=Path("weights"),
        help="checkpoints of the started servers, the raw forwards and the peer (default weights/)",
    )
    where.add_argument(
        "--scenarios",
        type=name_list(names),
        default=list(names),
        help=f"comma-separated subset of {','.join(names)} (default: all the server serves)",
    )
    where.add_argument(
        "--face", type=Path, help="image the classify scenario uploads (default: the first of tests/data/faces/*.jpg)"
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--concurrency", type=int_list, default=[1, 8, 32, 64], help="closed-loop clients per cell (default 1,8,32,64)"
    )
    load.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (default 5)")
    load.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    load.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --startup: each cell measured this many times per mode, the modes' servers taking turns; the "
        "round of median throughput is reported (default 3)",
    )
    load.add_argument(
        "--target-concurrency",
        type=int,
        default=report.TARGET_CONCURRENCY,
        help="the concurrency the batching and peer targets are checked at (default 32)",
    )
    load.add_argument("--client-timeout", type=float, default=120.0, help="seconds before a request is given up")
    raw_group = parser.add_argument_group("raw forward and the e2e/raw ratio")
    raw_group.add_argument(
        "--raw-batches", type=int_list, default=[1, 32, 64], help="raw batch sizes (default 1,32,64)"
    )
    raw_group.add_argument("--repeats", type=int, default=5, help="timed repeats of each raw forward (median taken)")
    raw_group.add_argument(
        "--ratio-n",
        type=int,
        default=report.RATIO_BATCH,
        help="images per request of the e2e/raw ratio (default 64; also timed raw)",
    )
    raw_group.add_argument("--ratio-requests", type=int, default=5, help="timed requests of the ratio (default 5)")
    raw_group.add_argument("--threads", type=int, help="torch threads: the raw forward, the started servers, the peer")
    raw_group.add_argument(
        "--device",
        help="device of the raw forward and the started servers (default: the one "
        "the server reports; servers: FACEGEN_DEVICE or auto)",
    )
    peer = parser.add_argument_group("peer (LitServe serving the same DCGAN checkpoint)")
    peer.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="measure the peer")
    peer.add_argument(
        "--peer-concurrency", type=int_list, help="default: the --concurrency levels up to --target-concurrency"
    )
    peer.add_argument("--peer-max-batch", type=int, default=64, help="LitServe max_batch_size (default 64)")
    peer.add_argument("--peer-batch-timeout", type=float, default=0.005, help="LitServe batch_timeout in s (0.005)")
    peer.add_argument(
        "--peer-warmup",
        type=float,
        default=3.0,
        help="unmeasured seconds of load at the highest peer concurrency before its first cell "
        "(default 3): LitServe runs no warm-up forward before it reports healthy, facegen does "
        "before /ready, and the peer's first requests take hundreds of ms",
    )
    over = parser.add_argument_group("overload")
    over.add_argument(
        "--overload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start a server with a small queue and overload it (needs --startup)",
    )
    over.add_argument(
        "--overload-scenario",
        choices=names,
        default="acgan",
        help="what the overloading clients send (default acgan: n=8, a forward slow enough to queue)",
    )
    over.add_argument("--overload-clients", type=int, default=256, help="closed-loop clients (default 256)")
    over.add_argument("--overload-queue", type=int, default=64, help="the server's FACEGEN_MAX_QUEUE (default 64)")
    over.add_argument("--overload-seconds", type=float, help="default: --seconds")
    over.add_argument("--probe-interval-ms", type=float, default=50.0, help="GET /health every this many ms (50)")
    out = parser.add_argument_group("output")
    out.add_argument("--pid", type=int, help="server PID for RSS with --url (default: the uvicorn process on its port)")
    out.add_argument(
        "--api-key", default=os.environ.get("FACEGEN_API_KEY"), help="X-API-Key (default: $FACEGEN_API_KEY)"
    )
    out.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.repeats < 1 or args.ratio_requests < 0 or args.ratio_n < 1:
        parser.error("--repeats and --ratio-n must be >= 1, --ratio-requests >= 0")
    if args.seconds <= 0 or args.warmup < 0 or args.peer_warmup < 0 or args.client_timeout <= 0:
        parser.error("--seconds and --client-timeout must be > 0, --warmup and --peer-warmup >= 0")
    if args.overload_clients < 1 or args.overload_queue < 1 or args.probe_interval_ms <= 0:
        parser.error("--overload-clients, --overload-queue and --probe-interval-ms must be positive")
    if args.peer_concurrency is None:
        levels = [c for c in args.concurrency if c <= args.target_concurrency]
        args.peer_concurrency = levels or [args.target_concurrency]
    if args.overload_seconds is None:
        args.overload_seconds = args.seconds
    return args


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "startup": args.startup,
        "url": None if args.startup else args.url.rstrip("/"),
        "modes": args.modes if args.startup else [URL_MODE],
        "scenarios": args.scenarios,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "rounds": args.rounds if args.startup else 1,
        "target_concurrency": args.target_concurrency,
        "raw_batches": raw_batches(args),
        "repeats": args.repeats,
        "ratio_n": args.ratio_n,
        "ratio_requests": args.ratio_requests,
        "threads": args.threads,
        "device": args.device,
        "weights": str(args.weights),
        "face": str(args.face) if args.face else None,
        "peer": args.peer,
        "peer_concurrency": args.peer_concurrency,
        "peer_warmup_s": args.peer_warmup,
        "overload": args.overload,
        "overload_clients": args.overload_clients,
        "overload_queue": args.overload_queue,
        "overload_scenario": args.overload_scenario,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def raw_batches(args: argparse.Namespace) -> list[int]:
    return sorted(set(args.raw_batches) | ({args.ratio_n} if args.ratio_requests else set()))


def empty_results(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "config": config_of(args),
        "device": None,
        "models": [],
        "scenarios": [],
        "skipped_scenarios": {},
        "servers": {},
        "e2e": [],
        "ratio": [],
        "raw": [],
        "peer": {"status": "skipped", "reason": "not run"},
        "overload": {"status": "skipped", "reason": "not run"},
        "server_environment": None,
        "comparisons": {},
        "checks": [],
    }


# ---- one facegen server -----------------------------------------------------------------------------------------


Measured = dict[str, tuple[str, int | None]]  # mode -> (url, server pid or None)


async def measure_modes(
    servers: Measured,
    args: argparse.Namespace,
    results: dict[str, Any],
    upload: Upload | None,
    ratio_mode: str | None,
    rounds: int = 1,
) -> None:
    """Every scenario at every concurrency on every server (rows appended to results["e2e"] with their mode), and on
    ``ratio_mode``'s server the n=64 requests of each sampling scenario (results["ratio"]). The first server decides
    the scenarios (from its GET /models).

    With ``rounds`` > 1 each cell runs that many times per server, the servers taking turns (in alternating order):
    a 4-second cell varies by several per cent from one run to the next (a fresh server's first cell is often the
    slowest), so a ratio of two cells measured minutes apart can pass or fail on noise. The row reported is the
    round of median throughput; every round's throughput is kept in it (``rounds_images_per_s``)."""
    modes = list(servers)
    clients = {
        mode: e2e.make_client(url, args.api_key, max(args.concurrency), args.client_timeout)
        for mode, (url, _) in servers.items()
    }
    try:
        cards = await e2e.fetch_models(clients[modes[0]])
        if not results["models"]:
            choose_measured_scenarios(cards, args, results, upload)
        scenarios = [find_scenario(s["name"]) for s in results["scenarios"]]
        seeds = itertools.count(1)
        cpu = {mode: functools.partial(server.cpu_seconds, pid) if pid else None for mode, (_, pid) in servers.items()}
        for scenario in scenarios:
            for concurrency in args.concurrency:
                measured: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
                for round_index in range(rounds):
                    for mode in modes if round_index % 2 == 0 else modes[::-1]:
                        measured[mode].append(
                            await e2e.run_cell(
                                clients[mode],
                                scenario,
                                concurrency,
                                args.seconds,
                                args.warmup,
                                upload,
                                seeds,
                                cpu[mode],
                            )
                        )
                for mode in modes:
                    results["e2e"].append({"mode": mode, **median_round(measured[mode])})
        if ratio_mode is not None and args.ratio_requests:
            for scenario in scenarios:
                if scenario.capability != SAMPLE:
                    continue
                if not scenario.takes_rows(args.ratio_n):  # the InfoGAN's sweeps: at most 16 rows a request
                    logger.info("ratio %s: skipped, a request takes at most %d rows", scenario.name, scenario.max_rows)
                    continue
                results["ratio"].append(await measure_ratio(clients[ratio_mode], scenario, ratio_mode, args, seeds))
    finally:
        for client in clients.values():
            await client.aclose()


def median_round(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of median throughput among one cell's rounds (the lower middle of an even count), with every round's
    throughput beside it."""
    ranked = sorted(rows, key=lambda row: row["images_per_s"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["rounds_images_per_s"] = [row["images_per_s"] for row in rows]
    return chosen


def choose_measured_scenarios(
    cards: list[dict[str, Any]], args: argparse.Namespace, results: dict[str, Any], upload: Upload | None
) -> None:
    results["models"] = [
        {key: card.get(key) for key in ("name", "family", "capabilities", "file", "device")} for card in cards
    ]
    results["device"] = cards[0].get("device") if cards else None
    scenarios, skipped = choose_scenarios(cards, args.scenarios)
    for scenario in scenarios:
        if scenario.upload and upload is None:
            skipped[scenario.name] = "no image to upload (tests/data/faces/*.jpg missing; give --face)"
    results["scenarios"] = [s.describe() for s in scenarios if s.name not in skipped]
    results["skipped_scenarios"] = skipped
    for name, why in skipped.items():
        logger.warning("skipping scenario %s: %s", name, why)


async def measure_ratio(client, scenario: Scenario, mode: str, args: argparse.Namespace, seeds) -> dict[str, Any]:
    """``--ratio-requests`` requests of ``--ratio-n`` images one after another, after one warm-up request."""
    big = scenario.with_rows(args.ratio_n)
    await e2e.fixed_count(client, big, 1, seeds=seeds)
    outcomes, wall = await e2e.fixed_count(client, big, args.ratio_requests, seeds=seeds)
    row = {
        "mode": mode,
        "scenario": scenario.name,
        "family": scenario.family,
        "n": args.ratio_n,
        "concurrency": 1,
        **e2e.summarize(outcomes, big.rows, wall),
    }
    logger.info(
        "ratio %s n=%d: p50 %s ms",
        scenario.family,
        args.ratio_n,
        f"{row['p50_ms']:.1f}" if row["p50_ms"] is not None else "n/a",
    )
    return row


def server_info(pid: int | None, startup_s: float | None, settings: dict[str, str] | None, url: str) -> dict[str, Any]:
    memory = server.read_memory(pid) if pid else None
    return {
        "url": url,
        "pid": pid,
        "settings": settings,
        "startup_s": startup_s,
        "rss_bytes": memory.rss_bytes if memory else None,
        "peak_rss_bytes": memory.peak_rss_bytes if memory else None,
    }


def url_server_pid(args: argparse.Namespace) -> int | None:
    if args.pid:
        return args.pid
    parts = urlsplit(args.url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return None  # a remote server's memory cannot be read from here
    return server.find_server_pid(parts.port or 80)


def measure_servers(args: argparse.Namespace, results: dict[str, Any], upload: Upload | None) -> None:
    if not args.startup:
        url = args.url.rstrip("/")
        pid = url_server_pid(args)
        asyncio.run(measure_modes({URL_MODE: (url, pid)}, args, results, upload, ratio_mode=URL_MODE))
        results["servers"][URL_MODE] = server_info(pid, None, None, url)
        return
    # The ratio is measured in the batching-on server (or the first, if "on" is not among the modes).
    ratio_mode = report.ON if report.ON in args.modes else args.modes[0]
    with contextlib.ExitStack() as stack:
        started: dict[str, server.StartedServer] = {}
        startup: dict[str, float] = {}
        for mode in args.modes:  # one after another, so each start-up time is its own; an idle server costs no CPU
            logger.info("starting the server with batching %s", mode)
            started[mode] = stack.enter_context(
                server.StartedServer(args.weights, args.threads, env=MODE_SETTINGS[mode], device=args.device)
            )
            startup[mode] = started[mode].wait_ready(api_key=args.api_key)
            logger.info("server (batching %s) ready in %.1f s at %s", mode, startup[mode], started[mode].url)
        measured = {mode: (s.url, s.pid) for mode, s in started.items()}
        asyncio.run(measure_modes(measured, args, results, upload, ratio_mode, rounds=args.rounds))
        for mode, s in started.items():
            results["servers"][mode] = server_info(s.pid, startup[mode], s.settings, s.url)


# ---- raw forwards -----------------------------------------------------------------------------------------------


def measure_raw_all(args: argparse.Namespace, results: dict[str, Any], upload: Upload | None) -> None:
    families = list(dict.fromkeys(s["family"] for s in results["scenarios"]))
    for family in families:
        card = card_for(family, results["models"]) or {}
        path = raw_forward.find_checkpoint(args.weights, family, card.get("file"))
        if path is None:
            logger.warning("no %s checkpoint in %s: raw figures n/a", family, args.weights)
            continue
        try:
            results["raw"] += raw_forward.measure_raw(
                path, args.device or card.get("device") or "cpu", raw_batches(args), args.repeats, upload, args.threads
            )
        except (RuntimeError, ValueError, TypeError) as error:  # e.g. no cuda here
            logger.warning("raw %s failed (%s): raw figures n/a", family, error)


# ---- the LitServe peer ------------------------------------------------------------------------------------------


def peer_unavailable(args: argparse.Namespace) -> str | None:
    """Why the peer cannot run, or None."""
    if not args.peer:
        return "--no-peer"
    if importlib.util.find_spec("litserve") is None:
        return "litserve is not installed (pip install 'facegen[bench]')"
    if not (Path(__file__).parent / "peer_litserve.py").is_file():
        return "bench/peer_litserve.py is missing"
    return None


async def measure_peer_load(
    url: str, scenario: Scenario, args: argparse.Namespace, pid: int | None = None
) -> list[dict[str, Any]]:
    rows = []
    cpu = functools.partial(server.cpu_seconds, pid) if pid else None
    async with e2e.make_client(url, None, max(args.peer_concurrency), args.client_timeout) as client:
        seeds = itertools.count(1)
        if args.peer_warmup > 0:
            await e2e.closed_loop(client, scenario, max(args.peer_concurrency), args.peer_warmup, None, seeds)
        for concurrency in args.peer_concurrency:
            row = await e2e.run_cell(client, scenario, concurrency, args.seconds, args.warmup, None, seeds, cpu)
            rows.append({"mode": report.PEER_MODE, **row})
    return rows


def measure_peer(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    reason = peer_unavailable(args)
    if reason is None and not any(s["name"] == report.PEER_SCENARIO for s in results["scenarios"]):
        reason = f"the {report.PEER_SCENARIO} scenario was not measured on facegen"
    card = card_for("dcgan", results["models"]) or {}
    path = raw_forward.find_checkpoint(args.weights, "dcgan", card.get("file")) if reason is None else None
    if reason is None and path is None:
        reason = f"no dcgan checkpoint in {args.weights}"
    if reason is not None:
        logger.warning("peer skipped: %s", reason)
        return {"status": "skipped", "reason": reason}
    from bench.peer_litserve import PEER_PATH, peer_body, start_peer, stop_peer

    scenario = Scenario(report.PEER_SCENARIO, "dcgan", SAMPLE, "POST", PEER_PATH, 1, lambda rows, seed: peer_body(seed))
    port = server.free_port()
    info = {
        "status": "ok",
        "version": metadata.version("litserve"),
        "file": path.name,
        "path": PEER_PATH,
        "max_batch_size": args.peer_max_batch,
        "batch_timeout_s": args.peer_batch_timeout,
        "threads": args.threads,
        "warmup_s": args.peer_warmup,
    }
    logger.info("starting the LitServe peer on port %d", port)
    try:
        process = start_peer(
            path,
            port,
            max_batch_size=args.peer_max_batch,
            batch_timeout_s=args.peer_batch_timeout,
            threads=args.threads,
        )
    except (RuntimeError, OSError) as error:
        logger.warning("peer did not start: %s", error)
        return {"status": "skipped", "reason": f"the peer did not start: {str(error)[:500]}"}
    try:
        info["e2e"] = asyncio.run(measure_peer_load(f"http://127.0.0.1:{port}", scenario, args, process.pid))
    finally:
        stop_peer(process)
    return info


# ---- overload ---------------------------------------------------------------------------------------------------


def measure_overload(args: argparse.Namespace, results: dict[str, Any], upload: Upload | None) -> dict[str, Any]:
    scenario = find_scenario(args.overload_scenario)
    reason = None
    if not args.overload:
        reason = "--no-overload"
    elif not args.startup:
        reason = "needs --startup (the bench starts a server with FACEGEN_MAX_QUEUE=--overload-queue)"
    elif results["models"] and not servable(scenario, results["models"]):
        reason = f"the server cannot serve the {scenario.name} scenario"
    elif scenario.upload and upload is None:
        reason = "no image to upload"
    if reason is not None:
        logger.warning("overload skipped: %s", reason)
        return {"status": "skipped", "reason": reason}
    settings = {"FACEGEN_MAX_QUEUE": str(args.overload_queue)}
    logger.info(
        "overload: %d clients against a server with FACEGEN_MAX_QUEUE=%d", args.overload_clients, args.overload_queue
    )
    with server.StartedServer(args.weights, args.threads, env=settings, device=args.device) as started:
        startup = started.wait_ready(api_key=args.api_key)

        async def drive() -> dict[str, Any]:
            async with e2e.make_client(started.url, args.api_key, args.overload_clients, args.client_timeout) as client:
                return await overload.run_overload(
                    client,
                    started.url,
                    scenario,
                    args.overload_clients,
                    args.overload_seconds,
                    args.probe_interval_ms / 1000,
                    upload,
                )

        outcome = asyncio.run(drive())
        results["servers"]["overload"] = server_info(started.pid, startup, started.settings, started.url)
    logger.info(
        "overload: %s; /health p95 %s ms",
        report.format_statuses(outcome["statuses"], skip=()),
        report.format_number(outcome["health"]["p95_ms"]),
    )
    return {"status": "ok", "max_queue": args.overload_queue, **outcome}


# ---- the whole run ----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    results = empty_results(args)
    # The servers run with this Python: it must be the production install (the service's own dependencies, with
    # uvicorn[standard]'s uvloop and httptools), not whatever the benchmark happens to run in.
    results["server_environment"] = server.server_environment(sys.executable)
    logger.info("server environment: %s", results["server_environment"])
    upload = load_upload(args.face)
    measure_servers(args, results, upload)
    if not results["scenarios"]:
        raise SystemExit(f"no scenario to measure: {results['skipped_scenarios'] or 'the server serves no model'}")
    measure_raw_all(args, results, upload)  # no facegen server runs now: the forwards have the cores to themselves
    results["peer"] = measure_peer(args, results)
    results["overload"] = measure_overload(args, results, upload)
    results["ratio"] = report.ratio_rows(results)
    results["comparisons"] = report.comparisons(results)
    results["checks"] = report.checks_as_json(report.build_checks(results))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args)
    print(report.render(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        logger.info("wrote %s", args.json)
    return 0
