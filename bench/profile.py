"""``python -m bench.profile``: where a loaded server's CPU goes, per request.

Starts the service as the benchmark does (``python -m uvicorn app.main:app`` on a loopback port, the production
stack: uvloop and httptools are checked), loads it with closed-loop clients of one scenario, and meanwhile:

* reads every server thread's CPU time from ``/proc/<pid>/task/<tid>/stat`` before and after (CPU time does not
  depend on how much of a shared core the server got, throughput does), and divides by the requests answered;
* samples the server's Python stacks with `py-spy <https://github.com/benfred/py-spy>`_ (the ``bench`` extra),
  without pausing it (``--nonblocking``), and ranks functions by the share of on-CPU samples they are on the stack
  of (cumulative) and on top of (self). A share times the server's CPU per request is that function's CPU per
  request, roughly.

Writes the figures as JSON (``--json``) and prints the top functions. Example::

    python -m bench.profile --weights weights --scenario dcgan --concurrency 32 --seconds 20 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import e2e, profiled_server, server
from bench.client import Response
from bench.scenarios import find_scenario, load_upload, scenario_names

logger = logging.getLogger("bench")

PROC = Path("/proc")
# py-spy's frame: "function (path/to/file.py:line)"; the line is dropped so one function is one entry.
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class ThreadCPU:
    name: str
    seconds: float


def thread_cpu(pid: int, proc: Path = PROC) -> dict[int, ThreadCPU]:
    """Each thread of ``pid``: its name (``comm``) and user plus system CPU seconds so far."""
    threads = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return {}
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        threads[int(task.name)] = ThreadCPU(name, (int(fields[11]) + int(fields[12])) / server.CLOCK_TICKS)
    return threads


def thread_cpu_spent(before: dict[int, ThreadCPU], after: dict[int, ThreadCPU], main_tid: int) -> dict[str, float]:
    """CPU seconds spent between two readings, summed by thread role: the main thread (uvicorn's event loop) as
    "event loop", the others by name (``facegen-forward``, torch's ``python`` workers, anyio's pool...)."""
    spent: dict[str, float] = {}
    for tid, reading in after.items():
        start = before.get(tid)
        role = "event loop" if tid == main_tid else reading.name
        spent[role] = spent.get(role, 0.0) + reading.seconds - (start.seconds if start else 0.0)
    return spent


def short_frame(frame: str) -> str:
    """``"send (uvicorn/protocols/http/h11_impl.py:123)"`` -> ``"send (uvicorn/protocols/http/h11_impl.py)"``: one
    entry per function (py-spy already writes paths below site-packages or the working folder)."""
    match = FRAME.match(frame)
    return frame if match is None else f"{match['function']} ({match['file']})"


# The event loop's stacks start in uvicorn's asyncio.run; every other thread's in threading's bootstrap.
EVENT_LOOP_FRAME = "Runner.run (asyncio/runners.py)"


@dataclass
class Samples:
    """py-spy's samples of some stacks: per function on the stack (cumulative, counted once per stack), on top of
    it (self), and in all."""

    cumulative: Counter[str]
    own: Counter[str]
    total: int = 0

    def add(self, names: list[str], count: int) -> None:
        self.total += count
        for name in set(names):
            self.cumulative[name] += count
        if names:
            self.own[names[-1]] += count


def parse_collapsed(lines: Iterable[str]) -> tuple[Samples, Samples]:
    """py-spy's raw (collapsed) output -> the samples of every thread, and those of the event loop alone."""
    every, loop = Samples(Counter(), Counter()), Samples(Counter(), Counter())
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            frames = frames[1:]
        names = [short_frame(frame) for frame in frames]
        every.add(names, int(count_text))
        if EVENT_LOOP_FRAME in names:
            loop.add(names, int(count_text))
    return every, loop


def ranked(samples: Counter[str], total: int, ms_per_request: float, top: int) -> list[dict[str, Any]]:
    return [
        {
            "function": name,
            "share": round(count / total, 4),
            "ms_per_request": round(count / total * ms_per_request, 3),
        }
        for name, count in samples.most_common(top)
    ]


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]' (it is in the bench extra)")
    return found


async def load(url: str, scenario_name: str, concurrency: int, seconds: float, warmup_s: float) -> dict[str, Any]:
    scenario = find_scenario(scenario_name)
    upload = load_upload() if scenario.upload else None
    async with e2e.make_client(url, None, concurrency) as client:
        seeds = itertools.count()
        if warmup_s > 0:
            await e2e.closed_loop(client, scenario, concurrency, warmup_s, upload, seeds)
        before = batches(await client.get("/metrics"), scenario.family)
        outcomes, wall = await e2e.closed_loop(client, scenario, concurrency, seconds, upload, seeds)
        after = batches(await client.get("/metrics"), scenario.family)
    forwards, requests = after[0] - before[0], after[1] - before[1]
    return {
        "outcomes": outcomes,
        "wall_s": wall,
        "rows": scenario.rows,
        "forwards": forwards,
        "requests_per_forward": round(requests / forwards, 2) if forwards else None,
    }


def batches(metrics: httpx.Response | Response, family: str) -> tuple[float, float]:
    """(forwards, requests in them) of ``family`` so far, from the server's ``facegen_batch_requests`` histogram."""
    found = {"count": 0.0, "sum": 0.0}
    for line in metrics.text.splitlines():
        for key in found:
            if line.startswith(f'facegen_batch_requests_{key}{{family="{family}"}}'):
                found[key] = float(line.rsplit(" ", 1)[1])
    return found["count"], found["sum"]


def start_py_spy(pid: int, args: argparse.Namespace, output: Path) -> subprocess.Popen:
    sampler = subprocess.Popen(
        [
            py_spy(),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(args.rate),
            "--duration",
            str(int(args.seconds)),
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            *(["--gil"] if args.gil else []),
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # py-spy attaches before the measured load starts
    return sampler


def collapsed_stacks(sampler: subprocess.Popen, output: Path, seconds: float) -> list[str]:
    _, errors = sampler.communicate(timeout=seconds + 60)
    if sampler.returncode != 0 or not output.exists():
        raise SystemExit(f"py-spy failed ({sampler.returncode}): {errors[-2000:]}")
    return output.read_text().splitlines()


def function_name(key: tuple[str, int, str]) -> str:
    """pstats' (file, line, function) -> "function (file below site-packages or the repository)"."""
    path, _, function = key
    for marker in ("site-packages/", f"{server.REPO_ROOT}/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = path.split("/", 1)[-1]
            break
    return function if path == "~" else f"{function} ({path})"


def ranked_pstats(stats_file: Path, requests: int, top: int) -> dict[str, Any]:
    """The event loop's functions by cumulative and by own CPU time, per request (cProfile with the thread's CPU
    clock: ``bench.profiled_server``)."""
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    rows = [(function_name(key), calls, own, cumulative) for key, (_, calls, own, cumulative, _) in stats.items()]
    total = sum(own for _, _, own, _ in rows)

    def table(index: int) -> list[dict[str, Any]]:
        chosen = sorted(rows, key=lambda row: -row[index])[:top]
        return [
            {
                "function": name,
                "calls_per_request": round(calls / requests, 2),
                "own_ms_per_request": round(own * 1000 / requests, 4),
                "cumulative_ms_per_request": round(cumulative * 1000 / requests, 4),
            }
            for name, calls, own, cumulative in chosen
        ]

    return {
        "clock": "time.thread_time (the event loop thread's CPU time)",
        "profiled_ms_per_request": round(total * 1000 / requests, 3),
        "note": "cProfile's own overhead inflates these beside the unprofiled run's /proc figures: compare shares, "
        "and before with after. C code (uvloop, httptools, system calls) counts to the builtin that ran it.",
        "top_cumulative": table(3),
        "top_own": table(2),
    }


def profile(args: argparse.Namespace) -> dict[str, Any]:
    environment = server.server_environment()
    if not environment["fast_stack"]:
        raise SystemExit(f"the server's Python lacks uvloop or httptools (the production stack): {environment}")
    with tempfile.TemporaryDirectory() as folder:
        env = {"FACEGEN_MAX_BATCH": "1"} if args.batching == "off" else {}
        command = server.UVICORN
        stats_file, collapsed = Path(folder) / "loop.pstats", Path(folder) / "stacks.txt"
        if args.profiler == "cprofile":
            command = server.PROFILED
            env[profiled_server.OUTPUT] = str(stats_file)
        with server.StartedServer(args.weights, threads=args.threads, env=env, command=command) as started:
            started.wait_ready()
            if args.warmup > 0:
                asyncio.run(load(started.url, args.scenario, args.concurrency, args.warmup, 0))
            sampler = start_py_spy(started.pid, args, collapsed) if args.profiler == "py-spy" else None
            if args.profiler == "cprofile":
                os.kill(started.pid, signal.SIGUSR1)
            before = thread_cpu(started.pid)
            result = asyncio.run(load(started.url, args.scenario, args.concurrency, args.seconds, 0))
            after = thread_cpu(started.pid)
            if args.profiler == "cprofile":
                os.kill(started.pid, signal.SIGUSR2)
                for _ in range(600):
                    if stats_file.exists() and stats_file.stat().st_size:
                        break
                    time.sleep(0.1)
                time.sleep(0.5)  # the dump is written in one go; let it finish
            stacks = collapsed_stacks(sampler, collapsed, args.seconds) if sampler is not None else []
        figures = summarize(args, environment, result, thread_cpu_spent(before, after, started.pid))
        if stacks:
            figures["py_spy"] = py_spy_tables(stacks, figures, args)
        if args.profiler == "cprofile":
            figures["event_loop_cprofile"] = ranked_pstats(stats_file, figures["requests_ok"], args.top)
            if args.pstats:
                shutil.copyfile(stats_file, args.pstats)
    return figures


def summarize(
    args: argparse.Namespace, environment: dict[str, Any], result: dict[str, Any], spent: dict[str, float]
) -> dict[str, Any]:
    outcomes = result["outcomes"]
    ok = sum(outcome.ok for outcome in outcomes)
    if not ok:
        raise SystemExit(f"no request succeeded: {outcomes[0] if outcomes else 'none sent'}")
    ms_per_request = sum(spent.values()) * 1000 / ok
    return {
        "scenario": args.scenario,
        "concurrency": args.concurrency,
        "batching": args.batching,
        "seconds": args.seconds,
        "profiler": args.profiler,
        "server_environment": environment,
        "requests_ok": ok,
        "requests": len(outcomes),
        "requests_per_s": round(ok / result["wall_s"], 2),
        "forwards": result["forwards"],
        "requests_per_forward": result["requests_per_forward"],
        "server_cpu_ms_per_request": round(ms_per_request, 3),
        "server_cpu_ms_per_image": round(ms_per_request / result["rows"], 3),
        "cpu_ms_per_request_by_thread": {
            role: round(seconds * 1000 / ok, 3) for role, seconds in sorted(spent.items(), key=lambda kv: -kv[1])
        },
        "load_average": os.getloadavg()[0],
    }


def py_spy_tables(stacks: list[str], figures: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    every, loop = parse_collapsed(stacks)
    ms_per_request = figures["server_cpu_ms_per_request"]
    loop_ms = figures["cpu_ms_per_request_by_thread"].get("event loop", 0.0)
    return {
        "rate_hz": args.rate,
        "samples": every.total,
        "event_loop_samples": loop.total,
        "note": "share: of the on-CPU samples (of every server thread, or of the event loop's); ms_per_request: "
        "share x that CPU time per request from /proc (approximate). Time in C code (uvloop, httptools, "
        "system calls) counts to the Python frame that called it: Runner.run's self time is uvloop's own.",
        "top_cumulative": ranked(every.cumulative, every.total, ms_per_request, args.top),
        "top_self": ranked(every.own, every.total, ms_per_request, args.top),
        "event_loop_top_cumulative": ranked(loop.cumulative, loop.total, loop_ms, args.top),
        "event_loop_top_self": ranked(loop.own, loop.total, loop_ms, args.top),
    }


def print_figures(figures: dict[str, Any]) -> None:
    print(
        f"{figures['scenario']} c={figures['concurrency']} batching {figures['batching']}: "
        f"{figures['requests_ok']} requests, {figures['requests_per_s']} /s, "
        f"{figures['requests_per_forward']} requests per forward, "
        f"server CPU {figures['server_cpu_ms_per_request']} ms per request (load average {figures['load_average']:.1f})"
    )
    for role, ms in figures["cpu_ms_per_request_by_thread"].items():
        print(f"  {ms:8.3f} ms  {role}")
    loop = figures.get("event_loop_cprofile")
    if loop:
        print(f"\nevent loop, cProfile ({loop['profiled_ms_per_request']} ms per request profiled):")
        for title, key in (("cumulative", "top_cumulative"), ("own", "top_own")):
            print(f"  by {title}: calls, own ms, cumulative ms per request")
            for row in loop[key]:
                print(
                    f"  {row['calls_per_request']:7.2f} {row['own_ms_per_request']:8.4f} "
                    f"{row['cumulative_ms_per_request']:8.4f}  {row['function']}"
                )
    spy = figures.get("py_spy")
    if spy:
        for title, key, samples in (
            ("every thread, cumulative", "top_cumulative", spy["samples"]),
            ("every thread, self", "top_self", spy["samples"]),
            ("event loop, cumulative", "event_loop_top_cumulative", spy["event_loop_samples"]),
            ("event loop, self", "event_loop_top_self", spy["event_loop_samples"]),
        ):
            print(f"\ntop functions, {title} ({samples} samples):")
            for row in spy[key]:
                print(f"  {row['share'] * 100:5.1f}%  {row['ms_per_request']:7.3f} ms  {row['function']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, default=server.REPO_ROOT / "weights", help="checkpoint folder")
    parser.add_argument("--scenario", choices=scenario_names(), default="dcgan")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured load (py-spy samples it all)")
    parser.add_argument("--warmup", type=float, default=3.0, help="load before measuring, seconds")
    parser.add_argument("--batching", choices=("on", "off"), default="on")
    parser.add_argument("--threads", type=int, default=1, help="FACEGEN_TORCH_THREADS of the server")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40, help="functions listed")
    parser.add_argument(
        "--profiler",
        choices=("cprofile", "py-spy", "none"),
        default="cprofile",
        help="cprofile: the event loop's CPU time per function (exact, inflated by the profiler); py-spy: samples of "
        "every thread (few on a busy core); none: CPU time from /proc only (the figure to quote)",
    )
    parser.add_argument("--gil", action="store_true", help="py-spy: sample only the thread holding the GIL")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--pstats", type=Path, help="cprofile: keep the raw statistics here (python -m pstats)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    figures = profile(args)
    print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
